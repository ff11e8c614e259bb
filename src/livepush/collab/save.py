"""Saving what is not in the CRDT document: a workflow's name, settings, pinned data... with
the version (n8n's `versionId`) compared on save and last-write-wins per property.

The host application keeps the workflow; its save endpoint asks `resolve_save` what to store:

    result = resolve_save(
        stored=row.data, stored_version=row.version_id,
        incoming=body["workflow"], base_version=body["versionId"], base=body.get("base"),
    )
    if result.status == "conflict":
        return json_response(result.describe(), status=409)
    row.data, row.version_id = result.document, result.version

- The writer saw the stored version (`base_version == stored_version`): its document is stored
  as it is (`saved`).
- Someone saved in between, and the writer sent the document as it loaded it (`base`): a
  three-way merge per property. A property only the writer changed takes its value; one only
  the other save changed keeps the stored value; one both changed takes the writer's value
  (the last write wins) and is listed in `overwritten`, or, with `policy="reject"`, refuses the
  save as a conflict naming those properties. Objects are merged property by property; lists of
  objects that all carry a unique string `id` (n8n's `nodes`) are merged element by element by
  id; other lists and values are replaced whole.
- Someone saved in between and the writer sent no base: a conflict (`version_conflict`): the
  writer must reload, as n8n's editor asks.
- A fencing token (the write lock's) can be checked first (`check_fencing`, or the HTTP
  endpoint's `lock` and `token`): a writer whose lock expired or was taken gets `lock_lost`.

Over HTTP: `POST /api/v1/saves/resolve` (docs/protocol.md, "Saving").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from livepush.collab.locks import check_lock
from livepush.engines.base import LockStore
from livepush.protocol.errors import ErrorCode

Path = tuple[str | int, ...]

#: Marks a property absent on one side of a merge.
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Overlap:
    """A property both saves changed: its path, and the base, stored and incoming values
    (`None` when absent on that side)."""

    path: Path
    base: Any
    stored: Any
    incoming: Any

    def describe(self) -> dict[str, Any]:
        """As JSON (`path` is a list of keys and list indexes, `ids` for id-keyed lists)."""
        return {
            "path": list(self.path),
            "base": self.base,
            "stored": self.stored,
            "incoming": self.incoming,
        }


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What the save endpoint stores (`document` under `version`) or answers (a conflict)."""

    status: Literal["saved", "merged", "conflict"]
    document: dict[str, Any] | None
    version: str | None
    code: str | None = None
    message: str = ""
    #: Properties both saves changed (taken from the incoming save, or the cause of a
    #: `reject` conflict).
    overlaps: list[Overlap] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The result as JSON (what the HTTP endpoint answers)."""
        body: dict[str, Any] = {"status": self.status}
        if self.status == "conflict":
            body["code"] = self.code
            body["message"] = self.message
        else:
            body["document"] = self.document
            body["versionId"] = self.version
        if self.overlaps:
            key = "conflicts" if self.status == "conflict" else "overwritten"
            body[key] = [o.describe() for o in self.overlaps]
        return body


def resolve_save(
    *,
    stored: dict[str, Any],
    stored_version: str,
    incoming: dict[str, Any],
    base_version: str,
    base: dict[str, Any] | None = None,
    policy: Literal["last_write_wins", "reject"] = "last_write_wins",
    new_version: str | None = None,
) -> SaveResult:
    """Decide a save (see the module docstring). `new_version`: the version id to give the
    stored result (default: a new UUID, as n8n's versionId)."""
    version = new_version or str(uuid.uuid4())
    if base_version == stored_version:
        return SaveResult("saved", incoming, version)
    if base is None:
        return SaveResult(
            "conflict",
            None,
            None,
            ErrorCode.VERSION_CONFLICT.value,
            f"the workflow was saved by someone else (version {stored_version!r}, yours was "
            f"{base_version!r}); reload it, or send the version you loaded as `base` to merge",
        )
    overlaps: list[Overlap] = []
    merged = _merge(base, stored, incoming, (), overlaps)
    if overlaps and policy == "reject":
        paths = ", ".join(_show(o.path) for o in overlaps[:10])
        return SaveResult(
            "conflict",
            None,
            None,
            ErrorCode.VERSION_CONFLICT.value,
            f"someone else changed the same properties since version {base_version!r}: {paths}",
            overlaps,
        )
    return SaveResult("merged", merged, version, overlaps=overlaps)


async def check_fencing(locks: LockStore, lock: str, token: int) -> SaveResult | None:
    """A `lock_lost` conflict when `token` is not the lock's current fencing token, else
    None."""
    if await check_lock(locks, lock, token):
        return None
    return SaveResult(
        "conflict",
        None,
        None,
        ErrorCode.LOCK_LOST.value,
        f"fencing token {token} is not the current one of {lock!r}: the write lock expired or "
        "was taken over; reload before saving",
    )


def _merge(base: Any, stored: Any, incoming: Any, path: Path, overlaps: list[Overlap]) -> Any:
    if _same(incoming, base):
        return stored  # only the other save (if anyone) changed it
    if _same(stored, base) or _same(stored, incoming):
        return incoming  # only this save changed it (or both to the same value)
    if isinstance(base, dict) and isinstance(stored, dict) and isinstance(incoming, dict):
        return dict(_merge_entries(base, stored, incoming, path, overlaps))
    keyed = _by_id(base), _by_id(stored), _by_id(incoming)
    if keyed[0] is not None and keyed[1] is not None and keyed[2] is not None:
        # lists of objects with unique ids, merged element by element
        return [v for _, v in _merge_entries(keyed[0], keyed[1], keyed[2], path, overlaps)]
    overlaps.append(Overlap(path, _plain(base), _plain(stored), _plain(incoming)))
    return incoming  # both changed it: the last write wins


def _merge_entries(
    base: dict[str, Any],
    stored: dict[str, Any],
    incoming: dict[str, Any],
    path: Path,
    overlaps: list[Overlap],
) -> list[tuple[str, Any]]:
    """Each key merged, in the stored order, then the keys the incoming save added, in its
    order; keys deleted by the merge left out."""
    merged: list[tuple[str, Any]] = []
    for key in list(stored) + [k for k in incoming if k not in stored]:
        value = _merge(
            base.get(key, _MISSING),
            stored.get(key, _MISSING),
            incoming.get(key, _MISSING),
            (*path, key),
            overlaps,
        )
        if value is not _MISSING:
            merged.append((key, value))
    return merged


def _by_id(value: Any) -> dict[str, Any] | None:
    """A list of objects with unique string ids, as a dict by id (absent: empty)."""
    if value is _MISSING:
        return {}
    if not isinstance(value, list):
        return None
    keyed: dict[str, Any] = {}
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            return None
        if item["id"] in keyed:
            return None
        keyed[item["id"]] = item
    return keyed


def _same(a: Any, b: Any) -> bool:
    if a is _MISSING or b is _MISSING:
        return a is b
    return bool(a == b)


def _plain(value: Any) -> Any:
    return None if value is _MISSING else value


def _show(path: Path) -> str:
    return ".".join(str(p) for p in path) or "(document)"
