"""Running livepush: `app.py` assembles a node from the configuration (engine, node, features,
routes: the one place where everything is wired), `run.py` serves it (listen, SIGTERM drain,
`--workers N`)."""

from livepush.server.run import apply_development_defaults, configure_logging, run, serve

__all__ = ["apply_development_defaults", "configure_logging", "run", "serve"]
