"""One typed configuration. Precedence: command-line options, then `LIVEPUSH_<NAME>`
environment variables, then the TOML file given with `--config`, then the defaults, which work
for a single node out of the box.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(slots=True)
class Config:
    """Every setting of a livepush node."""

    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(5680, "port to listen on")
    engine: str = _opt(
        "memory", "engine: memory (embedded, single node) or redis (clusters; see redis_url)"
    )
    redis_url: str = _opt(
        "redis://127.0.0.1:6379/0",
        "Redis URL of the redis engine (redis://, rediss://, unix://); with redis_cluster, "
        "any node of the cluster",
    )
    redis_cluster: bool = _opt(False, "the Redis URL is a Redis Cluster (sharded pub/sub)")
    redis_prefix: str = _opt("livepush", "prefix of every Redis key and pub/sub channel")
    rest_prefix: str = _opt("/rest", "path prefix of the push endpoint (n8n: N8N_ENDPOINT_REST)")
    log_level: str = _opt("info", "debug, info, warning or error")

    jwt_secret: str | None = _opt(None, "HS256/384/512 secret for connection tokens", secret=True)
    jwt_public_key: str | None = _opt(None, "path to a PEM public key (RS*/PS*/ES*/EdDSA)")
    jwt_jwks: str | None = _opt(None, "path to a JWKS file")
    jwt_audience: str | None = _opt(None, "required `aud` claim, if set")
    jwt_issuer: str | None = _opt(None, "required `iss` claim, if set")
    jwt_leeway: float = _opt(10.0, "seconds of clock skew tolerated on exp/nbf/iat")
    jwt_user_claim: str = _opt("sub", "claim holding the user id")
    auth_cookie: str = _opt("n8n-auth", "cookie that may carry the token")
    api_key: str | None = _opt(None, "bearer key of the publish API", secret=True)
    auth_callback_url: str | None = _opt(
        None, "host application URL asked whether a user may subscribe to a channel"
    )
    auth_callback_cache_ttl: float = _opt(30.0, "seconds an authorization answer is cached")
    auth_callback_timeout: float = _opt(5.0, "seconds before the authorization callback fails")

    allowed_origins: list[str] = _opt(  # noqa: RUF009 - returns a field(default_factory)
        [], "origins allowed besides the server's own host (comma separated; * for any)"
    )
    trust_proxy: bool = _opt(False, "take the host from Forwarded / X-Forwarded-Host")

    ping_interval: float = _opt(
        25.0,
        "seconds between keep-alive pings (WebSocket ping frames, SSE comments); a WebSocket "
        "peer that has not answered by the next ping is dropped",
    )
    sse_retry_ms: int = _opt(2000, "reconnect delay suggested to EventSource clients")
    token_expiry_warning: float = _opt(30.0, "seconds before expiry a tokenExpiring is sent")

    history_size: int = _opt(1000, "publications kept per channel for recovery")
    history_ttl: float = _opt(300.0, "seconds publications are kept for recovery")
    recovery_limit: int = _opt(1000, "most publications one subscribe may recover")
    push_ref_ttl: float = _opt(300.0, "seconds a pushRef stays reserved for its user after close")
    presence: bool = _opt(True, "track who is in each subscribed channel (cluster-wide)")
    presence_ttl: float = _opt(
        30.0, "seconds a connection's presence outlives its node (renewed every third of it)"
    )

    max_queue_messages: int = _opt(1000, "outbound queue bound per connection, in messages")
    max_queue_bytes: int = _opt(4 * 1024 * 1024, "outbound queue bound per connection, in bytes")
    max_message_bytes: int = _opt(65536, "largest inbound client message")
    max_publish_bytes: int = _opt(16 * 1024 * 1024, "largest publish API request body")
    max_subscriptions: int = _opt(128, "channels one connection may subscribe to")
    max_connections_per_user: int = _opt(100, "connections one user may hold on a node")
    max_connections: int = _opt(
        100_000, "connections (push and CRDT) one node accepts; 0: no cap (503 server_full)"
    )
    handshake_rate: float = _opt(
        50.0, "connection attempts per second per client address; 0: no limit (429)"
    )
    handshake_burst: float = _opt(200.0, "connection attempt burst per client address")
    rate_limit: float = _opt(50.0, "client messages per second per connection")
    rate_burst: float = _opt(100.0, "client message burst per connection")
    ephemeral_rate: float = _opt(
        1000.0, "cursor and other ephemeral updates per second per connection (more are dropped)"
    )
    ephemeral_burst: float = _opt(2000.0, "ephemeral update burst per connection")
    lock_idle_ttl: float = _opt(
        120.0,
        "seconds a lock lives after its tab last requested or confirmed it (writeAccessHeartbeat"
        ", nodeLockRequested), even while the tab stays connected",
    )
    collab_flush_interval: float = _opt(
        0.25, "seconds between two collaboratorsChanged of one room (changes are batched)"
    )
    collab_tick: float = _opt(
        0.05, "seconds between ephemeral batches of a room (latest value per tab and kind)"
    )

    execution_retention: float = _opt(
        3600.0, "seconds an execution's state and stored outputs outlive its last event"
    )
    output_inline_bytes: int = _opt(
        1024 * 1024, "node outputs up to this size are sent inline in nodeExecuteAfterData"
    )
    output_push_limit: int = _opt(
        64 * 1024 * 1024, "larger outputs are sent in chunks up to this size, else by reference"
    )
    output_max_bytes: int = _opt(256 * 1024 * 1024, "largest node output accepted")
    output_chunk_bytes: int = _opt(256 * 1024, "size of one chunk of a large output")
    snapshot_inline_bytes: int = _opt(
        16 * 1024, "outputs up to this size are inline in execution snapshots"
    )
    output_store_bytes: int = _opt(
        1024 * 1024 * 1024, "memory engine: total bytes of stored outputs (oldest evicted)"
    )

    crdt_path: str = _opt(
        "livepush-crdt.sqlite3",
        "SQLite file of the CRDT documents with the memory engine (relative to the working "
        "directory, created on first use; :memory: keeps them in this process only)",
    )
    crdt_max_update_bytes: int = _opt(
        1024 * 1024,
        "largest CRDT message from a client (an update, or a first sync); larger ones close "
        "the connection with 1009",
    )
    crdt_max_doc_bytes: int = _opt(
        16 * 1024 * 1024,
        "largest stored CRDT document (snapshot and updates); updates past it are refused",
    )
    crdt_compact_updates: int = _opt(
        500, "stored updates of a CRDT document that are merged into its snapshot"
    )
    crdt_unload_delay: float = _opt(
        10.0, "seconds a CRDT document stays loaded after its last connection left"
    )
    crdt_awareness_tick: float = _opt(
        0.05,
        "seconds between awareness messages of a CRDT document to each connection (the latest "
        "state of each client; 0: every update at once, as y-websocket does)",
    )
    crdt_rate_limit: float = _opt(
        200.0,
        "CRDT messages per second per connection (bursts of twice that); faster updates wait, "
        "surplus awareness updates are dropped",
    )
    crdt_n8n_framing: bool = _opt(
        False,
        "speak n8n's own CRDT framing (type byte + raw update, no sync steps) on "
        "{rest}/crdt?docId= instead of y-protocols",
    )

    flush_passes: int = _opt(
        0,
        "event-loop passes a staged publication waits before the socket writes; 2 lets the "
        "publications woken by the same I/O poll share writes (0: 1 with the memory engine, "
        "2 with redis, where it was measured to help)",
    )
    shutdown_timeout: float = _opt(30.0, "seconds to drain connections on SIGTERM")
    workers: int = _opt(
        1,
        "processes serving the port together (SO_REUSEPORT), restarted if they die; more than "
        "one needs the redis engine",
    )

    def validate(self) -> None:
        """Refuse contradictory settings with a message naming the setting."""
        if self.engine not in ("memory", "redis"):
            raise ValueError(f"unknown engine {self.engine!r}: use 'memory' or 'redis'")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.workers > 1 and self.engine != "redis":
            raise ValueError(
                "workers > 1 needs engine 'redis' (worker processes share channels through it)"
            )
        if not self.rest_prefix.startswith("/"):
            raise ValueError("rest_prefix must start with '/'")
        self.rest_prefix = self.rest_prefix.rstrip("/")
        for name in (
            "ping_interval",
            "history_ttl",
            "rate_limit",
            "presence_ttl",
            "push_ref_ttl",
            "ephemeral_rate",
            "collab_flush_interval",
            "collab_tick",
            "lock_idle_ttl",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.output_chunk_bytes < 1024:
            raise ValueError("output_chunk_bytes must be at least 1024")
        if not self.output_inline_bytes <= self.output_push_limit <= self.output_max_bytes:
            raise ValueError("need output_inline_bytes <= output_push_limit <= output_max_bytes")
        for name in ("crdt_max_update_bytes", "crdt_max_doc_bytes", "crdt_compact_updates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.crdt_awareness_tick < 0:
            raise ValueError("crdt_awareness_tick must not be negative")
        if self.crdt_rate_limit <= 0 or self.crdt_unload_delay < 0:
            raise ValueError("crdt_rate_limit must be positive, crdt_unload_delay not negative")
        for name in ("max_queue_messages", "max_queue_bytes", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @property
    def has_token_key(self) -> bool:
        """Whether any token verification key is configured."""
        return bool(self.jwt_secret or self.jwt_public_key or self.jwt_jwks)


def fields() -> list[dataclasses.Field[Any]]:
    """The settings, in declaration order."""
    return list(dataclasses.fields(Config))


def field_type(name: str) -> type:
    """The plain type of a setting (Optional unwrapped)."""
    hint = get_type_hints(Config)[name]
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    return get_origin(hint) or hint  # type: ignore[no-any-return]


def coerce(name: str, value: Any) -> Any:
    """Convert a string (environment, command line) or TOML value to the setting's type."""
    kind = field_type(name)
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    if kind is list:
        items = value if isinstance(value, list) else str(value).split(",")
        return [str(v).strip().rstrip("/") for v in items if str(v).strip()]
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):
        raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}") from exc


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from defaults, a TOML file, the environment and overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    names = {f.name for f in fields()}
    if config_file:
        data = tomllib.loads(Path(config_file).read_text())
        section = data.get("livepush", data)
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ValueError(f"{config_file}: unknown setting {key!r}")
            values[name] = coerce(name, value)
    for name in names:
        env = environ.get(f"LIVEPUSH_{name.upper()}")
        if env is not None:
            values[name] = coerce(name, env)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = coerce(name, value)
    config = Config(**values)
    config.validate()
    return config
