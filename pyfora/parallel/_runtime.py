"""The parallel runtime that rewritten comprehensions call (see ``rewrite.py``).

Outside a worker, or over an iterable that is not a ``range``, ``list`` or ``tuple``, a
call runs the original comprehension at once: the machinery costs one function call.

On a worker (``install`` was called with the worker's context), a comprehension runs its
first ``FIRST`` elements alone and times them. When even ten times that rate leaves the
rest too small to split, the rest runs at once over the same iterator: small work costs
two comprehensions instead of one (a dict comprehension: one, over two parts), two clock
readings and (for lists and sets) a merge of the first elements in, nothing per element.
A generator expression pays one C-level call per element (see ``genexp``; on a worker it
is an iterator, without ``send``/``throw``/``close``), except as the argument of ``sum``,
which sums the rest from the first elements' sum (see ``sum_genexp``). Every call times
its own first elements: a call site that was cheap once still splits when its elements
are expensive. Otherwise it goes on in growing batches, and when the rest is worth splitting
(``WORTH`` seconds at the measured rate) and the coordinator reports idle workers, the
rest becomes an ``_Engine`` (``engine.py``):

* **Splitting.** The remaining index range is cut into one segment per idle worker plus
  one; the lowest stays local, the others are sent as *pieces*. The coordinator runs a
  piece only on a worker that is idle right now, or refuses it (then it stays local):
  pieces never queue, so nothing ever waits on work that cannot start, and a task that
  waits for its pieces keeps computing (no deadlock with one worker, busy workers, or
  nested parallel code).
* **Stealing.** A piece runs its range in batches and can be split while it runs: the
  coordinator relays ``Split`` to its worker, which gives away the upper half of what it
  has not started. When a piece finishes (a worker became idle) or the coordinator reports
  idle workers, the segment with the most work left (local or remote) is split and the
  upper half is sent to the idle worker. When the local work is done, the root steals the
  upper half of the largest running piece for itself, and waits only when nothing is
  left to split.
* **Ordering.** Segments are kept sorted by index; results are produced (and, for
  generator expressions, yielded as soon as the prefix is complete) in index order. An
  element that raises ends its segment; later segments are cancelled, earlier ones are
  still completed, so the exception raised is the one first in iteration order, after
  every result before it. A remote exception carries its worker-side frames
  (``serialization.REMOTE_FRAMES``) so the remote traceback shows them.
* **Progress.** ``pmap`` (the root of ``Executor.map``) counts its elements done, as its
  own batches and its pieces finish, and reports the count through the context (``_Report``)
  for the client's progress line. Only ``pmap`` reports: the client shows a count for a
  map, whose total it knows; a comprehension inside user code is one step of something
  larger, and its count would mislead. Its pieces report their own counts too (else half
  of a map on two workers would show only when it returns); the coordinator adds those of
  running pieces to the root's, which includes the pieces that returned (see
  ``Dispatcher.task_progress``). A map that never splits (one worker, a busy cluster)
  still reports: that is when its caller waits longest, and the cost is one clock reading
  per batch.

Runs on the worker's task thread.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from functools import partial, reduce
from itertools import chain, islice, tee
from operator import add
from time import perf_counter
from typing import Any

#: Seconds of remaining work (at the measured rate) that are worth splitting.
WORTH = 0.05
#: The least work, in seconds, that goes to another worker as one piece.
MIN_PIECE = 0.01
#: The first batch; later batches grow geometrically, up to ``BATCH`` seconds.
FIRST = 16
BATCH = 0.02
#: ``(n - FIRST) * seconds < _CHEAP``: ten times the first batch's rate leaves too little
#: to split, so the rest runs at once.
_CHEAP = WORTH * FIRST / 10
#: Seconds of CPython work (at the rate of the first elements) worth a compile.
COMPILE_WORTH = 0.05
#: How often a task running alone asks again for idle workers.
CHECK = 0.1
#: A map's first count is sent this long after it starts (a shorter map sends none: the
#: client's progress line appears only after a second), later ones at most this often.
REPORT_DELAY = 0.5
REPORT = 0.2

_SIZED = (range, list, tuple)
#: ``sum`` compensates float rounding from 3.12 on (complex numbers from 3.14 on) in state
#: it keeps apart from the sum so far; before, every path of ``sum`` is a plain left fold.
_COMPENSATED = sys.version_info >= (3, 12)
#: The types ``sum`` has fast paths for, and the largest C ``long`` (its integer path).
_SUM_FAST = (int, float, complex)
_LONG_MAX = 2 ** (8 * struct.calcsize("l") - 1) - 1
_INT_TYPES = {int, bool}
_context: Any = None
#: The name of the closure cell through which rewritten code reaches this module
#: (``rewrite``): a function with that free variable may split work across the cluster.
CELL = "_pyfora_rt"


def install(context: Any) -> None:
    """Called once by the worker process; ``context`` talks to the coordinator (see
    ``cluster/worker/parallel.py`` for the interface)."""
    global _context
    _context = context


# -- entry points (the rewritten code calls these) ------------------------------------
#
# ``fn`` is the comprehension itself, over the iterable it is given. Each entry point
# runs the first ``FIRST`` elements alone and times them; when even ten times that rate
# leaves the rest too small to split, the rest runs at once, as one more call of ``fn``
# on the same iterator, or (dicts) as the same call going on over it (this is the path
# of small comprehensions, written out in each entry point: an iterator and an
# ``islice`` cost less than slicing a range, and much less than copying a list).
# Otherwise ``_collect`` goes on in growing batches and may split.

def listcomp(it: Any, fn: Callable, report: _Report | None = None, src: str | None = None,
             names: dict | None = None) -> list:
    """``src`` (and ``names``, else ``fn``'s): see ``_compiler``."""
    if _context is None or type(it) not in _SIZED or (n := len(it)) <= FIRST:
        return fn(it)
    items = iter(it)
    t0 = perf_counter()
    head = fn(islice(items, FIRST))
    seconds = perf_counter() - t0
    if (n - FIRST) * seconds < _CHEAP:
        rest = fn(items)
        rest[:0] = head             # a move of pointers: cheaper than extending the head
        return rest
    return _collect(it, fn, head, seconds, list.extend, report,
                    _compiler("list", it, fn, src, names))


def _compiler(kind: str, it: Any, fn: Callable, src: str | None,
              names: dict | None) -> Callable | None:
    """What gives the compiled piece for ``fn`` (``pyfora.compiled.piece``) when ``_collect``
    finds the rest worth compiling; None when it cannot be compiled. ``src`` is the
    comprehension's source: the rewrite passes it where the tier may compile."""
    if src is None or type(it) is not range:
        return None
    from .. import compiled
    if not compiled.enabled():
        return None
    return partial(compiled.piece, kind, src, fn, names)


def setcomp(it: Any, fn: Callable) -> set:
    if _context is None or type(it) not in _SIZED or (n := len(it)) <= FIRST:
        return fn(it)
    items = iter(it)
    t0 = perf_counter()
    head = fn(islice(items, FIRST))
    seconds = perf_counter() - t0
    if (n - FIRST) * seconds < _CHEAP:
        rest = fn(items)
        # Into the big set, not out of it; equal elements keep the first one seen, as in
        # one comprehension: the head's.
        rest -= head
        rest |= head
        return rest
    return _collect(it, fn, head, seconds, set.update)


def dictcomp(it: Any, fn: Callable) -> dict:
    """``fn`` is the dict comprehension over each of the iterables it is given in turn
    (``{K: V for _part in parts for T in _part}``, see ``rewrite.py``): one comprehension
    goes on over the first elements and then, if cheap, the rest, each element taken
    straight from the iterator. A dict keeps the order keys came in, so two dicts could
    only be merged by inserting the rest again (+40% on cheap work)."""
    if _context is None or type(it) not in _SIZED or len(it) <= FIRST:
        return fn((it,))
    timing: list[float] = []
    head = fn(_dict_input(it, timing))
    if not timing:
        return head
    return _collect(it, partial(_one_part, fn), head, timing[0], dict.update)


def _one_part(fn: Callable, part: Any) -> dict:
    return fn((part,))


def _dict_input(it: Any, timing: list[float]):
    items = iter(it)
    t0 = perf_counter()
    yield islice(items, FIRST)
    seconds = perf_counter() - t0
    if (len(it) - FIRST) * seconds < _CHEAP:
        yield items
    else:
        timing.append(seconds)


def genexp(it: Any, fn: Callable) -> Any:
    """A generator expression: on a worker, an iterator (``itertools.chain``) over the
    first batches (run through a generator of ours that times them), then the rest at
    once: the user's own generator, or the parallel results. Past the first batches each
    element costs what it costs in CPython, plus one call inside ``chain``."""
    if _context is None or type(it) not in _SIZED or len(it) <= FIRST:
        return fn(it)
    return _genexp_rest(it, iter(it), fn, _context, None)


def _genexp_rest(it: Any, items: Any, fn: Callable, context: Any, probe: _Probe | None):
    """The results of ``fn`` over what is left of ``items`` (an iterator over ``it``):
    from the start without a probe, else after ``probe.pos`` elements."""
    rest: list = []
    return chain.from_iterable(_genexp_parts(it, items, fn, context, probe, rest))


def _genexp_parts(it: Any, items: Any, fn: Callable, context: Any, probe: _Probe | None,
                  rest: list):
    yield _genexp_head(it, items, fn, context, probe, rest)
    # When the head raised and the consumer asked again, ``rest`` is empty: a generator
    # that raised is finished.
    if rest:
        yield rest[0]


def _genexp_head(it: Any, items: Any, fn: Callable, context: Any, probe: _Probe | None,
                 rest: list):
    """The next batches; puts what produces the rest into ``rest``."""
    n = len(it)
    a, b = probe.batch() if probe else (0, FIRST)
    while True:
        t0 = perf_counter()
        yield from fn(islice(items, b - a))
        seconds = perf_counter() - t0
        if (n - b) * seconds < _CHEAP * (b - a) / FIRST:     # also at the end: b == n
            rest.append(fn(items))
            return
        probe = probe or _Probe(n, context)
        if probe.measured(b - a, seconds):
            rest.append(_Engine(it, probe.pos, fn, context, probe.rate, probe.idle).results())
            return
        a, b = probe.batch()


def sum_genexp(reducer: Any, it: Any, fn: Callable, src: str | None = None) -> Any:
    """``sum`` of a generator expression (``reducer`` is what the name ``sum`` held where
    the call was written: anything else is called as written). On a worker the first
    elements are summed alone and timed, then the rest is summed from that partial sum:
    ``sum`` calls the user's generator directly, with nothing per element in between.

    Restarting ``sum`` from a partial sum is the same left fold, except that from 3.12
    on ``sum`` compensates float rounding in state it does not return: there the restart
    is only taken from a state ``sum`` can be given back (see ``_sum_rest``).

    Where the compiled tier may take the rest (``src``, over a range), it is collected
    instead (elements from CPython batches; from compiled pieces, partial sums of ints or
    float elements, see ``pyfora.compiled._pieces``) and summed once, which is CPython's
    fold over the same elements."""
    if reducer is not sum:
        return reducer(genexp(it, fn))
    if _context is None or type(it) not in _SIZED or (n := len(it)) <= FIRST:
        return sum(fn(it))
    items = iter(it)
    head: list | None = None
    kept: Any
    t0 = perf_counter()
    if src is not None and type(it) is range:
        head = list(fn(islice(items, FIRST)))       # kept for ``_collect``
        kept, first_sum = head if _COMPENSATED else None, sum(head)
    elif _COMPENSATED:
        # The first elements are kept (the sum may have to start again over them).
        summed, kept = tee(fn(islice(items, FIRST)))
        first_sum = sum(summed)
    else:
        kept, first_sum = None, sum(fn(islice(items, FIRST)))
    seconds = perf_counter() - t0
    if (n - FIRST) * seconds < _CHEAP:
        return _sum_rest(first_sum, kept, fn(items))
    compiler = _compiler("sum", it, fn, src, None) if head is not None else None
    if compiler is not None:
        return sum(_collect(it, fn, head, seconds, list.extend, None, compiler))
    probe = _Probe(n, _context)
    if probe.measured(FIRST, seconds):
        rest = _Engine(it, probe.pos, fn, _context, probe.rate, probe.idle).results()
    else:
        rest = _genexp_rest(it, items, fn, _context, probe)
    return _sum_rest(first_sum, kept, rest)


def _sum_rest(first_sum: Any, kept: Any, rest: Any) -> Any:
    """What one ``sum`` over the first elements (``kept``, only from 3.12 on), which gave
    ``first_sum``, and then over ``rest`` gives."""
    if type(first_sum) not in _SUM_FAST:
        # Neither an int, a float nor a complex number: ``sum`` left its fast paths for
        # its generic loop, ``+`` from left to right (a restart would also refuse a str).
        return reduce(add, rest, first_sum)
    if kept is None:
        return sum(rest, first_sum)
    kept = list(kept)
    if type(first_sum) is int and _long_ints(kept):
        return sum(rest, first_sum)
    # A compensated float (or complex) sum: one sum again, from the first element. The
    # first elements are not computed again, but they are added again.
    return sum(chain(kept, rest))


def _long_ints(values: list) -> bool:
    """Whether ``sum`` over ``values`` stayed on its path of C ``long`` integers (every
    value an exact int or a bool, no partial sum beyond a C ``long``), whose only state
    is the sum it returns."""
    return set(map(type, values)) <= _INT_TYPES and sum(map(abs, values)) <= _LONG_MAX


def pmap(fn: Callable, items: Any) -> list:
    """``list(map(fn, items))``, parallel on a worker (``Executor.map`` runs this); it
    reports its elements done to the client (see **Progress** above)."""
    if type(items) not in _SIZED:
        items = list(items)

    def part(it: Any) -> list:
        return list(map(fn, it))
    return listcomp(items, part, None if _context is None else _Report(len(items), _context),
                    _MAP_SRC, {"_pyfora_fn": fn})


_MAP_SRC = "[_pyfora_fn(_pyfora_x) for _pyfora_x in _pyfora_it]"


class _Report:
    """Elements done of a map, sent through ``context.progress(done, total)`` no earlier
    than ``REPORT_DELAY`` after the start and at most every ``REPORT`` seconds; checked
    only when a count is added, so a map that makes no progress sends nothing."""

    __slots__ = ("context", "done", "due", "total")

    def __init__(self, total: int, context: Any) -> None:
        self.total = total
        self.done = 0
        self.context = context
        self.due = perf_counter() + REPORT_DELAY

    def add(self, count: int) -> None:
        self.done += count
        now = perf_counter()
        if now >= self.due:
            self.due = now + REPORT
            self.context.progress(self.done, self.total)


# -- the sequential start: time the first elements ------------------------------------

class _Probe:
    """Batches over ``[pos, n)``: growing geometrically, at most ``BATCH`` seconds each
    at the latest rate; says when the rest is worth splitting and workers are idle."""

    def __init__(self, n: int, context: Any) -> None:
        self.n = n
        self.context = context
        self.pos = 0
        self.size = FIRST
        self.rate = 0.0
        self.next_check = perf_counter() + BATCH / 4
        self.idle = 0

    def measured(self, count: int, seconds: float) -> bool:
        """Record a batch; True when the rest should go parallel (``self.idle`` workers)."""
        self.pos += count
        self.rate = seconds / count if count else self.rate
        grow = max(FIRST, 3 * self.pos)
        self.size = max(1, min(grow, int(BATCH / self.rate))) if self.rate > 0 else grow
        if self.pos >= self.n or (self.n - self.pos) * self.rate < WORTH:
            return False
        now = perf_counter()
        if now < self.next_check:
            return False
        self.next_check = now + CHECK
        self.idle = self.context.idle()
        return self.idle > 0

    def batch(self) -> tuple[int, int]:
        return self.pos, min(self.n, self.pos + self.size)


def _collect(it: Any, fn: Callable, acc: Any, seconds: float, combine: Callable,
             report: _Report | None = None, compiler: Callable | None = None) -> Any:
    """Go on after the first ``FIRST`` elements (``acc``, computed in ``seconds``). With
    ``compiler``, ``fn`` becomes its compiled piece at once if this worker compiled it
    before, else once the rest would take ``COMPILE_WORTH`` seconds in CPython (the first
    elements are often the cheapest: small numbers for isPrime)."""
    n = len(it)
    probe = _Probe(n, _context)
    probe.measured(FIRST, seconds)
    if report is not None:
        report.add(FIRST)
    if compiler is not None and (found := compiler(compile_now=False)) is not None:
        fn, compiler = found, None
    while probe.pos < n:
        if compiler is not None and (n - probe.pos) * probe.rate >= COMPILE_WORTH:
            found, compiler = compiler(), None
            if found is not None:
                fn = found
                probe.size = FIRST      # re-timed from its own first batch
        a, b = probe.batch()
        t0 = perf_counter()
        combine(acc, fn(it[a:b]))
        if report is not None:
            report.add(b - a)
        if probe.measured(b - a, perf_counter() - t0):
            if compiler is not None and (n - probe.pos) * probe.rate >= COMPILE_WORTH:
                continue        # compile first (above), then split at the compiled rate
            combine(acc, _Engine(it, probe.pos, fn, _context, probe.rate,
                                 probe.idle, report).results())
            break
    return acc


from .engine import _Engine  # noqa: E402 - the engine imports this module back
