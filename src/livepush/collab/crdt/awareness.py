"""The awareness states of one document (who is here, their cursors), pure.

The rules are y-protocols' (awareness.js): per client id the newest clock wins, an equal clock
wins only to remove, a removal is a `null` state, and a state not renewed within
`OUTDATED_TIMEOUT` is dropped (clients renew theirs every 15 s). Added here: a client id
belongs to the user who announced it first (another user's update for it is ignored, so nobody
can remove or overwrite someone else's presence), and removals are kept for a while as
tombstones so that a late, older update cannot bring a client back.
"""

from __future__ import annotations

from dataclasses import dataclass

from livepush.protocol.crdt import AwarenessEntry

#: Seconds a state lives without renewal (y-protocols `outdatedTimeout`).
OUTDATED_TIMEOUT = 30.0


@dataclass(slots=True)
class _State:
    clock: int
    state: str
    user_id: str
    #: The local connection that announced it, or None (another node's client).
    owner: object | None
    renewed: float


class AwarenessTable:
    """Latest awareness state per client id of one document, local and relayed ones."""

    __slots__ = ("_states",)

    def __init__(self) -> None:
        self._states: dict[int, _State] = {}

    def __len__(self) -> int:
        return sum(1 for s in self._states.values() if s.state != "null")

    def apply(
        self, entries: list[AwarenessEntry], *, user_id: str, owner: object | None, now: float
    ) -> list[AwarenessEntry]:
        """Apply a client's (or another node's) update; returns the entries accepted, the
        ones to pass on."""
        accepted = []
        for entry in entries:
            current = self._states.get(entry.client_id)
            if current is not None:
                if current.user_id != user_id:
                    continue
                newer = entry.clock > current.clock or (
                    entry.clock == current.clock and entry.gone and current.state != "null"
                )
                if not newer:
                    continue
            self._states[entry.client_id] = _State(entry.clock, entry.state, user_id, owner, now)
            accepted.append(entry)
        return accepted

    def owned_by(self, owner: object) -> list[int]:
        """The client ids a local connection announced and still holds."""
        return [
            client_id
            for client_id, state in self._states.items()
            if state.owner is owner and state.state != "null"
        ]

    def remove(self, client_ids: list[int], now: float) -> list[AwarenessEntry]:
        """Mark clients gone (their connection closed); returns the removals to send."""
        removals = []
        for client_id in client_ids:
            state = self._states.get(client_id)
            if state is None or state.state == "null":
                continue
            state.clock += 1
            state.state = "null"
            state.owner = None
            state.renewed = now
            removals.append(AwarenessEntry(client_id, state.clock, "null"))
        return removals

    def expire(self, now: float, timeout: float = OUTDATED_TIMEOUT) -> list[AwarenessEntry]:
        """Drop states not renewed within `timeout` (returns their removals) and forget old
        tombstones."""
        removals = []
        for client_id, state in list(self._states.items()):
            if now - state.renewed < timeout:
                continue
            if state.state == "null":
                del self._states[client_id]
            else:
                removals.extend(self.remove([client_id], now))
        return removals

    def entries(self, *, local: bool = False) -> list[AwarenessEntry]:
        """Every present state (for a client that joins or asks), or only the local
        connections' ones (another node asks)."""
        return [
            AwarenessEntry(client_id, state.clock, state.state)
            for client_id, state in self._states.items()
            if state.state != "null" and (not local or state.owner is not None)
        ]

    def user_of(self, client_id: int) -> str | None:
        """Who announced a client id."""
        state = self._states.get(client_id)
        return None if state is None else state.user_id
