"""Authentication (verified tokens), authorization (per-channel policy) and origin checks."""
