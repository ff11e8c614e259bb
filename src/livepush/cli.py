"""`livepush serve` and `livepush token`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from livepush import __version__
from livepush.config import Config, field_type, fields, load_config


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    for f in fields():
        flag = "--" + f.name.replace("_", "-")
        kind = field_type(f.name)
        help_text = f"{f.metadata.get('help', '')} [env LIVEPUSH_{f.name.upper()}]"
        if kind is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text
            )


def _split_ids(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def cmd_serve(args: argparse.Namespace) -> int:
    """Run a node until SIGTERM."""
    from livepush.server import apply_development_defaults, configure_logging, run

    overrides = {f.name: getattr(args, f.name) for f in fields()}
    try:
        config = load_config(overrides, config_file=args.config)
    except (ValueError, OSError) as exc:
        print(f"livepush: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    for line in apply_development_defaults(config):
        print(line, file=sys.stderr)
    sys.stderr.flush()
    run(config)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Print a signed HS256 token."""
    from livepush.auth.tokens import mint_token
    from livepush.protocol.channels import is_valid_user_id

    try:
        config: Config | None = load_config(config_file=args.config)
    except (ValueError, OSError) as exc:
        print(f"livepush: configuration error: {exc}", file=sys.stderr)
        return 2
    secret = (
        args.secret
        or (config.jwt_secret if config else None)
        or os.environ.get("LIVEPUSH_JWT_SECRET")
    )
    if not secret:
        print(
            "livepush token: no secret; pass --secret or set LIVEPUSH_JWT_SECRET "
            "(the server prints its generated development secret at start)",
            file=sys.stderr,
        )
        return 2
    if not is_valid_user_id(args.user):
        print(
            "livepush token: --user must be 1-128 characters of A-Z a-z 0-9 _ . @ = + -",
            file=sys.stderr,
        )
        return 2
    print(
        mint_token(
            secret,
            args.user,
            ttl=args.ttl,
            workflows=_split_ids(args.workflows),
            executions=_split_ids(args.executions),
            projects=_split_ids(args.projects),
            admin=args.admin,
            audience=config.jwt_audience if config else None,
            issuer=config.jwt_issuer if config else None,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="livepush", description="Real-time push and collaboration server."
    )
    parser.add_argument("--version", action="version", version=f"livepush {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run a server node",
        description="Run a livepush node. Every option is also an environment variable "
        "LIVEPUSH_<NAME> and a key of the optional TOML file.",
    )
    serve.add_argument("--config", help="TOML file with settings (keys as the option names)")
    _add_setting_options(serve)
    serve.set_defaults(func=cmd_serve)

    token = commands.add_parser("token", help="print a signed token for a user")
    token.add_argument("--user", required=True, help="user id (the `sub` claim)")
    token.add_argument("--ttl", type=float, default=3600, help="lifetime in seconds")
    token.add_argument("--workflows", help="workflow ids, comma separated (* for all)")
    token.add_argument("--executions", help="execution ids, comma separated (* for all)")
    token.add_argument("--projects", help="project ids, comma separated (* for all)")
    token.add_argument("--admin", action="store_true", help="grant every channel")
    token.add_argument("--secret", help="HS256 secret (default: LIVEPUSH_JWT_SECRET)")
    token.add_argument("--config", help="TOML file (for secret, audience and issuer)")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `livepush` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
