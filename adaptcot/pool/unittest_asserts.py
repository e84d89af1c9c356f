"""unittest's `self.assert*` calls as plain `assert` statements (used by `assert_styles.py` at import).

Each supported method becomes the assert it stands for, its `msg` kept as the assert's message; a method with no
entry here makes the row unusable, named in the message, rather than passing silently. `assertRaises` and
`assertCountEqual` need a few lines of help inside the sandbox: `HELPERS` holds their source, added to the test
code when used.
"""

from __future__ import annotations

import ast


class UnusableTests(ValueError):
    """Test code that every program would pass, or every program would fail."""


# method: (parameters in unittest's order, builder of the assert's test from the bound arguments)
_COMPARE = {"assertEqual": ast.Eq, "assertEquals": ast.Eq, "assertListEqual": ast.Eq, "assertDictEqual": ast.Eq,
            "assertTupleEqual": ast.Eq, "assertSetEqual": ast.Eq, "assertSequenceEqual": ast.Eq,
            "assertMultiLineEqual": ast.Eq, "assertNotEqual": ast.NotEq, "assertNotEquals": ast.NotEq,
            "assertIn": ast.In, "assertNotIn": ast.NotIn, "assertIs": ast.Is, "assertIsNot": ast.IsNot,
            "assertGreater": ast.Gt, "assertGreaterEqual": ast.GtE, "assertLess": ast.Lt, "assertLessEqual": ast.LtE}


def _compare(left: ast.expr, operator: type, right: ast.expr) -> ast.expr:
    return ast.Compare(left, [operator()], [right])


def _call(name: str, *args: ast.expr) -> ast.expr:
    return ast.Call(ast.Name(name, ast.Load()), list(args), [])


def _not(value: ast.expr) -> ast.expr:
    return ast.UnaryOp(ast.Not(), value)


_ALMOST = ("first", "second", "places", "msg", "delta")


def _almost_equal(a: dict, negate: bool) -> ast.expr:
    difference = ast.BinOp(a["first"], ast.Sub(), a["second"])
    if "delta" in a:
        return _compare(_call("abs", difference), ast.Gt if negate else ast.LtE, a["delta"])
    places = a.get("places", ast.Constant(7))
    return _compare(_call("round", difference, places), ast.NotEq if negate else ast.Eq, ast.Constant(0))


_METHODS = {
    **{name: (("first", "second", "msg"), lambda a, op=op: _compare(a["first"], op, a["second"]))
       for name, op in _COMPARE.items()},
    "assertTrue": (("expr", "msg"), lambda a: a["expr"]),
    "assertFalse": (("expr", "msg"), lambda a: _not(a["expr"])),
    "assertIsNone": (("obj", "msg"), lambda a: _compare(a["obj"], ast.Is, ast.Constant(None))),
    "assertIsNotNone": (("obj", "msg"), lambda a: _compare(a["obj"], ast.IsNot, ast.Constant(None))),
    "assertIsInstance": (("obj", "cls", "msg"), lambda a: _call("isinstance", a["obj"], a["cls"])),
    "assertNotIsInstance": (("obj", "cls", "msg"), lambda a: _not(_call("isinstance", a["obj"], a["cls"]))),
    "assertAlmostEqual": (_ALMOST, lambda a: _almost_equal(a, negate=False)),
    "assertAlmostEquals": (_ALMOST, lambda a: _almost_equal(a, negate=False)),
    "assertNotAlmostEqual": (_ALMOST, lambda a: _almost_equal(a, negate=True)),
    "assertCountEqual": (("first", "second", "msg"),
                         lambda a: _call("_adaptcot_same_items", a["first"], a["second"])),
    "fail": (("msg",), lambda a: ast.Constant(False)),
}
_OPTIONAL = {"msg", "places", "delta"}  # parameters that may be left out
_NEEDS_HELPER = {"assertCountEqual": "_adaptcot_same_items"}

HELPERS = {
    "_AdaptcotRaises": '''
class _AdaptcotRaises:
    """unittest's assertRaises, added by adaptcot's import: did the block raise the expected exception?"""

    def __init__(self, expected):
        self.expected, self.raised, self.exception = expected, False, None

    def __enter__(self):
        return self

    def __exit__(self, kind, exception, traceback):
        self.raised = kind is not None and issubclass(kind, self.expected)
        self.exception = exception
        return self.raised
''',
    "_adaptcot_same_items": '''
def _adaptcot_same_items(first, second):
    """unittest's assertCountEqual, added by adaptcot's import: the same items as often, in any order."""
    first, rest = list(first), list(second)
    for item in first:
        index = next((i for i, other in enumerate(rest) if other == item), None)
        if index is None:
            return False
        del rest[index]
    return not rest
'''}


def _bind(call: ast.Call, method: str, names: tuple[str, ...]) -> dict[str, ast.expr]:
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise UnusableTests(f"self.{method} is called with *args or **kwargs, which cannot be converted")
    if len(call.args) > len(names):
        raise UnusableTests(f"self.{method} is called with more arguments than it takes")
    bound = dict(zip(names, call.args))
    for keyword in call.keywords:
        if keyword.arg not in names or keyword.arg in bound:
            raise UnusableTests(f"self.{method} is called with an unexpected argument {keyword.arg!r}")
        bound[keyword.arg] = keyword.value
    missing = [name for name in names if name not in bound and name not in _OPTIONAL]
    if missing:
        raise UnusableTests(f"self.{method} is called without {', '.join(missing)}")
    return bound


class UnittestToAsserts(ast.NodeTransformer):
    """Rewrites one method of a TestCase class in place; `helpers` names the HELPERS it now uses."""

    def __init__(self, method: ast.FunctionDef | ast.AsyncFunctionDef, own_methods: set[str]):
        self.own_methods = own_methods  # the class's own `assertValid`-style helpers stay calls
        arguments = method.args.posonlyargs + method.args.args
        self.self_name = arguments[0].arg if arguments else "self"
        self.helpers: set[str] = set()
        self.changed = False
        self._raises_count = 0

    def _method(self, node: ast.AST) -> str | None:
        """"assertEqual" for `self.assertEqual(...)`; None for anything else."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == self.self_name:
            name = node.func.attr
            return name if (name.startswith("assert") or name == "fail") and name not in self.own_methods else None
        return None

    def visit_Expr(self, node: ast.Expr):
        method = self._method(node.value)
        if method is None:
            return self.generic_visit(node)
        self.changed = True
        if method == "assertRaises":
            return self._raises_call(node)
        if method not in _METHODS:
            raise UnusableTests(f"test code uses self.{method}, which adaptcot cannot convert to an assert")
        parameters, build = _METHODS[method]
        bound = _bind(node.value, method, parameters)
        if method in _NEEDS_HELPER:
            self.helpers.add(_NEEDS_HELPER[method])
        return ast.copy_location(ast.Assert(build(bound), bound.get("msg")), node)

    def visit_Call(self, node: ast.Call):
        method = self._method(node)
        if method is not None:
            raise UnusableTests(f"test code uses self.{method} inside an expression, which cannot be converted")
        return self.generic_visit(node)

    def visit_With(self, node: ast.With):
        items, after = [], []
        for item in node.items:
            call, method = item.context_expr, self._method(item.context_expr)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "subTest" \
                    and isinstance(call.func.value, ast.Name) and call.func.value.id == self.self_name:
                self.changed = True  # subTest only labels failures: its body runs as plain code
                continue
            if method == "assertRaises":
                if len(call.args) != 1 or any(k.arg != "msg" for k in call.keywords):
                    raise UnusableTests("self.assertRaises as a context manager takes exactly one exception")
                item, check = self._raises(call.args[0], item.optional_vars, call.keywords, node)
                after.append(check)
            elif method is not None:
                raise UnusableTests(f"test code uses self.{method}, which adaptcot cannot convert to an assert")
            items.append(item)
        node.items = items
        node = self.generic_visit(node)
        return [*node.body, *after] if not items else [node, *after]

    visit_AsyncWith = visit_With

    def _raises(self, exception: ast.expr, target: ast.expr | None, keywords: list[ast.keyword],
                at: ast.AST) -> tuple[ast.withitem, ast.stmt]:
        """`with _AdaptcotRaises(exception) as target:` and the `assert target.raised` that goes after the block."""
        self.changed = True
        self.helpers.add("_AdaptcotRaises")
        if target is None:
            self._raises_count += 1
            target = ast.Name(f"_adaptcot_raised_{self._raises_count}", ast.Store())
        elif not isinstance(target, ast.Name):
            raise UnusableTests("self.assertRaises(...) as something other than a name cannot be converted")
        message = next((k.value for k in keywords if k.arg == "msg"), None)
        item = ast.withitem(ast.copy_location(_call("_AdaptcotRaises", exception), at), target)
        check = ast.Assert(ast.Attribute(ast.Name(target.id, ast.Load()), "raised", ast.Load()), message)
        return item, ast.copy_location(check, at)

    def _raises_call(self, node: ast.Expr) -> list[ast.stmt]:
        """`self.assertRaises(E, f, *args, **kwargs)`: f(*args, **kwargs) inside the context-manager form."""
        call = node.value
        if len(call.args) < 2 or isinstance(call.args[0], ast.Starred):
            raise UnusableTests("self.assertRaises without a function to call or a with block checks nothing")
        item, check = self._raises(call.args[0], None, [], node)
        body = ast.copy_location(ast.Expr(ast.Call(call.args[1], call.args[2:], call.keywords)), node)
        return [ast.copy_location(ast.With([item], [body]), node), check]


def unittest_classes(tree: ast.Module) -> list[ast.ClassDef]:
    """Module-level classes deriving from unittest.TestCase, directly or through a class defined before them."""
    found: list[ast.ClassDef] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(_is_test_case(base, {c.name for c in found}) for base in node.bases):
            found.append(node)
    return found


def _is_test_case(base: ast.expr, known: set[str]) -> bool:
    if isinstance(base, ast.Attribute):
        return base.attr == "TestCase"  # unittest.TestCase, or under an alias (`import unittest as ut`)
    return isinstance(base, ast.Name) and (base.id == "TestCase" or base.id in known)


def defined_methods(node: ast.ClassDef, classes: list[ast.ClassDef]) -> set[str]:
    """Names of the methods the class and its in-file TestCase bases define."""
    by_name = {c.name: c for c in classes}
    names = {s.name for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in by_name and by_name[base.id] is not node:
            names |= defined_methods(by_name[base.id], classes)
    return names


def methods_to_run(node: ast.ClassDef, classes: list[ast.ClassDef]) -> list[str]:
    """Its `test*` methods as unittest finds them (inherited ones from in-file TestCase classes first)."""
    by_name = {c.name: c for c in classes}
    names: list[str] = []
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in by_name and by_name[base.id] is not node:
            names += [n for n in methods_to_run(by_name[base.id], classes) if n not in names]
    own = [s.name for s in node.body if isinstance(s, ast.FunctionDef) and s.name.startswith("test")]
    own = list(dict.fromkeys(own))  # a method defined twice runs once, as its last definition
    return [n for n in names if n not in own] + own
