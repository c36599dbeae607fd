"""Plain sequential CPython in the client: the W4 reference (speed-up = this / parallel)."""

from __future__ import annotations

import tasks
from common import Stopwatch


def w4(cfg: dict) -> dict:
    with Stopwatch() as sw:
        count = sum(tasks.isPrime(x) for x in range(cfg["w4_n"]))
    return {"with_block": {"seconds": sw.seconds, "count": count}}
