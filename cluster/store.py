"""The object directory: every object the cluster holds, by id, and who references it.

Runs on the coordinator's event loop; nothing here awaits.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any


@dataclasses.dataclass(eq=False)
class ObjectRecord:
    oid: int
    owner: Any                      # the ClientSession that made it
    size: int = 0
    type: str = ""
    holders: set = dataclasses.field(default_factory=set)   # WorkerLinks holding the value
    data: bytes | None = None       # the coordinator's copy: defined values, small results
    error: dict | None = None       # set when the computation that made it raised
    refs: int = 1                   # the owner's proxy, plus one per task that uses it


class ObjectStore:
    def __init__(self) -> None:
        self._objects: dict[int, ObjectRecord] = {}
        self._ids = itertools.count(1).__next__
        self.on_free = lambda record: None

    def new_id(self) -> int:
        return self._ids()

    def add(self, record: ObjectRecord) -> None:
        self._objects[record.oid] = record

    def get(self, oid: int) -> ObjectRecord | None:
        return self._objects.get(oid)

    def incref(self, oid: int) -> None:
        self._objects[oid].refs += 1

    def decref(self, oid: int) -> None:
        record = self._objects.get(oid)
        if record is None:
            return
        record.refs -= 1
        if record.refs <= 0:
            del self._objects[oid]
            self.on_free(record)

    def release_owned_by(self, owner: Any) -> None:
        """Drop the owner's reference to everything it made (its session ended)."""
        for record in [r for r in self._objects.values() if r.owner is owner]:
            self.decref(record.oid)

    def forget_holder(self, holder: Any) -> list[ObjectRecord]:
        """A worker is gone: remove it as a holder; return records left with no copy."""
        lost = []
        for record in self._objects.values():
            if holder in record.holders:
                record.holders.discard(holder)
                if not record.holders and record.data is None and record.error is None:
                    lost.append(record)
        return lost

    def records(self) -> list[ObjectRecord]:
        """Every record, as a list (a snapshot: safe to keep while the store changes)."""
        return list(self._objects.values())

    def __len__(self) -> int:
        return len(self._objects)

    def total_bytes(self) -> int:
        return sum(r.size for r in self._objects.values())
