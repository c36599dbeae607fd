"""The object directory: every object the cluster holds, by id, and who references it.

A computed object keeps its *recipe* (``lineage.Recipe``: the task that made it), so it
can be computed again if the worker holding it dies. A recipe keeps the records of its
inputs (``children`` counts the recipes naming a record), not their values: once nobody
references an input (``refs`` is 0) its value is freed on the workers, but its record
stays, *dormant*, until no recipe names it. Dormant records are not counted as objects.
A dormant input that had to be computed again (``keep``) keeps its value until then:
inputs shared by several lost objects would otherwise be rebuilt once for each, and
shared inputs of shared inputs once for each of those, exponentially.

Runs on the coordinator's event loop; nothing here awaits.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyfora import wire as p

if TYPE_CHECKING:
    from cluster.scheduling.lineage import Rebuild, Recipe
    from cluster.scheduling.peers import Session, Worker


@dataclasses.dataclass(eq=False)
class ObjectRecord:
    oid: int
    owner: Session                  # the session that made it
    size: int = 0
    type: str = ""
    # The workers holding the value (the pool's; Dask's results are its futures).
    holders: set[Worker] = dataclasses.field(default_factory=set)
    data: bytes | None = None       # the coordinator's copy: defined values, small results
    # A defined value's buffers and their frames, as they came. Empty tuples otherwise:
    # no two lists per result for the garbage collector to visit.
    oob: list | tuple = ()
    frames: list | tuple = ()
    error: dict | None = None       # set when the computation that made it raised
    refs: int = 1                   # the owner's proxy, plus one per task that uses it
    held: bool = True               # the owner's proxy has not been released
    recipe: Recipe | None = None    # how to compute it again, if computed
    children: int = 0               # recipes that name this record as an input
    rebuild: Rebuild | None = None  # while it is being computed again
    keep: bool = False              # keep its value while dormant (it was computed again)
    defined: bool = False           # made by ``define``: counted in its owner's defined bytes

    def value(self) -> p.Value:
        """The copy the coordinator holds (``data``), as the reply to a fetch."""
        assert self.data is not None, "asked only of a record that holds its value"
        return p.Value(id=0, data=self.data, oob=list(self.oob), frames=list(self.frames))


class ObjectStore:
    def __init__(self) -> None:
        self._objects: dict[int, ObjectRecord] = {}
        self._ids = itertools.count(1).__next__
        self._defined: dict[Session, int] = {}     # owner -> bytes of its defined records
        # Tell the holders to drop their copies; the record itself is gone.
        self.on_free: Callable[[ObjectRecord], None] = lambda record: None
        self.on_drop: Callable[[ObjectRecord], None] = lambda record: None

    def new_id(self) -> int:
        return self._ids()

    def add(self, record: ObjectRecord) -> None:
        self._objects[record.oid] = record
        if record.defined:
            self._defined[record.owner] = self._defined.get(record.owner, 0) + record.size

    def defined_bytes(self, owner: Session) -> int:
        """Bytes of the values ``owner`` defined that are still here: those it released
        too, while a recipe keeps them to compute a result again (``_drop``)."""
        return self._defined.get(owner, 0)

    def get(self, oid: int) -> ObjectRecord | None:
        return self._objects.get(oid)

    def incref(self, oid: int) -> None:
        self._objects[oid].refs += 1

    def decref(self, oid: int) -> None:
        record = self._objects.get(oid)
        if record is None or record.refs <= 0:
            return
        record.refs -= 1
        if record.refs > 0:
            return
        if record.children <= 0:
            self._drop(record)
        elif not record.keep:
            self._free_value(record)

    def _free_value(self, record: ObjectRecord) -> None:
        self.on_free(record)
        record.holders.clear()
        if record.recipe is not None:
            record.data = None      # a defined value's copy here is its only recipe
            record.frames = ()

    def add_children(self, oids: list[int]) -> None:
        """A new recipe names these records as its inputs."""
        for oid in oids:
            record = self._objects.get(oid)
            if record is not None:
                record.children += 1

    def _drop(self, record: ObjectRecord) -> None:
        """Delete a record nobody uses, and the dormant inputs only its recipe kept."""
        stack = [record]
        while stack:
            record = stack.pop()
            if self._objects.get(record.oid) is not record:
                continue
            del self._objects[record.oid]
            if record.defined:
                left = self._defined.pop(record.owner) - record.size
                if left:
                    self._defined[record.owner] = left
            self._free_value(record)
            self.on_drop(record)
            for oid in record.recipe.deps if record.recipe is not None else ():
                dep = self._objects.get(oid)
                if dep is not None:
                    dep.children -= 1
                    if dep.refs <= 0 and dep.children <= 0:
                        stack.append(dep)

    def release(self, oid: int, owner: Session) -> None:
        """The owner's proxy died; a second release of the same object does nothing."""
        record = self._objects.get(oid)
        if record is not None and record.owner is owner and record.held:
            record.held = False
            self.decref(oid)

    def release_owned_by(self, owner: Session) -> None:
        """Drop the owner's reference to everything it made (its session ended)."""
        for record in [r for r in self._objects.values() if r.owner is owner]:
            self.release(record.oid, owner)

    def forget_holder(self, holder: Worker) -> list[ObjectRecord]:
        """A worker is gone: remove it as a holder; return records left with no copy."""
        lost = []
        for record in self._objects.values():
            if holder in record.holders:
                record.holders.discard(holder)
                if not record.holders and record.data is None and record.error is None:
                    lost.append(record)
        return lost

    def records(self) -> list[ObjectRecord]:
        """Every live record, as a list (a snapshot: safe to keep while the store changes)."""
        return [r for r in self._objects.values() if r.refs > 0]

    def __len__(self) -> int:
        """Live objects (dormant records, kept only as recipes' inputs, do not count)."""
        return sum(1 for r in self._objects.values() if r.refs > 0)

    def total_bytes(self) -> int:
        return sum(r.size for r in self._objects.values() if r.refs > 0)

    def record_count(self) -> int:
        """Every record, dormant ones included."""
        return len(self._objects)
