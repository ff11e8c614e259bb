"""`livepush serve`, `livepush token` and `livepush demo`."""

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


def cmd_demo(args: argparse.Namespace) -> int:
    """Run simulated n8n executions against a server; 0 once they have all finished."""
    import asyncio

    from livepush.demo.executions import DemoOptions, parse_range, run_demo
    from livepush.protocol.channels import parse_channel, validate_push_ref
    from livepush.protocol.errors import ProtocolError
    from livepush.publisher import PublishFailed

    try:
        validate_push_ref(args.push_ref)
        parse_channel(f"workflow:{args.workflow_id}")
        delay_ms, wait_ms = parse_range(args.delay_ms), parse_range(args.wait_ms)
        for name in ("nodes", "executions"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        if args.item_bytes < 0 or (args.concurrency is not None and args.concurrency < 1):
            raise ValueError("--item-bytes must be >= 0 and --concurrency >= 1")
        for name in ("error_rate", "wait_rate", "subworkflow_rate"):
            if not 0 <= getattr(args, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1")
    except (ValueError, ProtocolError) as exc:
        print(f"livepush demo: {exc}", file=sys.stderr)
        return 2
    api_key = args.api_key or os.environ.get("LIVEPUSH_API_KEY")
    if not api_key:
        print("livepush demo: no API key; pass --api-key or set LIVEPUSH_API_KEY", file=sys.stderr)
        return 2
    options = DemoOptions(
        url=args.url,
        api_key=api_key,
        push_ref=args.push_ref,
        workflow_id=args.workflow_id,
        nodes=args.nodes,
        executions=args.executions,
        item_bytes=args.item_bytes,
        delay_ms=delay_ms,
        wait_ms=wait_ms,
        error_rate=args.error_rate,
        wait_rate=args.wait_rate,
        subworkflow_rate=args.subworkflow_rate,
        concurrency=args.concurrency,
        seed=args.seed,
        execution_prefix=args.execution_prefix,
        stamp=args.timestamps,
    )
    try:
        report = asyncio.run(run_demo(options))
    except PublishFailed as exc:
        if exc.status == 0:
            print(f"livepush demo: cannot reach the server: {exc.message}", file=sys.stderr)
        else:
            print(
                f"livepush demo: the server refused the events: {exc.code} "
                f"(HTTP {exc.status}): {exc.message}",
                file=sys.stderr,
            )
        return 1
    except ProtocolError as exc:  # an event the server's rules refuse, caught client-side
        print(f"livepush demo: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.verbose:
        for execution_id in report.execution_ids:
            count = report.events_per_execution.get(execution_id, 0)
            print(f"{execution_id}: {count} events", file=sys.stderr)
    print(report.summary())
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

    demo = commands.add_parser(
        "demo",
        help="run simulated n8n executions against a server",
        description="A simulated workflow engine: runs n8n-like executions (executionStarted, "
        "nodeExecuteBefore / nodeExecuteAfter / nodeExecuteAfterData per node, "
        "executionFinished; some node errors, waits and sub-workflows) through a server's "
        "HTTP API, as if the tab PUSH_REF had started them on workflow WORKFLOW_ID. Exits "
        "when they have all finished and prints a summary.",
    )
    demo.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:5678")
    demo.add_argument("--api-key", help="the server's API key (default: LIVEPUSH_API_KEY)")
    demo.add_argument("--push-ref", required=True, help="pushRef of the tab that starts them")
    demo.add_argument("--workflow-id", required=True, help="the workflow they belong to")
    demo.add_argument("--nodes", type=int, default=8, help="nodes per execution (default 8)")
    demo.add_argument("--executions", type=int, default=1, help="executions (default 1)")
    demo.add_argument(
        "--item-bytes",
        type=int,
        default=1024,
        help="size of each node's output items, in bytes of JSON (default 1024)",
    )
    demo.add_argument(
        "--delay-ms",
        default="20-50",
        help="how long a node runs, MIN-MAX or one value in ms (default 20-50; 0: no delay)",
    )
    demo.add_argument(
        "--wait-ms", default="200-500", help="how long a Wait node waits (default 200-500)"
    )
    demo.add_argument(
        "--error-rate",
        type=float,
        default=0.1,
        help="fraction of executions in which a node fails (default 0.1)",
    )
    demo.add_argument(
        "--wait-rate",
        type=float,
        default=0.1,
        help="fraction of executions with a Wait node (default 0.1)",
    )
    demo.add_argument(
        "--subworkflow-rate",
        type=float,
        default=0.1,
        help="fraction of executions with an Execute Workflow node (default 0.1)",
    )
    demo.add_argument(
        "--concurrency", type=int, help="executions running at once (default: all of them)"
    )
    demo.add_argument("--seed", type=int, help="same executions on every run with this seed")
    demo.add_argument(
        "--execution-prefix",
        help="execution ids are PREFIX1, PREFIX2... (default: demo-<random>-)",
    )
    demo.add_argument(
        "--timestamps",
        action="store_true",
        help="add sentAtNs (time.time_ns() when sent) to every event's data, for latency "
        "measurements (n8n ignores unknown fields)",
    )
    demo.add_argument(
        "-v", "--verbose", action="store_true", help="list the executions and their events"
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `livepush` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
