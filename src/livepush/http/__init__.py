"""HTTP endpoints: publish API, health, metrics, OpenAPI, and the application wiring."""
