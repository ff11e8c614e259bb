"""Awareness rules: y-protocols' clocks, per-user ownership of client ids, expiry."""

from __future__ import annotations

from livepush.collab.crdt.awareness import OUTDATED_TIMEOUT, AwarenessTable
from livepush.protocol.crdt import AwarenessEntry


def entry(client_id: int, clock: int, state: str = '{"x":1}') -> AwarenessEntry:
    return AwarenessEntry(client_id, clock, state)


def test_newer_clock_wins_and_older_or_equal_is_ignored():
    table = AwarenessTable()
    owner = object()
    assert table.apply([entry(1, 2)], user_id="u", owner=owner, now=0) == [entry(1, 2)]
    assert table.apply([entry(1, 1, '{"old":1}')], user_id="u", owner=owner, now=0) == []
    assert table.apply([entry(1, 2, '{"same":1}')], user_id="u", owner=owner, now=0) == []
    assert table.apply([entry(1, 3, '{"y":2}')], user_id="u", owner=owner, now=0) == [
        entry(1, 3, '{"y":2}')
    ]
    # an equal clock may remove
    assert table.apply([entry(1, 3, "null")], user_id="u", owner=owner, now=0) == [
        entry(1, 3, "null")
    ]
    assert table.entries() == []


def test_another_user_cannot_overwrite_or_remove_a_client():
    table = AwarenessTable()
    table.apply([entry(1, 1)], user_id="alice", owner=object(), now=0)
    assert table.apply([entry(1, 9, "null")], user_id="mallory", owner=object(), now=0) == []
    assert table.entries() == [entry(1, 1)]


def test_a_closed_connection_removes_what_it_still_owns():
    table = AwarenessTable()
    first, second = object(), object()
    table.apply([entry(1, 1), entry(2, 1)], user_id="alice", owner=first, now=0)
    # the same user's new connection takes client 2 over (a reconnect)
    table.apply([entry(2, 2)], user_id="alice", owner=second, now=0)
    assert table.owned_by(first) == [1]
    assert table.remove(table.owned_by(first), now=1) == [entry(1, 2, "null")]
    assert table.entries() == [entry(2, 2)]
    # a late, older update does not bring client 1 back
    assert table.apply([entry(1, 1)], user_id="alice", owner=None, now=2) == []


def test_states_not_renewed_expire_and_tombstones_are_forgotten():
    table = AwarenessTable()
    table.apply([entry(1, 1)], user_id="a", owner=None, now=0)
    table.apply([entry(2, 1)], user_id="b", owner=None, now=20)
    assert table.expire(OUTDATED_TIMEOUT - 1) == []
    assert table.expire(OUTDATED_TIMEOUT) == [entry(1, 2, "null")]
    assert [e.client_id for e in table.entries()] == [2]
    assert len(table) == 1
    table.expire(OUTDATED_TIMEOUT * 3)
    # both tombstones are gone: a new state with any clock is accepted
    assert table.apply([entry(1, 1)], user_id="c", owner=None, now=100) == [entry(1, 1)]


def test_local_entries_exclude_relayed_ones():
    table = AwarenessTable()
    table.apply([entry(1, 1)], user_id="a", owner=object(), now=0)
    table.apply([entry(2, 1)], user_id="b", owner=None, now=0)
    assert [e.client_id for e in table.entries(local=True)] == [1]
    assert table.user_of(2) == "b" and table.user_of(3) is None
