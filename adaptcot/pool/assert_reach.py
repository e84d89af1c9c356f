"""Which asserts of a test file can run, and which must: a static reading of the code with `ast`.

The import refuses test code in which no assert can run (`assert_styles.py`); the verifier requires every assert
that must run to report at least once (`verify/code_answers.py::rewrite_asserts`). Both read the same answer:

- Module-level code runs. A function or method runs when running code calls it: `f(...)` for a module-level
  `def f`, `C.m(...)` for a method of a module-level class `C` (its in-file bases searched too), `self.m(...)`
  inside a method of `C`, `C(...)` (its `__init__`).
- An assert *must run* when every step on the way to it is straight-line code or a loop body (a loop that runs zero
  times is itself a failure: it hides the asserts of a program that returned nothing to loop over), in a function
  called from such code. Branches of `if`, `try`, `with` and `match`, a loop's `else`, calls inside conditional
  expressions, `and`/`or`, comprehensions and lambdas only *may run*; so does a function defined inside another.

Not covered: calls through a variable or an argument (`fn = check; fn(f)`, `run(test_a)`), or through `getattr`;
their asserts count as unreachable. A module-level `def` defined twice is read as its last definition.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
_BRANCHES = (ast.If, ast.Try, ast.With, ast.AsyncWith, ast.Match) + ((ast.TryStar,) if hasattr(ast, "TryStar") else ())
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
_MAYBE_EXPRESSIONS = (ast.IfExp, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass(frozen=True)
class AssertReach:
    must_run: frozenset[ast.Assert]  # the nodes of the tree given (compared by identity)
    may_run: frozenset[ast.Assert]   # reachable, but only through a branch
    unreachable: int                 # asserts in code that nothing calls
    functions_run: frozenset[str]    # module-level functions that must or may run


def reach_of_asserts(tree: ast.Module) -> AssertReach:
    reader = _ReachReader(tree)
    reader.walk_block(tree.body, must=True, owner=None)
    while reader.pending:
        function, must, owner = reader.pending.pop()
        reader.walk_block(function.body, must, owner)
    total = sum(isinstance(node, ast.Assert) for node in ast.walk(tree))
    may = reader.may_run - reader.must_run
    run = frozenset(name for name, node in reader.functions.items() if node in reader.walked)
    return AssertReach(frozenset(reader.must_run), frozenset(may), total - len(reader.must_run) - len(may), run)


class _ReachReader:
    def __init__(self, tree: ast.Module):
        self.functions = {n.name: n for n in tree.body if isinstance(n, _FunctionNode)}
        self.classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        self.must_run: set[ast.Assert] = set()
        self.may_run: set[ast.Assert] = set()
        self.walked: dict[_FunctionNode, bool] = {}  # function -> walked as must-run
        self.pending: list[tuple[_FunctionNode, bool, str | None]] = []

    def walk_block(self, statements: list[ast.stmt], must: bool, owner: str | None) -> None:
        """owner: the class whose method this is (for `self.m()`)."""
        for statement in statements:
            self.walk_statement(statement, must, owner)

    def walk_statement(self, node: ast.stmt, must: bool, owner: str | None) -> None:
        if isinstance(node, _FunctionNode):
            for expression in node.args.defaults + node.args.kw_defaults + node.decorator_list:
                if expression is not None:
                    self.walk_expression(expression, must, owner)
            if self.functions.get(node.name) is not node:
                self.walk_block(node.body, False, owner)  # defined inside a function or a branch: may be called
            return
        if isinstance(node, ast.ClassDef):
            for statement in node.body:  # a class body runs when the class is defined; its methods do not
                if not isinstance(statement, _FunctionNode):
                    self.walk_statement(statement, must, node.name)
            return
        if isinstance(node, ast.Assert):
            (self.must_run if must else self.may_run).add(node)
        if isinstance(node, _LOOPS):
            self.walk_expression(node.test if isinstance(node, ast.While) else node.iter, must, owner)
            self.walk_block(node.body, must, owner)
            self.walk_block(node.orelse, False, owner)
            return
        if isinstance(node, _BRANCHES):
            heads = [node.test] if isinstance(node, ast.If) else [node.subject] if isinstance(node, ast.Match) \
                else [item.context_expr for item in getattr(node, "items", [])]
            for head in heads:
                self.walk_expression(head, must, owner)
            for child in ast.iter_child_nodes(node):  # body, else, handlers, finally, cases
                if isinstance(child, ast.stmt):
                    self.walk_statement(child, False, owner)
                elif isinstance(child, (ast.ExceptHandler, ast.match_case)):
                    self.walk_block(child.body, False, owner)
            return
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.walk_expression(child, must, owner)

    def walk_expression(self, node: ast.expr, must: bool, owner: str | None) -> None:
        if isinstance(node, ast.Call):
            for function, method_owner in self.resolve(node.func, owner):
                self.call(function, must, method_owner)
        if isinstance(node, ast.BoolOp):  # `a and f()`: only the first operand always runs
            self.walk_expression(node.values[0], must, owner)
            for value in node.values[1:]:
                self.walk_expression(value, False, owner)
            return
        if isinstance(node, _MAYBE_EXPRESSIONS):
            must = False
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.walk_expression(child, must, owner)
            elif isinstance(child, ast.comprehension):
                for part in (child.iter, child.target, *child.ifs):
                    self.walk_expression(part, False, owner)

    def resolve(self, func: ast.expr, owner: str | None) -> list[tuple[_FunctionNode, str | None]]:
        """The in-file functions a call expression runs, each with the class it is a method of."""
        if isinstance(func, ast.Name):
            if func.id in self.functions:
                return [(self.functions[func.id], None)]
            if func.id in self.classes:
                return self.method(func.id, "__init__")
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.value.id in self.classes:
                return self.method(func.value.id, func.attr)
            if func.value.id in ("self", "cls") and owner in self.classes:
                return self.method(owner, func.attr)
        return []

    def method(self, class_name: str, name: str, seen: frozenset = frozenset()) -> list:
        if class_name in seen or class_name not in self.classes:
            return []
        node = self.classes[class_name]
        found = [s for s in node.body if isinstance(s, _FunctionNode) and s.name == name]
        if found:
            return [(found[-1], class_name)]
        for base in node.bases:
            if isinstance(base, ast.Name):
                inherited = self.method(base.id, name, seen | {class_name})
                if inherited:
                    return [(inherited[0][0], class_name)]  # `self.m()` inside it still means this class
        return []

    def call(self, function: _FunctionNode, must: bool, owner: str | None) -> None:
        if function in self.walked and (self.walked[function] or not must):
            return
        self.walked[function] = must
        self.pending.append((function, must, owner))
