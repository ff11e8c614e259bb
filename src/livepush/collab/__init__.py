"""Collaboration: locks with fencing tokens (more to come: presence, cursors, CRDT)."""
