"""Assert tests made into code that runs and can fail, at import: `runnable_test_code(test_code, entry_point)`.

The sandbox runs test code after the program, in the program's module (named "solution", not "__main__"), and
passes a program if the code runs to its end with every assert that must run reporting (`assert_reach.py`). Test
code written for a test runner does nothing there, so every program would pass. This module turns it into plain
code at import, so that the pool stores what really runs and the rejects say what could not be used:

- `if __name__ == "__main__":` at module level: its body runs (`unittest.main()` calls are dropped);
  `from solution import f`: dropped (the program's names are already there).
- HumanEval's `def check(candidate)`: `check(<entry_point>)` is called at the end, unless the code calls it.
- pytest style: module-level `def test_*()` that nothing calls are called at the end, in source order.
- unittest style: in classes deriving from `unittest.TestCase` (or from such a class in the file), `self.assert*`
  calls become `assert` statements (`assertAlmostEqual`: `round(a - b, places) == 0`, or `abs(a - b) <= delta`;
  `assertRaises`: a small context manager and `assert <it>.raised` after the block; `assertCountEqual`: a small
  function); `with self.subTest(...)` blocks run as plain code. At the end each class runs as unittest would run it:
  `setUpClass`, then for each `test*` method in source order a fresh instance with `setUp`, the method, `tearDown`;
  then `tearDownClass`.

`UnusableTests` is raised for code that does not parse, imports something outside the standard library (the sandbox
has nothing else), uses a `self.assert*` method with no conversion here (named in the message), has a `test_*`
function that takes arguments (pytest fixtures), or has no assert that can run. The code is stored as given, with
the calls appended, unless a statement had to change (then it is stored as `ast.unparse` writes it, without its
comments). Not covered: pytest's `raises`/`approx`/fixtures/parametrize, test classes that do not derive from
`TestCase`, `assertRaisesRegex`, `assertWarns`, `assertLogs`.
"""

from __future__ import annotations

import ast
import sys

from adaptcot.pool.assert_reach import reach_of_asserts
from adaptcot.pool.unittest_asserts import (
    HELPERS,
    UnittestToAsserts,
    UnusableTests,
    defined_methods,
    methods_to_run,
    unittest_classes,
)

__all__ = ["UnusableTests", "runnable_test_code"]


def runnable_test_code(test_code: str, entry_point: str | None) -> str:
    """The test code as the pool stores it; raises UnusableTests (the reason) for code no program could fail or pass."""
    try:
        tree = ast.parse(test_code)
    except SyntaxError as e:
        raise UnusableTests(f"test code does not parse: line {e.lineno}: {e.msg}") from None
    changed = _run_main_block(tree) | _drop_solution_imports(tree)  # both run: `|`, not `or`
    _refuse_imports_the_sandbox_lacks(tree)
    classes = unittest_classes(tree)
    helpers: set[str] = set()
    for node in classes:
        own_methods = defined_methods(node, classes)
        for method in node.body:
            if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                converter = UnittestToAsserts(method, own_methods)
                converter.visit(method)
                helpers |= converter.helpers
                changed |= converter.changed
    if helpers:
        _insert_after_future_imports(tree, [s for name in sorted(helpers) for s in ast.parse(HELPERS[name]).body])
    calls = _calls_to_append(tree, entry_point, classes)
    code = ast.unparse(tree) if changed or helpers else test_code
    code = f"{code.rstrip()}\n\n" + "".join(f"{line}\n" for line in calls) if calls else code
    _refuse_unless_an_assert_runs(code)
    return code


def _drop_solution_imports(tree: ast.Module) -> bool:
    kept = [s for s in tree.body if not (isinstance(s, ast.ImportFrom) and s.module == "solution" and not s.level)]
    dropped = len(kept) != len(tree.body)
    tree.body[:] = kept
    return dropped


def _is_main_guard(node: ast.stmt) -> bool:
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)):
        return False
    sides = {ast.dump(node.test.left), ast.dump(node.test.comparators[0])}
    return sides == {ast.dump(ast.Name("__name__", ast.Load())), ast.dump(ast.Constant("__main__"))}


def _is_unittest_main(node: ast.stmt, main_names: set[str]) -> bool:
    """`unittest.main()`, or `main()` imported from unittest: in the sandbox it finds no tests and exits."""
    call = node.value if isinstance(node, ast.Expr) else None
    if not isinstance(call, ast.Call):
        return False
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in main_names
    return (isinstance(func, ast.Attribute) and func.attr == "main" and isinstance(func.value, ast.Name)
            and func.value.id == "unittest")


def _run_main_block(tree: ast.Module) -> bool:
    """The body of `if __name__ == "__main__":` at module level runs in place, without `unittest.main()`."""
    body, changed = [], False
    for statement in tree.body:
        if _is_main_guard(statement):
            body += statement.body
            changed = True
        else:
            body.append(statement)
    main_names = {a.asname or a.name for s in body if isinstance(s, ast.ImportFrom) and s.module == "unittest"
                  for a in s.names if a.name == "main"}
    kept = [s for s in body if not _is_unittest_main(s, main_names)]
    tree.body[:] = kept or [ast.Pass()]
    return changed or len(kept) != len(body)


def _refuse_imports_the_sandbox_lacks(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise UnusableTests(f"test code has a relative import (line {node.lineno})")
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top != "__future__":
                raise UnusableTests(f"test code imports {top}, which the sandbox does not have (standard library "
                                    f"only), so every program would fail")


def _insert_after_future_imports(tree: ast.Module, statements: list[ast.stmt]) -> None:
    at = 0
    for index, node in enumerate(tree.body):
        docstring = index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
            and isinstance(node.value.value, str)
        if docstring or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            at = index + 1
        else:
            break
    tree.body[at:at] = statements
    ast.fix_missing_locations(tree)


def _calls_to_append(tree: ast.Module, entry_point: str | None, classes: list[ast.ClassDef]) -> list[str]:
    """Lines that run the check function, the pytest-style functions and the unittest classes, in source order."""
    already = reach_of_asserts(tree).functions_run
    runs: list[tuple[int, list[str]]] = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name in already:
            continue
        if node.name == "check" and entry_point:
            runs.append((node.lineno, [f"check({entry_point})"]))
        elif node.name.startswith("test_"):
            arguments = node.args
            if len(arguments.posonlyargs + arguments.args) > len(arguments.defaults) or \
                    any(d is None for d in arguments.kw_defaults):
                raise UnusableTests(f"{node.name}() takes arguments (pytest fixtures or parametrize are not "
                                    f"supported), so nothing can call it")
            runs.append((node.lineno, [f"{node.name}()"]))
    for node in classes:
        methods = methods_to_run(node, classes)
        if methods:
            lines = [f"{node.name}.setUpClass()"]
            for name in methods:
                lines += [f"_adaptcot_case = {node.name}({name!r})", f"{node.name}.setUp(_adaptcot_case)",
                          f"{node.name}.{name}(_adaptcot_case)", f"{node.name}.tearDown(_adaptcot_case)"]
            runs.append((node.lineno, lines + [f"{node.name}.tearDownClass()"]))
    return [line for _, lines in sorted(runs, key=lambda run: run[0]) for line in lines]


def _refuse_unless_an_assert_runs(code: str) -> None:
    tree = ast.parse(code)
    reach = reach_of_asserts(tree)
    if reach.must_run or reach.may_run:
        return
    if not reach.unreachable:
        unconverted = any(isinstance(n, ast.Attribute) and n.attr.startswith("assert") for n in ast.walk(tree))
        raise UnusableTests("test code has no assert" + (" (its .assert* calls are not in a unittest.TestCase class)"
                                                         if unconverted else ""))
    raise UnusableTests(f"no assert can run: the {reach.unreachable} assert(s) are in functions or methods that "
                        f"nothing calls, so every program would pass")
