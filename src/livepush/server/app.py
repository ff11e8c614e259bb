"""The application of one node, wired in one place: the configuration becomes an engine, a
node, the features plugged into it, and the routes that serve them.

    app = create_app(config)
    services = app[SERVICES]          # the node and its features, for embedding and tests
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from livepush.auth.policy import AuthorizationPolicy, ClaimsPolicy, HttpCallbackPolicy
from livepush.auth.tokens import TokenVerifier
from livepush.collab.crdt.documents import CrdtSettings, Documents
from livepush.collab.crdt.metrics import CrdtMetrics
from livepush.collab.crdt.room import Rooms as DocumentRooms
from livepush.collab.feature import Collaboration
from livepush.collab.rooms import CollabSettings
from livepush.config import Config
from livepush.core.node import Node, NodeSettings
from livepush.core.session import SessionLimits
from livepush.engines.documents import StoreSettings
from livepush.engines.factory import EngineSettings, build_engine
from livepush.execution.feature import Executions
from livepush.execution.relay import ExecutionSettings
from livepush.http.collab import add_collab_routes
from livepush.http.executions import add_execution_routes
from livepush.http.operations import add_operation_routes
from livepush.http.publish import PublishHandler
from livepush.requests import HandshakeSettings
from livepush.transports.admission import Admission, AdmissionSettings
from livepush.transports.crdt import CrdtEndpoint, add_crdt_routes
from livepush.transports.push import commands_endpoint, push_endpoint
from livepush.transports.websocket import close_all

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Services:
    """A node and the features plugged into it."""

    node: Node
    collaboration: Collaboration
    executions: Executions
    documents: Documents


SERVICES = web.AppKey("livepush.services", Services)


def engine_settings(config: Config) -> EngineSettings:
    """The configured engine's settings."""
    return EngineSettings(
        kind="redis" if config.engine == "redis" else "memory",
        history_size=config.history_size,
        history_ttl=config.history_ttl,
        redis_url=config.redis_url,
        redis_prefix=config.redis_prefix,
        redis_cluster=config.redis_cluster,
        memory_stream_ttl=max(3600.0, config.execution_retention),
        memory_output_bytes=config.output_store_bytes,
        sqlite_path=config.crdt_path,
        documents=StoreSettings(
            max_doc_bytes=config.crdt_max_doc_bytes, compact_updates=config.crdt_compact_updates
        ),
    )


def execution_settings(config: Config) -> ExecutionSettings:
    """The execution path's settings."""
    return ExecutionSettings(
        retention=config.execution_retention,
        inline_bytes=config.output_inline_bytes,
        push_limit=config.output_push_limit,
        max_bytes=config.output_max_bytes,
        # a chunk always fits a connection's queue
        chunk_bytes=max(1024, min(config.output_chunk_bytes, config.max_queue_bytes // 2)),
        snapshot_inline_bytes=config.snapshot_inline_bytes,
        max_event_bytes=config.max_publish_bytes,
    )


def build_policy(config: Config) -> AuthorizationPolicy:
    """Token claims, or the host application's authorization callback."""
    if config.auth_callback_url:
        return HttpCallbackPolicy(
            config.auth_callback_url,
            cache_ttl=config.auth_callback_cache_ttl,
            timeout=config.auth_callback_timeout,
            api_key=config.api_key,
        )
    return ClaimsPolicy()


def build_node(config: Config) -> Node:
    """A node from the configuration (engine, token verifier, policy, limits), no features."""
    verifier = TokenVerifier(
        secret=config.jwt_secret,
        public_key_path=config.jwt_public_key,
        jwks_path=config.jwt_jwks,
        audience=config.jwt_audience,
        issuer=config.jwt_issuer,
        leeway=config.jwt_leeway,
        user_claim=config.jwt_user_claim,
    )
    return Node(
        build_engine(engine_settings(config)),
        verifier,
        policy=build_policy(config),
        settings=NodeSettings(
            recovery_limit=config.recovery_limit,
            push_ref_ttl=config.push_ref_ttl,
            max_connections_per_user=config.max_connections_per_user,
            max_publish_bytes=config.max_publish_bytes,
            token_expiry_warning=config.token_expiry_warning,
            ping_interval=config.ping_interval,
            presence=config.presence,
            presence_ttl=config.presence_ttl,
            flush_passes=config.flush_passes or (2 if config.engine == "redis" else 1),
        ),
        limits=SessionLimits(
            max_queue_messages=config.max_queue_messages,
            max_queue_bytes=config.max_queue_bytes,
            max_subscriptions=config.max_subscriptions,
            rate=config.rate_limit,
            burst=config.rate_burst,
        ),
    )


def build_services(config: Config) -> Services:
    """A node with every feature plugged in."""
    node = build_node(config)
    collaboration = Collaboration(
        node,
        CollabSettings.for_presence_ttl(
            config.presence_ttl,
            flush_interval=config.collab_flush_interval,
            tick=config.collab_tick,
            ephemeral_rate=config.ephemeral_rate,
            ephemeral_burst=config.ephemeral_burst,
            lock_idle_ttl=config.lock_idle_ttl,
        ),
    )
    executions = Executions(node, execution_settings(config))
    rooms = DocumentRooms(
        node.engine.documents,
        CrdtMetrics(node.metrics.registry),
        unload_delay=config.crdt_unload_delay,
        awareness_tick=config.crdt_awareness_tick,
    )
    documents = Documents(
        node,
        rooms,
        CrdtSettings(
            max_update_bytes=config.crdt_max_update_bytes,
            rate_limit=config.crdt_rate_limit,
            max_queue_bytes=config.max_queue_bytes,
            ping_interval=config.ping_interval,
            jwt_leeway=config.jwt_leeway,
            n8n_framing=config.crdt_n8n_framing,
        ),
    )
    for feature in (collaboration, executions, documents):
        node.add(feature)
    return Services(node, collaboration, executions, documents)


def create_app(config: Config, services: Services | None = None) -> web.Application:
    """The application serving the push and CRDT endpoints, the host application's API,
    health and metrics."""
    services = services or build_services(config)
    node = services.node
    # (the execution events endpoint takes node outputs up to output_max_bytes; the publish
    # endpoint checks its own, smaller limit)
    app = web.Application(client_max_size=max(config.max_publish_bytes, config.output_max_bytes))
    app[SERVICES] = services
    handshake = HandshakeSettings(
        tuple(config.allowed_origins), config.trust_proxy, config.auth_cookie
    )
    prefix = config.rest_prefix
    crdt = CrdtEndpoint(services.documents, handshake)
    # one cap and one handshake rate for both endpoints
    crdt.admission = admission = Admission(
        AdmissionSettings(
            max_connections=config.max_connections,
            handshake_rate=config.handshake_rate,
            handshake_burst=config.handshake_burst,
            trust_proxy=config.trust_proxy,
        ),
        lambda: len(node.hub) + len(crdt.connections),
    )
    app.router.add_get(
        f"{prefix}/push",
        push_endpoint(
            node,
            handshake,
            admission,
            max_message_bytes=config.max_message_bytes,
            sse_retry_ms=config.sse_retry_ms,
        ),
    )
    app.router.add_post(
        f"{prefix}/push",
        commands_endpoint(node, handshake, max_message_bytes=config.max_message_bytes),
    )
    add_crdt_routes(app, crdt, prefix)
    app.router.add_post(
        "/api/v1/publish", PublishHandler(node, config.api_key, config.max_publish_bytes).handle
    )
    add_execution_routes(app, services.executions, node.verifier, handshake, config.api_key)
    add_collab_routes(app, services.collaboration, config.api_key)
    add_operation_routes(app, node, config.api_key, prefix)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await node.start()
        yield
        await close_all(node)
        await node.close()

    app.cleanup_ctx.append(lifecycle)
    return app
