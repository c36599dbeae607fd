"""The comprehension rewriter, run locally: outside a worker the runtime takes the
sequential path, so rewritten code must give exactly what the original gives."""

from __future__ import annotations

import ast
import sys
import traceback

import pytest

from pyfora.parallel import is_user_function, rewrite_comprehensions, rewrite_function
from pyfora.parallel import _runtime

SOURCE = '''
def double(x):
    return 2 * x

items = [3, 1, 2]
lists = [double(x) for x in range(10) if x % 3]
sets = {x % 4 for x in items}
dicts = {k: v for k, v in zip("abc", items)}
gens = sum(x * y for x in range(5) for y in range(x))
nested = [[y for y in range(x)] for x in range(4)]
pairs = [(a, b) for (a, b) in [(1, 2), (3, 4)]]
walrus = [(last := x) for x in range(3)]
generator = (x for x in items)
first = next(generator)
maxed = max(double(x) for x in items)
in_class = None

class Holder:
    values = [x * 2 for x in range(3)]

in_class = Holder.values
'''


def run_source(source: str, rewrite: bool) -> dict:
    tree = ast.parse(source)
    if rewrite:
        tree = rewrite_comprehensions(tree)
    namespace: dict = {}
    exec(compile(tree, "<test>", "exec"), namespace)
    namespace.pop("__builtins__", None)
    return {k: v for k, v in namespace.items() if not callable(v) and k != "generator"}


def test_rewritten_code_gives_the_sequential_answers():
    assert run_source(SOURCE, rewrite=True) == run_source(SOURCE, rewrite=False)


def test_what_is_rewritten():
    text = ast.unparse(rewrite_comprehensions(ast.parse(SOURCE)))
    assert "_runtime.listcomp(range(10)" in text
    assert "_runtime.setcomp(items" in text
    assert "_runtime.dictcomp(zip('abc', items)" in text
    assert "_runtime.genexp(range(5)" in text
    # the outermost loop only: the inner comprehension stays as it was, inside
    assert text.count("[y for y in range(x)]") == 2
    # ':=' binds in the enclosing scope, which a lambda would change: left alone
    assert "[(last := x) for x in range(3)]" in text
    # the runtime is reached without any name from the user's globals
    assert "__import__('pyfora.parallel._runtime')" in text


def test_async_comprehensions_are_left_alone():
    source = "async def f(xs):\n    return [x async for x in xs] + [await x for x in xs]\n"
    assert "_runtime" not in ast.unparse(rewrite_comprehensions(ast.parse(source)))


def test_line_numbers_point_at_the_user_line():
    source = "def fail(x):\n    return 1 // x\n\n\nvalues = [\n    fail(x)\n    for x in range(-2, 3)]\n"
    tree = rewrite_comprehensions(ast.parse(source))
    with pytest.raises(ZeroDivisionError) as info:
        exec(compile(tree, "<lines>", "exec"), {})
    lines = [f.lineno for f in traceback.extract_tb(info.value.__traceback__)
             if f.filename == "<lines>"]
    assert lines[-2:] == [6, 2]


def closure_maker(scale):
    offset = 10

    def compute(n, extra=1, *, power=1):
        """doc"""
        return [(x * scale + offset + extra) ** power for x in range(n) if x % 2]
    return compute


def no_comprehension(x):
    return x + 1


def test_rewrite_function_keeps_closure_defaults_and_name():
    original = closure_maker(3)
    new = rewrite_function(original)
    assert new is not original
    assert "_runtime" in str(new.__code__.co_consts) or any(
        "lambda" in getattr(c, "co_name", "") for c in new.__code__.co_consts)
    assert new(7) == original(7) and new(7, 2, power=2) == original(7, 2, power=2)
    assert (new.__name__, new.__qualname__, new.__doc__) == \
        (original.__name__, original.__qualname__, original.__doc__)
    assert new.__code__.co_firstlineno == original.__code__.co_firstlineno
    assert rewrite_function(original) is new, "cached"


def test_rewrite_function_leaves_what_it_cannot_or_need_not_rewrite():
    assert rewrite_function(no_comprehension) is no_comprehension
    assert rewrite_function(len) is len
    lam = lambda xs: [x for x in xs]   # noqa: E731
    assert rewrite_function(lam) is lam
    namespace: dict = {}
    exec("def dynamic(n):\n    return [x for x in range(n)]\n", namespace)
    assert rewrite_function(namespace["dynamic"]) is namespace["dynamic"]


def test_only_the_users_functions_are_rewritten_on_submit():
    assert is_user_function(closure_maker)
    assert not is_user_function(traceback.format_exc)
    assert not is_user_function(_runtime.pmap)
    assert not is_user_function(sys.exit)


def test_runtime_outside_a_worker_is_the_plain_comprehension():
    assert _runtime._context is None
    assert _runtime.listcomp(range(5), None, lambda it: [x * 2 for x in it]) == [0, 2, 4, 6, 8]
    gen = _runtime.genexp(iter([1, 2]), lambda it: (x for x in it))
    assert list(gen) == [1, 2]


def squares(n):
    return [x * x for x in range(n)]


def cubes(n):
    return [x * x * x for x in range(n)]


def test_rewrite_follows_a_function_whose_code_was_replaced():
    def f(n):
        return [x for x in range(n)]
    first = rewrite_function(f)
    assert first(3) == [0, 1, 2]
    f.__code__ = squares.__code__       # what IPython's autoreload does to a changed function
    assert rewrite_function(f)(3) == [0, 1, 4]
    f.__code__ = cubes.__code__
    assert rewrite_function(f)(3) == [0, 1, 8]
