"""The comprehension rewriter, run locally: outside a worker the runtime takes the
sequential path, so rewritten code must give exactly what the original gives."""

from __future__ import annotations

import ast
import sys
import traceback

import pytest

from pyfora.parallel import is_user_function, rewrite_comprehensions, rewrite_function
from pyfora import serialization
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
    assert "_runtime.genexp(items" in text
    # sum() of a generator expression: the name sum is passed, looked up where it was
    assert "_runtime.sum_genexp(sum, range(5)" in text
    # the outermost loop only: the inner comprehension stays as it was, inside
    assert text.count("[y for y in range(x)]") == 1
    # ':=' binds in the enclosing scope, which a lambda would change: left alone
    assert "[(last := x) for x in range(3)]" in text
    # the runtime is reached without any name from the user's globals
    assert "__import__('pyfora.parallel._runtime')" in text


def test_top_level_functions_hold_the_runtime_in_a_closure():
    source = "def f(n):\n    return [x for x in range(n)]\n\n@staticmethod\n" \
             "def g(n):\n    return [x for x in range(n)]\n\n" \
             "def r(n):\n    return [r(k) for k in range(n)]\n"
    namespace: dict = {}
    exec(compile(rewrite_comprehensions(ast.parse(source)), "<closure>", "exec"), namespace)
    f = namespace["f"]
    assert f.__code__.co_freevars == ("_pyfora_rt",)
    assert f.__closure__[0].cell_contents is _runtime
    assert (f.__name__, f.__qualname__) == ("f", "f") and f(3) == [0, 1, 2]
    assert "__import__" not in f.__code__.co_names
    # a decorated definition is left as it is, the runtime reached through __import__
    assert "__import__" in namespace["g"].__func__.__code__.co_names
    # so is one that calls itself: in the closure its name would no longer be the global
    assert "__import__" in namespace["r"].__code__.co_names
    assert namespace["r"](3) == [[], [[]], [[], [[]]]]
    assert set(namespace) == {"__builtins__", "f", "g", "r"}


def test_the_tree_given_is_left_as_it_was():
    tree = ast.parse(SOURCE)
    before = ast.dump(tree, include_attributes=True)
    once = ast.unparse(rewrite_comprehensions(tree))
    assert ast.dump(tree, include_attributes=True) == before
    assert ast.unparse(rewrite_comprehensions(tree)) == once


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


def factorials(n):
    class Value(int):
        pass

    def inner():
        return [factorials(x - 1)[0][-1] * x if x else 1 for x in range(n + 1)]
    return [Value(v) for v in inner()], inner, Value


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
    assert dict(zip(new.__code__.co_freevars, new.__closure__))["_pyfora_rt"].cell_contents \
        is _runtime
    shipped = serialization.loads(serialization.dumps(new)[0])
    assert shipped(7, 2, power=2) == original(7, 2, power=2)
    assert dict(zip(shipped.__code__.co_freevars, shipped.__closure__))["_pyfora_rt"] \
        .cell_contents is _runtime, "a module travels by reference"


def test_rewrite_function_keeps_names_inside_and_recursion():
    new = rewrite_function(factorials)
    assert new is not factorials
    values, inner, value_class = new(4)
    assert values == [1, 1, 2, 6, 24]
    assert inner.__qualname__ == "factorials.<locals>.inner"
    assert value_class.__qualname__ == "factorials.<locals>.Value"


def test_rewrite_function_leaves_what_it_cannot_or_need_not_rewrite():
    assert rewrite_function(no_comprehension) is no_comprehension
    assert rewrite_function(len) is len
    lam = lambda xs: [x for x in xs]   # noqa: E731
    assert rewrite_function(lam) is lam
    namespace: dict = {}
    exec("def dynamic(n):\n    return [x for x in range(n)]\n", namespace)
    assert rewrite_function(namespace["dynamic"]) is namespace["dynamic"]


def test_only_the_users_functions_are_rewritten_on_submit(tmp_path, monkeypatch):
    import cloudpickle
    assert is_user_function(closure_maker)
    assert not is_user_function(traceback.format_exc)
    assert not is_user_function(_runtime.pmap)
    assert not is_user_function(sys.exit)
    assert not is_user_function(cloudpickle.dumps)      # an installed package's
    (tmp_path / "users_project_module.py").write_text("def f(xs):\n    return [x for x in xs]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import users_project_module
    assert is_user_function(users_project_module.f)     # a module of a script's directory


def test_runtime_outside_a_worker_is_the_plain_comprehension():
    assert _runtime._context is None
    assert _runtime.listcomp(range(5), lambda it: [x * 2 for x in it]) == [0, 2, 4, 6, 8]
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
