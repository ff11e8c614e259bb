"""The Redis-level message format and `RedisStreams`, the command side of the Redis engine:
publish (the atomic script), position, recover. Every node's broker publishes through it, and
so do external publishers (`livepush.publisher`).

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
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec

from livepush.engines.base import SEQUENCE_SLOT, Recovery, with_sequence
from livepush.engines.redis.client import ScriptClient, load_script, to_text, ttl_ms
from livepush.protocol.envelope import Priority, Publication, StreamPosition

FORMAT_VERSION = 1

PUBLISH_LUA = load_script("publish.lua")
RECOVER_LUA = load_script("recover.lua")


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


def decode_publication(message: bytes, offset: int | None, epoch: str | None) -> Publication:
    """The publication a Redis-level message carries, at `offset` in `epoch` (None for
    ephemeral messages)."""
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


class RedisStreams(ScriptClient):
    """The command side of the Redis engine: publish (the atomic script), position, recover.
    Used by every node's broker and by external publishers (`livepush.publisher`)."""

    SCRIPTS: ClassVar[dict[str, str]] = {"publish": PUBLISH_LUA, "recover": RECOVER_LUA}

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
        super().__init__(url, prefix=prefix, cluster=cluster)
        self._history_size = str(history_size)
        self._history_ttl_ms = str(int(history_ttl * 1000))
        self._stream_ttl_ms = str(int(max(stream_ttl, history_ttl) * 1000))

    async def start(self) -> None:
        """Connect (fails if Redis is unreachable)."""
        await super().start()
        async with self.call():
            await self.redis.ping()

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
            async with self.call():
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
                args += [ttl_ms(retention), len(delete), *delete]
                for field, value in fields:
                    args += [field, value]
        async with self.call():
            offset, epoch = await self._scripts["publish"](keys=keys, args=args)
        if sequence:
            publication = Publication(
                publication.channel,
                publication.type,
                with_sequence(publication.data, int(offset)),
                published_at=publication.published_at,
            )
        return publication.with_position(int(offset), to_text(epoch))

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
            decode_publication(message, since.offset + i, epoch)
            for i, message in enumerate(messages, 1)
        ]
        return Recovery(position, publications, True)

    async def _run_recover(
        self, channel: str, epoch: str, offset: int, limit: int
    ) -> tuple[str, int, list[bytes] | None]:
        async with self.call():
            result = await self._scripts["recover"](
                keys=[self.keys.meta(channel), self.keys.stream(channel)],
                args=[epoch, offset, limit, self._history_ttl_ms, self._stream_ttl_ms, new_epoch()],
            )
        recovered = int(result[2]) == 1
        return to_text(result[0]), int(result[1]), list(result[3:]) if recovered else None
