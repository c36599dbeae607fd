"""The global names a code object (and the code nested in it) reads.

Its own module because both ``_pieces`` (the cache key, which must not import numba to
be computed) and ``_translate`` use it. Pure; runs on any thread.
"""

from __future__ import annotations

import types


def names(code: types.CodeType) -> set[str]:
    found = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= names(const)
    return found
