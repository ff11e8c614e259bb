"""The Redis engine: history in Redis Streams, fan-out through Redis pub/sub, presence in keys
with expiry, so any number of nodes (and external publishers) share channels.

Redis-level format (version 1, documented in docs/protocol.md so other languages can publish):

- a channel `workflow:42` has the keys `<prefix>:{workflow:42}:m` (hash: `e` epoch, `o` newest
  offset) and `<prefix>:{workflow:42}:s` (stream: entry id `<offset>-0`, fields `t` Redis time
  in ms and `m` the message), and the pub/sub channel `<prefix>:{workflow:42}`; the braces are
  a Redis Cluster hash tag, so all three live in one slot;
- a message is JSON `{"channel", "type", "data", "ts"}` (`ts`: publish time, epoch seconds;
  ephemeral messages add `"key"`), published as `<offset>:<epoch>:<message>` (ephemeral:
  `::<message>`, outside the stream);
- reliable publishing is the `lua/publish.lua` script: offset, stream append and publish in
  one atomic step, so every node sees a channel's messages in one order.

Each node subscribes only to the channels its connections are in. It tracks the newest offset
it delivered per channel: a duplicate is dropped, a gap (a message lost while its pub/sub
connection was down) is filled from the stream before anything newer is delivered, and when the
stream cannot fill it (Redis lost or trimmed it; the epoch changed) the node is told through
the broker's reset handler, which tells the clients. When the pub/sub connection drops the node
reconnects with backoff, is not ready meanwhile, re-subscribes, and fills every channel from
the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any, ClassVar, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError

from livepush.engines.base import (
    SEQUENCE_SLOT,
    Broker,
    Engine,
    EngineUnavailable,
    ExecutionState,
    ExecutionStore,
    LockGrant,
    LockStore,
    PresenceStore,
    Recovery,
    with_sequence,
)
from livepush.protocol.envelope import Priority, Publication, StreamPosition
from livepush.protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Commands in flight at once on a Redis Cluster (also its connections per node).
CLUSTER_CONCURRENCY = 64


def _script(name: str) -> str:
    return resources.files("livepush.engines").joinpath("lua", name).read_text()


PUBLISH_LUA = _script("publish.lua")
RECOVER_LUA = _script("recover.lua")
CLAIM_LUA = _script("claim.lua")
RELEASE_LUA = _script("release.lua")
MEMBERS_LUA = _script("members.lua")
LOCK_LUA = _script("lock.lua")
UNLOCK_LUA = _script("unlock.lua")


class WireMessage(msgspec.Struct, omit_defaults=True):
    """A message as stored in the stream and sent over pub/sub."""

    channel: str
    type: str
    data: msgspec.Raw
    ts: float
    key: str | None = None


_decode_message = msgspec.json.Decoder(WireMessage).decode
_encode = msgspec.json.encode


def encode_message(publication: Publication) -> bytes:
    """The Redis-level message of a publication."""
    message = WireMessage(
        publication.channel,
        publication.type,
        msgspec.Raw(publication.data),
        publication.published_at,
        publication.key,
    )
    return _encode(message)


def _publication(message: bytes, offset: int | None, epoch: str | None) -> Publication:
    wire = _decode_message(message)
    return Publication(
        wire.channel,
        wire.type,
        bytes(wire.data),
        offset=offset,
        epoch=epoch,
        priority=Priority.RELIABLE if offset is not None else Priority.EPHEMERAL,
        key=wire.key,
        published_at=wire.ts,
    )


def new_epoch() -> str:
    """A fresh random epoch."""
    return secrets.token_hex(6)


class Keys:
    """Key names of a channel (one Redis Cluster slot per channel, via the hash tag)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def meta(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}:m"

    def stream(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}:s"

    def pubsub(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}"

    def channel_of(self, pubsub_name: str) -> str:
        return pubsub_name[len(self.prefix) + 2 : -1]

    def claim(self, name: str) -> str:
        return f"{self.prefix}:c:{{{name}}}"

    def lock(self, name: str) -> tuple[str, str]:
        return f"{self.prefix}:l:{{{name}}}", f"{self.prefix}:l:{{{name}}}:f"

    def execution(self, execution_id: str) -> str:
        return f"{self.prefix}:{{execution:{execution_id}}}:x"

    def output(self, execution_id: str, name: str) -> str:
        return f"{self.prefix}:{{execution:{execution_id}}}:o:{name}"

    def presence(self, channel: str) -> tuple[str, str]:
        return f"{self.prefix}:p:{{{channel}}}:z", f"{self.prefix}:p:{{{channel}}}:h"


def connect(
    url: str,
    *,
    cluster: bool = False,
    retries: int = 3,
    name: str | None = None,
    max_connections: int = 32,
) -> aioredis.Redis | RedisCluster:
    """A Redis client. Commands are retried a few times; the pub/sub client gets no retries,
    so that the broker sees every disconnect and resynchronises. At most `max_connections`
    connections (per cluster node) are opened; more concurrent commands wait for one (a
    connection storm of thousands of clients does not open thousands of Redis connections).
    `name` shows in CLIENT LIST."""
    if retries:
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries)
    else:
        retry = Retry(NoBackoff(), 0)
    if cluster:
        return RedisCluster.from_url(
            url, retry=retry, client_name=name, max_connections=CLUSTER_CONCURRENCY
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        retry=retry,
        health_check_interval=10,
        client_name=name,
    )
    return aioredis.Redis.from_pool(pool)


class _Forwarded:
    """Commands forwarded to the other nodes, waiting for the node that has the connection
    (or for every node to say it does not)."""

    __slots__ = ("absent", "expected", "future")

    def __init__(self) -> None:
        self.future: asyncio.Future[dict[str, Any] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.absent = 0
        self.expected: int | None = None

    def expect(self, receivers: int) -> None:
        self.expected = receivers
        self._check()

    def answer(self, answer: dict[str, Any]) -> None:
        if self.future.done():
            return
        if answer.get("absent"):
            self.absent += 1
            self._check()
        else:
            self.future.set_result(answer)

    def _check(self) -> None:
        if self.expected is not None and self.absent >= self.expected and not self.future.done():
            self.future.set_result(None)


class _Shard:
    """One pub/sub connection and its reader."""

    __slots__ = ("client", "key", "pubsub", "reader")

    def __init__(self, key: str, client: Any, pubsub: Any) -> None:
        self.key = key
        self.client = client
        self.pubsub = pubsub
        self.reader: asyncio.Task[None] | None = None


class _Channel:
    """A subscribed channel: the newest delivered position, and what waits behind a fill."""

    __slots__ = ("confirmed", "epoch", "filling", "offset", "pending", "positioning", "ready")

    def __init__(self) -> None:
        self.confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: The one read of the channel's position after the confirmation, which every
        #: subscriber waiting for the channel awaits.
        self.positioning: asyncio.Task[None] | None = None
        self.ready = False
        self.filling = False
        self.epoch = ""
        self.offset = 0
        self.pending: list[tuple[int, str, bytes]] = []


class RedisStreams:
    """The command side of the Redis engine: publish (the atomic script), position, recover.
    Used by every node's broker and by external publishers (`livepush.publisher`)."""

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        stream_ttl: float = 3600.0,
        prefix: str = "livepush",
        cluster: bool = False,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.keys = Keys(prefix)
        self._history_size = str(history_size)
        self._history_ttl_ms = str(int(history_ttl * 1000))
        self._stream_ttl_ms = str(int(max(stream_ttl, history_ttl) * 1000))
        self.redis: Any = None
        self._publish_script: Any = None
        self._recover_script: Any = None
        self._call = _Calls(cluster)

    async def start(self) -> None:
        """Connect (fails if Redis is unreachable)."""
        self.redis = connect(self.url, cluster=self.cluster)
        self._publish_script = self.redis.register_script(PUBLISH_LUA)
        self._recover_script = self.redis.register_script(RECOVER_LUA)
        async with self._call():
            await self.redis.ping()

    async def close(self) -> None:
        """Disconnect."""
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.aclose()

    async def publish(
        self,
        publication: Publication,
        *,
        sequence: bool = False,
        state: tuple[str, float, Sequence[str], Sequence[tuple[str, bytes]]] | None = None,
    ) -> Publication:
        """See `Broker.publish`; `sequence` and `state` (execution id, retention, fields to
        delete, fields to set): see `ExecutionStore.publish`."""
        channel = publication.channel
        message = encode_message(publication)
        name = self.keys.pubsub(channel)
        if publication.priority is Priority.EPHEMERAL:
            command = "SPUBLISH" if self.cluster else "PUBLISH"
            async with self._call():
                await self.redis.execute_command(command, name, b"::" + message)
            return publication
        keys = [self.keys.meta(channel), self.keys.stream(channel)]
        args: list[Any] = [
            name,
            message,
            self._history_size,
            self._history_ttl_ms,
            self._stream_ttl_ms,
            new_epoch(),
            "1" if self.cluster else "0",
        ]
        if sequence or state is not None:
            tail = b""
            if sequence:
                # the message is split where the offset goes: {"channel",...,"data":
                # {"sequenceNumber":<offset>,...
                slot = message.index(b'"data":' + SEQUENCE_SLOT) + len(SEQUENCE_SLOT) + 6
                args[1], tail = message[:slot], message[slot + 1 :]
            args += ["1" if sequence else "0", tail]
            if state is not None:
                execution_id, retention, delete, fields = state
                keys.append(self.keys.execution(execution_id))
                args += [_ms(retention), len(delete), *delete]
                for field, value in fields:
                    args += [field, value]
        async with self._call():
            offset, epoch = await self._publish_script(keys=keys, args=args)
        if sequence:
            publication = Publication(
                publication.channel,
                publication.type,
                with_sequence(publication.data, int(offset)),
                published_at=publication.published_at,
            )
        return publication.with_position(int(offset), _text(epoch))

    async def position(self, channel: str) -> StreamPosition:
        """See `Broker.position`."""
        epoch, offset, _ = await self._run_recover(channel, "", 0, 0)
        return StreamPosition(epoch, offset)

    async def recover(self, channel: str, since: StreamPosition, limit: int) -> Recovery:
        """See `Broker.recover`."""
        epoch, top, messages = await self._run_recover(channel, since.epoch, since.offset, limit)
        position = StreamPosition(epoch, top)
        if messages is None:
            return Recovery(position, [], False)
        publications = [
            _publication(message, since.offset + i, epoch) for i, message in enumerate(messages, 1)
        ]
        return Recovery(position, publications, True)

    async def _run_recover(
        self, channel: str, epoch: str, offset: int, limit: int
    ) -> tuple[str, int, list[bytes] | None]:
        async with self._call():
            result = await self._recover_script(
                keys=[self.keys.meta(channel), self.keys.stream(channel)],
                args=[epoch, offset, limit, self._history_ttl_ms, self._stream_ttl_ms, new_epoch()],
            )
        recovered = int(result[2]) == 1
        return _text(result[0]), int(result[1]), list(result[3:]) if recovered else None


class RedisBroker(Broker):
    """See the module docstring."""

    remote = True

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        stream_ttl: float = 3600.0,
        prefix: str = "livepush",
        cluster: bool = False,
        fill_limit: int = 10_000,
        reconnect_base: float = 0.1,
        reconnect_cap: float = 5.0,
        subscribe_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.cluster = cluster
        self.keys = Keys(prefix)
        self.streams = RedisStreams(
            url,
            history_size=history_size,
            history_ttl=history_ttl,
            stream_ttl=stream_ttl,
            prefix=prefix,
            cluster=cluster,
        )
        self._fill_limit = fill_limit
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._subscribe_timeout = subscribe_timeout
        #: This node, for replies to the commands it forwards to others.
        self.node_id = secrets.token_hex(6)
        self._rpc_name = f"{prefix}:{{rpc}}"
        self._inbox_name = f"{prefix}:{{node:{self.node_id}}}"
        self._waiting: dict[str, _Forwarded] = {}
        self._forward_timeout = 5.0
        self._shards: dict[str, _Shard] = {}
        self._shard_lock = asyncio.Lock()
        self._resync: asyncio.Task[None] | None = None
        self._channels: dict[str, _Channel] = {}
        self._connected = asyncio.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (commands and pub/sub) and start reading."""
        await self.streams.start()
        await self._open_all_shards()
        await self._subscribe_names([self._rpc_name, self._inbox_name])
        self._connected.set()

    async def close(self) -> None:
        """Stop reading and disconnect."""
        self._closing = True
        tasks = [*self._tasks, *([self._resync] if self._resync else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_shards()
        await self.streams.close()

    @property
    def ready(self) -> bool:
        """False while the pub/sub connection is down (publications would not reach us)."""
        return self._connected.is_set()

    # -- publishing --------------------------------------------------------------------------

    async def publish(self, publication: Publication) -> Publication:
        """See `Broker.publish`. A publication that is next in a channel this node delivers is
        handed to the node at once (its pub/sub echo is then a duplicate and dropped), which
        saves the pub/sub round trip on the node that published."""
        placed = await self.streams.publish(publication)
        offset = placed.offset
        if offset is not None:
            state = self._channels.get(placed.channel)
            if (
                state is not None
                and state.ready
                and not state.filling
                and offset == state.offset + 1
                and placed.epoch == state.epoch
            ):
                state.offset = offset
                self._handler(placed)
        return placed

    async def position(self, channel: str) -> StreamPosition:
        """See `Broker.position`."""
        return await self.streams.position(channel)

    async def recover(self, channel: str, since: StreamPosition, limit: int) -> Recovery:
        """See `Broker.recover`."""
        return await self.streams.recover(channel, since, limit)

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe to the channel's pub/sub, then read where its stream stands: everything
        after that position is delivered, in order."""
        state = self._channels.get(channel)
        if state is None:
            if not self._connected.is_set():
                raise EngineUnavailable("Redis is unreachable; retry once it is back")
            state = self._channels[channel] = _Channel()
            if self._connected.is_set():
                try:
                    await self._subscribe_names([self.keys.pubsub(channel)])
                except (RedisError, OSError) as exc:
                    self._lost(exc)  # the resync subscribes every channel again
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await self._until_ready(channel, state)
        except TimeoutError:
            raise EngineUnavailable(
                f"Redis did not confirm the subscription to {channel}"
            ) from None

    async def _until_ready(self, channel: str, state: _Channel) -> None:
        if state.ready:
            return
        await asyncio.shield(state.confirmed)
        if self._channels.get(channel) is not state:
            raise EngineUnavailable(f"the subscription to {channel} was dropped; retry")
        if state.ready:
            return
        if state.positioning is None:
            state.positioning = asyncio.get_running_loop().create_task(
                self._position_channel(channel, state)
            )
        await asyncio.shield(state.positioning)

    async def _position_channel(self, channel: str, state: _Channel) -> None:
        try:
            position = await self.position(channel)
        except BaseException:
            state.positioning = None  # the next subscriber tries again
            raise
        if state.ready or self._channels.get(channel) is not state:
            return
        state.epoch, state.offset = position
        state.ready = True
        self._drain(channel, state)

    async def unsubscribe(self, channel: str) -> None:
        """Leave the channel's pub/sub."""
        state = self._channels.pop(channel, None)
        if state is None:
            return
        if not state.confirmed.done():
            state.confirmed.set_result(None)  # a waiting subscribe sees the channel is gone
        if self._connected.is_set():
            name = self.keys.pubsub(channel)
            with contextlib.suppress(RedisError, OSError):
                shard = self._shards.get(self._shard_key(name))
                if shard is not None:
                    if self.cluster:
                        await shard.pubsub.sunsubscribe(name)
                    else:
                        await shard.pubsub.unsubscribe(name)

    @property
    def channel_count(self) -> int:
        """Channels this node is subscribed to in Redis."""
        return len(self._channels)

    # -- pub/sub connections -----------------------------------------------------------------

    def _shard_key(self, name: str) -> str:
        """The pub/sub connection a channel belongs to: "" for a plain Redis, the primary
        that owns the channel's slot in a Redis Cluster (sharded pub/sub)."""
        if not self.cluster:
            return ""
        node = self.streams.redis.nodes_manager.get_node_from_slot(key_slot(name.encode()))
        return str(node.name)

    async def _open_all_shards(self) -> None:
        """A pub/sub connection to Redis (to every primary of a cluster), opened up front so a
        lost Redis shows at once, even without subscriptions."""
        primaries = self.streams.redis.get_primaries() if self.cluster else []
        for key in [str(n.name) for n in primaries] or [""]:
            await self._shard(key)

    async def _shard(self, key: str) -> _Shard:
        shard = self._shards.get(key)
        if shard is not None:
            return shard
        async with self._shard_lock:
            shard = self._shards.get(key)
            if shard is None:
                name = f"{self.keys.prefix}-pubsub"
                if self.cluster:
                    host, _, port = key.rpartition(":")
                    client: Any = aioredis.Redis(
                        host=host, port=int(port), retry=Retry(NoBackoff(), 0), client_name=name
                    )
                else:
                    client = connect(self.url, retries=0, name=name, max_connections=2)
                pubsub = client.pubsub()
                try:
                    await pubsub.connect()
                except BaseException:
                    await client.aclose()
                    raise
                shard = _Shard(key, client, pubsub)
                shard.reader = asyncio.get_running_loop().create_task(self._read(shard))
                self._shards[key] = shard
        return shard

    async def _subscribe_names(self, names: Sequence[str]) -> None:
        by_shard: dict[str, list[str]] = {}
        for name in names:
            by_shard.setdefault(self._shard_key(name), []).append(name)
        for key, group in by_shard.items():
            shard = await self._shard(key)
            if self.cluster:
                # one SSUBSCRIBE may only name channels of one slot
                by_slot: dict[int, list[str]] = {}
                for name in group:
                    by_slot.setdefault(key_slot(name.encode()), []).append(name)
                for names in by_slot.values():
                    await shard.pubsub.ssubscribe(*names)
                continue
            for i in range(0, len(group), 1000):
                await shard.pubsub.subscribe(*group[i : i + 1000])

    async def _close_shards(self) -> None:
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            if shard.reader is not None and shard.reader is not asyncio.current_task():
                shard.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await shard.reader
            with contextlib.suppress(RedisError, OSError):
                await shard.pubsub.aclose()
            with contextlib.suppress(RedisError, OSError):
                await shard.client.aclose()

    # -- reading -----------------------------------------------------------------------------

    async def _read(self, shard: _Shard) -> None:
        """One pub/sub connection's messages, in order, until it fails."""
        pubsub = shard.pubsub
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                if message is None:
                    continue
                kind = message["type"]
                if kind in (b"message", "message", b"smessage", "smessage"):
                    name = _text(message["channel"])
                    if name == self._rpc_name:
                        self._on_forwarded(message["data"])
                    elif name == self._inbox_name:
                        self._on_forward_reply(message["data"])
                    else:
                        self._on_message(name, message["data"])
                elif kind in (b"subscribe", "subscribe", b"ssubscribe", "ssubscribe"):
                    state = self._channels.get(self.keys.channel_of(_text(message["channel"])))
                    if state is not None and not state.confirmed.done():
                        state.confirmed.set_result(None)
        except (RedisError, OSError) as exc:
            if not self._closing:
                self._lost(exc)

    # -- commands forwarded between nodes ----------------------------------------------------

    async def forward_commands(
        self, push_ref: str, user_id: str, messages: list[bytes]
    ) -> list[bytes] | None:
        """Ask every node (one pub/sub message) to run the messages on `push_ref`'s
        connection: the node that holds it answers with the replies, the others that they do
        not have it, on this node's inbox channel. None once every node said no."""
        request_id = secrets.token_hex(8)
        waiting = self._waiting[request_id] = _Forwarded()
        request = _encode(
            {
                "id": request_id,
                "replyTo": self._inbox_name,
                "pushRef": push_ref,
                "userId": user_id,
                "messages": [m.decode() for m in messages],
            }
        )
        try:
            async with self.streams._call():
                receivers = await self.streams.redis.execute_command(
                    "SPUBLISH" if self.cluster else "PUBLISH", self._rpc_name, request
                )
            waiting.expect(int(receivers))
            try:
                async with asyncio.timeout(self._forward_timeout):
                    answer = await waiting.future
            except TimeoutError:
                raise EngineUnavailable("no answer from the node holding the connection") from None
        finally:
            self._waiting.pop(request_id, None)
        if answer is None:
            return None
        if "error" in answer:
            raise ProtocolError(ErrorCode(answer["error"]["code"]), answer["error"]["message"])
        return [r.encode() for r in answer["replies"]]

    def _on_forwarded(self, data: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._run_forwarded(data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_forwarded(self, data: bytes) -> None:
        try:
            request = msgspec.json.decode(data)
            messages = [str(m).encode() for m in request["messages"]]
            answer: dict[str, Any] = {"id": request["id"]}
            try:
                replies = None
                if self._commands is not None:
                    replies = await self._commands(request["pushRef"], request["userId"], messages)
            except ProtocolError as exc:
                answer["error"] = {"code": exc.code.value, "message": exc.message}
            else:
                if replies is None:
                    answer["absent"] = True
                else:
                    answer["replies"] = [r.decode() for r in replies]
            async with self.streams._call():
                await self.streams.redis.execute_command(
                    "SPUBLISH" if self.cluster else "PUBLISH", request["replyTo"], _encode(answer)
                )
        except Exception:
            log.exception("running forwarded commands failed")

    def _on_forward_reply(self, data: bytes) -> None:
        answer = msgspec.json.decode(data)
        waiting = self._waiting.get(answer.get("id"))
        if waiting is not None:
            waiting.answer(answer)

    def _lost(self, exc: BaseException) -> None:
        """A pub/sub connection failed: resubscribe everything on fresh connections (once)."""
        if self._closing or (self._resync is not None and not self._resync.done()):
            return
        log.warning("redis pub/sub connection lost (%s); reconnecting", exc)
        self._connected.clear()
        self._resync = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Back off, reconnect every pub/sub connection, subscribe every channel again, then
        fill each channel from its stream (what was published meanwhile, or a reset)."""
        await self._close_shards()
        attempt = 0
        while not self._closing:
            attempt += 1
            delay = min(self._reconnect_cap, self._reconnect_base * 2 ** min(attempt, 16))
            await asyncio.sleep(random.uniform(0, delay))
            try:
                if self.cluster:
                    await self.streams.redis.nodes_manager.initialize()  # slots may have moved
                await self._open_all_shards()
                names = [self.keys.pubsub(c) for c in self._channels]
                await self._subscribe_names([self._rpc_name, self._inbox_name, *names])
            except (RedisError, OSError) as exc:
                log.info("redis reconnect attempt %d failed: %s", attempt, exc)
                await self._close_shards()
                continue
            break
        if self._closing:
            return
        log.warning("redis pub/sub reconnected; resynchronising %d channels", len(self._channels))
        self._connected.set()
        for channel, state in list(self._channels.items()):
            if state.ready and not state.filling:
                self._start_fill(channel, state)

    def _on_message(self, name: str, payload: bytes) -> None:
        channel = self.keys.channel_of(name)
        state = self._channels.get(channel)
        if state is None:
            return
        offset_text, epoch_bytes, message = payload.split(b":", 2)
        if not offset_text:  # ephemeral
            if state.ready:
                self._handler(_publication(message, None, None))
            return
        if not state.confirmed.done():  # a message can only follow the confirmation
            state.confirmed.set_result(None)
        item = (int(offset_text), epoch_bytes.decode(), message)
        if not state.ready or state.filling:
            state.pending.append(item)
            return
        self._accept(channel, state, *item)

    def _accept(
        self, channel: str, state: _Channel, offset: int, epoch: str, message: bytes
    ) -> None:
        if epoch != state.epoch:
            # The stream was recreated (Redis lost it): the clients must resynchronise.
            state.epoch, state.offset = epoch, offset - 1
            self._reset(channel, StreamPosition(epoch, offset - 1))
        elif offset <= state.offset:
            return  # already delivered (from the stream, during a fill)
        elif offset > state.offset + 1:
            state.pending.append((offset, epoch, message))
            self._start_fill(channel, state)
            return
        state.offset = offset
        self._handler(_publication(message, offset, epoch))

    def _start_fill(self, channel: str, state: _Channel) -> None:
        state.filling = True
        task = asyncio.get_running_loop().create_task(self._fill(channel, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill(self, channel: str, state: _Channel) -> None:
        """Deliver what the stream holds after the newest delivered offset, then what waited."""
        try:
            since = StreamPosition(state.epoch, state.offset)
            for attempt in range(5):
                try:
                    recovery = await self.recover(channel, since, self._fill_limit)
                    break
                except EngineUnavailable:
                    await asyncio.sleep(0.1 * 2**attempt)
            else:
                recovery = Recovery(await self.position(channel), [], False)
            if self._channels.get(channel) is not state:
                return
            if recovery.recovered:
                for publication in recovery.publications:
                    state.offset = cast(int, publication.offset)
                    self._handler(publication)
            else:
                state.epoch, state.offset = recovery.position
                self._reset(channel, recovery.position)
        except EngineUnavailable as exc:
            log.warning("could not resynchronise %s: %s", channel, exc)
        finally:
            state.filling = False
            if self._channels.get(channel) is state:
                self._drain(channel, state)

    def _drain(self, channel: str, state: _Channel) -> None:
        pending, state.pending = state.pending, []
        for index, item in enumerate(pending):
            self._accept(channel, state, *item)
            if state.filling:  # a new gap: the rest waits behind that fill
                state.pending.extend(pending[index + 1 :])
                return


class _ScriptClient:
    """A Redis connection and the Lua scripts a store runs on it (presence, locks)."""

    #: Script name -> source, registered on `start`.
    SCRIPTS: ClassVar[dict[str, str]] = {}

    def __init__(self, url: str, *, prefix: str = "livepush", cluster: bool = False) -> None:
        self.url = url
        self.cluster = cluster
        self.keys = Keys(prefix)
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._call = _Calls(cluster)

    async def start(self) -> None:
        """Connect and register the scripts."""
        self._redis = connect(self.url, cluster=self.cluster)
        self._scripts = {
            name: self._redis.register_script(source) for name, source in self.SCRIPTS.items()
        }

    async def close(self) -> None:
        """Disconnect."""
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()


class RedisPresence(_ScriptClient, PresenceStore):
    """Claims and channel presence in Redis keys with expiry."""

    SCRIPTS: ClassVar[dict[str, str]] = {
        "claim": CLAIM_LUA,
        "release": RELEASE_LUA,
        "members": MEMBERS_LUA,
    }

    async def claim(self, name: str, owner: str, ttl: float) -> bool:
        """See `PresenceStore.claim`."""
        async with self._call():
            result = await self._scripts["claim"](
                keys=[self.keys.claim(name)], args=[owner, _ms(ttl)]
            )
        return int(result) == 1

    async def release(self, name: str, owner: str, ttl: float) -> None:
        """See `PresenceStore.release`."""
        async with self._call():
            await self._scripts["release"](
                keys=[self.keys.claim(name)], args=[owner, _ms(ttl) if ttl > 0 else 0]
            )

    async def join(self, channel: str, client_id: str, info: dict[str, Any], ttl: float) -> None:
        """See `PresenceStore.join`."""
        async with self._call():
            await self._scripts["members"](
                keys=list(self.keys.presence(channel)),
                args=["join", client_id, _encode(info), _ms(ttl)],
            )

    async def leave(self, channel: str, client_id: str) -> None:
        """See `PresenceStore.leave`."""
        async with self._call():
            await self._scripts["members"](
                keys=list(self.keys.presence(channel)), args=["leave", client_id]
            )

    async def join_many(
        self, entries: Sequence[tuple[str, str, dict[str, Any]]], ttl: float
    ) -> None:
        """Batched (see `_batch`)."""
        await self._batch(
            self._scripts["members"],
            [
                (list(self.keys.presence(c)), ["join", cid, _encode(info), _ms(ttl)])
                for c, cid, info in entries
            ],
        )

    async def leave_many(self, entries: Sequence[tuple[str, str]]) -> None:
        """Batched (see `_batch`)."""
        await self._batch(
            self._scripts["members"],
            [(list(self.keys.presence(c)), ["leave", cid]) for c, cid in entries],
        )

    async def claim_many(self, claims: Sequence[tuple[str, str]], ttl: float) -> None:
        """Batched (see `_batch`)."""
        await self._batch(
            self._scripts["claim"],
            [([self.keys.claim(name)], [owner, _ms(ttl)]) for name, owner in claims],
        )

    async def _batch(self, script: Any, calls: Sequence[tuple[list[str], list[Any]]]) -> None:
        """Run many calls of a script: one pipeline (one round trip) per 1,000 on a plain
        Redis; on a cluster (where redis-py does not pipeline scripts) concurrently, within
        the cluster's command limit."""
        if self.cluster:

            async def one(keys: list[str], args: list[Any]) -> None:
                async with self._call():
                    await script(keys=keys, args=args)

            await asyncio.gather(*(one(k, a) for k, a in calls))
            return
        for i in range(0, len(calls), 1000):
            async with self._call():
                pipe = self._redis.pipeline(transaction=False)
                for keys, args in calls[i : i + 1000]:
                    await script(keys=keys, args=args, client=pipe)
                await pipe.execute()

    async def members(self, channel: str) -> dict[str, dict[str, Any]]:
        """See `PresenceStore.members`."""
        async with self._call():
            flat = await self._scripts["members"](
                keys=list(self.keys.presence(channel)), args=["members"]
            )
        return {_text(flat[i]): msgspec.json.decode(flat[i + 1]) for i in range(0, len(flat), 2)}


class _Calls:
    """Around every Redis command: Redis errors become `EngineUnavailable`, and on a cluster
    at most `CLUSTER_CONCURRENCY` commands run at once (redis-py's cluster client fails,
    rather than waits, when a node's connections run out; the plain client's pool waits)."""

    __slots__ = ("_limit",)

    def __init__(self, cluster: bool) -> None:
        self._limit = asyncio.Semaphore(CLUSTER_CONCURRENCY) if cluster else None

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        try:
            if self._limit is None:
                yield
            else:
                async with self._limit:
                    yield
        except (RedisError, OSError) as exc:
            raise EngineUnavailable(f"Redis: {exc}") from exc


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisExecutions(ExecutionStore):
    """Execution state in a hash and outputs in strings, in the execution channel's slot."""

    def __init__(self, streams: RedisStreams) -> None:
        self._streams = streams
        self._own = False

    @classmethod
    def connect(cls, url: str, **settings: Any) -> RedisExecutions:
        """A store with its own connection (for publishers outside a node)."""
        store = cls(RedisStreams(url, **settings))
        store._own = True
        return store

    async def start(self) -> None:
        """See `ExecutionStore.start`."""
        if self._own:
            await self._streams.start()

    async def close(self) -> None:
        """See `ExecutionStore.close`."""
        if self._own:
            await self._streams.close()

    async def publish(
        self,
        publication: Publication,
        execution_id: str,
        fields: Sequence[tuple[str, bytes]],
        delete: Sequence[str] = (),
        *,
        sequence: bool = False,
        retention: float,
    ) -> Publication:
        """See `ExecutionStore.publish`."""
        state = (execution_id, retention, delete, fields) if fields or delete else None
        return await self._streams.publish(publication, sequence=sequence, state=state)

    async def state(self, execution_id: str) -> ExecutionState | None:
        """See `ExecutionStore.state`."""
        streams = self._streams
        async with streams._call():
            raw = await streams.redis.hgetall(streams.keys.execution(execution_id))
        if not raw:
            return None
        fields = {_text(k): bytes(v) for k, v in raw.items()}
        epoch, offset = fields.pop("e", b"").decode(), int(fields.pop("o", b"0"))
        return ExecutionState(fields, StreamPosition(epoch, offset))

    async def fields(self, execution_id: str, names: Sequence[str]) -> dict[str, bytes]:
        """See `ExecutionStore.fields`."""
        streams = self._streams
        async with streams._call():
            values = await streams.redis.hmget(streams.keys.execution(execution_id), list(names))
        return {n: bytes(v) for n, v in zip(names, values, strict=True) if v is not None}

    async def put_output(self, execution_id: str, name: str, data: bytes, ttl: float) -> None:
        """See `ExecutionStore.put_output`."""
        streams = self._streams
        async with streams._call():
            await streams.redis.set(streams.keys.output(execution_id, name), data, px=_ms(ttl))

    async def output_size(self, execution_id: str, name: str) -> int | None:
        """See `ExecutionStore.output_size`."""
        streams = self._streams
        key = streams.keys.output(execution_id, name)
        async with streams._call():
            size, exists = await asyncio.gather(
                streams.redis.strlen(key), streams.redis.exists(key)
            )
        return int(size) if exists else None

    async def read_output(self, execution_id: str, name: str, start: int, end: int) -> bytes:
        """See `ExecutionStore.read_output`."""
        if end <= start:
            return b""
        streams = self._streams
        async with streams._call():
            data = await streams.redis.getrange(
                streams.keys.output(execution_id, name), start, end - 1
            )
        return bytes(data)


class RedisLocks(_ScriptClient, LockStore):
    """Locks in Redis hashes with expiry, granted by one script (atomic across nodes)."""

    SCRIPTS: ClassVar[dict[str, str]] = {"lock": LOCK_LUA, "unlock": UNLOCK_LUA}

    async def acquire(
        self, name: str, holder: str, owner: str, ttl: float, *, takeover: bool = False
    ) -> tuple[bool, LockGrant]:
        """See `LockStore.acquire`."""
        async with self._call():
            granted, who, whose, token, remaining = await self._scripts["lock"](
                keys=list(self.keys.lock(name)),
                args=[holder, owner, _ms(ttl), "1" if takeover else "0"],
            )
        grant = LockGrant(name, _text(who), _text(whose), int(token), int(remaining) / 1000)
        return int(granted) == 1, grant

    async def _run_unlock(self, name: str, holder: str, token: int, action: str) -> bool:
        async with self._call():
            done = await self._scripts["unlock"](
                keys=[self.keys.lock(name)[0]], args=[holder, str(token), action]
            )
        return int(done) == 1

    async def release(self, name: str, holder: str, token: int) -> bool:
        """See `LockStore.release`."""
        return await self._run_unlock(name, holder, token, "release")

    async def check(self, name: str, token: int) -> bool:
        """See `LockStore.check`."""
        return await self._run_unlock(name, "", token, "check")

    async def holder(self, name: str) -> LockGrant | None:
        """See `LockStore.holder`."""
        key = self.keys.lock(name)[0]
        async with self._call():
            fields, remaining = await asyncio.gather(
                self._redis.hmget(key, ["h", "o", "t"]), self._redis.pttl(key)
            )
        if fields[0] is None or int(remaining) < 0:
            return None
        return LockGrant(
            name, _text(fields[0]), _text(fields[1]), int(fields[2]), int(remaining) / 1000
        )


def redis_engine(
    url: str,
    *,
    history_size: int = 1000,
    history_ttl: float = 300.0,
    stream_ttl: float = 3600.0,
    prefix: str = "livepush",
    cluster: bool = False,
) -> Engine:
    """The cluster engine."""
    broker = RedisBroker(
        url,
        history_size=history_size,
        history_ttl=history_ttl,
        stream_ttl=stream_ttl,
        prefix=prefix,
        cluster=cluster,
    )
    return Engine(
        broker,
        RedisPresence(url, prefix=prefix, cluster=cluster),
        RedisExecutions(broker.streams),
        RedisLocks(url, prefix=prefix, cluster=cluster),
    )
