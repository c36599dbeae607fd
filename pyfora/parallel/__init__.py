"""Automatic parallelism: comprehensions compiled into calls of a runtime that splits
them across the cluster's idle workers (see ``rewrite.py`` and ``_runtime.py``).

Code is safe to split when its comprehensions do not mutate shared state: each element
may run on another worker, in another process, and elements after the first exception
or after ``any``/``all`` stop may still be computed (their results are discarded).
Opt out with ``ex.remotely.sequential()`` for with-blocks, or ``submit`` a function
decorated with ``pyfora.parallel.sequential``.
"""

from .rewrite import is_user_function, rewrite_comprehensions, rewrite_function


def sequential(fn):
    """Mark ``fn`` so that ``submit`` runs its comprehensions sequentially."""
    fn.__pyfora_sequential__ = True
    return fn


__all__ = ["is_user_function", "rewrite_comprehensions", "rewrite_function", "sequential"]
