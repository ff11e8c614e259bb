"""The Redis broker: fan-out through Redis pub/sub, history in the channel streams
(`streams.py`, which holds the Redis-level format), and commands forwarded between nodes.

Each node subscribes only to the channels its connections are in. It tracks the newest offset
it delivered per channel: a duplicate is dropped, a gap (a message lost while its pub/sub
connection was down) is filled from the stream before anything newer is delivered, and when the
stream cannot fill it (Redis lost or trimmed it; the epoch changed) the node is told through
the broker's reset handler, which tells the clients. When the pub/sub connection drops the node
reconnects with backoff, is not ready meanwhile, re-subscribes, and fills every channel from
the stream. In a Redis Cluster the channels are spread over one pub/sub connection per primary
(sharded pub/sub).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Sequence
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError

from livepush.engines.base import Broker, EngineUnavailable, Recovery
from livepush.engines.redis.client import Keys, connect, to_text
from livepush.engines.redis.streams import RedisStreams, decode_publication
from livepush.protocol.envelope import Publication, StreamPosition
from livepush.protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

_encode = msgspec.json.encode


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
                    name = to_text(message["channel"])
                    if name == self._rpc_name:
                        self._on_forwarded(message["data"])
                    elif name == self._inbox_name:
                        self._on_forward_reply(message["data"])
                    else:
                        self._on_message(name, message["data"])
                elif kind in (b"subscribe", "subscribe", b"ssubscribe", "ssubscribe"):
                    state = self._channels.get(self.keys.channel_of(to_text(message["channel"])))
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
            async with self.streams.call():
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
            async with self.streams.call():
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
                self._handler(decode_publication(message, None, None))
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
        self._handler(decode_publication(message, offset, epoch))

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
