"""What a program's answer is, and whether it matches: the pure half of code verification (`code_tests.py` runs the
programs).

- `extract_code`: the program in a response's answer (after `</think>`, or gpt-oss's final channel; fenced python
  blocks, which one is `choice`), optionally the whole answer when it compiles.
- `outputs_match`: stdout against the expected text, token by token (whitespace-tolerant like the usual judges'
  `wcmp`), floats within a tolerance if one is set.
- `decode_value` / `values_equal`: a call's return value, sent back from the sandbox as plain data tagged with its
  exact type, compared by value and type (a tuple equals a JSON list, `True` does not equal `1`).
- `rewrite_asserts`: assert tests rewritten so that their expected literals stay out of the sandbox
  (`assert f(x) == <literal>` becomes "report f(x)"); the plan says what each report is compared with, and which
  asserts must report (those that must run, `pool/assert_reach.py`: a loop that runs zero times is a failure).
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

from adaptcot.common.reasoning import split_reply
from adaptcot.pool.assert_reach import reach_of_asserts

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}


# --- Code extraction ----------------------------------------------------------------------------------------------
def extract_code(response: str | None, choice: str = "last", whole_response_fallback: bool = False) -> str | None:
    """The program in a response: fenced python (or untagged) blocks after the reasoning; None if there is none."""
    if not response:
        return None
    reply = split_reply(response)  # after </think>, or gpt-oss's final channel
    if reply.cut_off:
        return None  # the reasoning was cut off before an answer
    response = reply.answer
    blocks = [body for tag, body in _FENCE.findall(response) if tag.lower() in _PYTHON_TAGS and body.strip()]
    if not blocks:
        if whole_response_fallback and _compiles(response):
            return response
        return None
    if choice == "all":
        return "\n\n".join(blocks)
    return {"first": blocks[0], "last": blocks[-1], "longest": max(blocks, key=len)}[choice]


def _compiles(text: str) -> bool:
    try:
        compile(text, "response", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


# --- Comparison ---------------------------------------------------------------------------------------------------
def outputs_match(actual: str, expected: str, float_tolerance: float | None = None) -> tuple[bool, str]:
    """Token-wise stdout comparison; (equal, where they first differ)."""
    got, want = actual.split(), expected.split()
    for index, (g, w) in enumerate(zip(got, want)):
        if g != w and not _floats_close(g, w, float_tolerance):
            return False, f"token {index + 1}: expected {w[:80]!r}, got {g[:80]!r}"
    if len(got) != len(want):
        return False, f"expected {len(want)} tokens, got {len(got)}"
    return True, ""


def _floats_close(a: Any, b: Any, tolerance: float | None) -> bool:
    if tolerance is None:
        return False
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance) or (math.isnan(x) and math.isnan(y))


def decode_value(tagged: list) -> Any:
    """The runner's tagged plain data back into Python values."""
    tag = tagged[0]
    if tag == "not_plain":
        raise TypeError(tagged[1])
    if tag == "none":
        return None
    if tag in ("bool", "str"):
        return tagged[1]
    if tag == "int":
        return int(tagged[1])
    if tag == "float":
        return float(tagged[1])
    if tag == "complex":
        return complex(float(tagged[1]), float(tagged[2]))
    if tag == "bytes":
        return bytes.fromhex(tagged[1])
    if tag == "dict":
        return {_hashable(decode_value(k)): decode_value(v) for k, v in tagged[1]}
    items = [decode_value(v) for v in tagged[1]]
    return {"list": list, "tuple": tuple, "set": lambda x: set(map(_hashable, x)),
            "frozenset": lambda x: frozenset(map(_hashable, x))}[tag](items)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def values_equal(actual: Any, expected: Any, float_tolerance: float | None = None, json_expected: bool = False) -> bool:
    """Equality of plain data with types respected: bool is not int, str is not a number.

    json_expected: the expected value came from JSON, which has no tuples, so a tuple may match a list.
    """
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        return actual == expected or _floats_close(actual, expected, float_tolerance)
    if json_expected and isinstance(actual, tuple):
        actual = list(actual)
    if isinstance(actual, (list, tuple)) and type(actual) is type(expected):
        return len(actual) == len(expected) and all(
            values_equal(a, e, float_tolerance, json_expected) for a, e in zip(actual, expected))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            values_equal(actual[k], expected[k], float_tolerance, json_expected) for k in actual)
    return type(actual) is type(expected) and actual == expected


# --- Assert tests, rewritten so that expected values stay outside ---------------------------------------------------
@dataclass(frozen=True)
class AssertPlan:
    code: str  # the test code as sent to the sandbox
    expected: dict[int, Any]  # site -> literal expected value (never sent)
    required: frozenset[int]  # sites that must report at least once: straight-line or in a loop, at module level or
    #                           in a function that runs (pool/assert_reach.py); not in a branch, try or with block


class _AssertRewriter(ast.NodeTransformer):
    def __init__(self, entry_point: str | None, must_run: frozenset[ast.Assert]):
        self.entry_points = {"candidate"} | ({entry_point} if entry_point else set())
        self.must_run = must_run
        self.expected: dict[int, Any] = {}
        self.required: set[int] = set()
        self.sites = 0

    def visit_Call(self, node):
        node = self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in self.entry_points:
            return ast.Call(ast.Name("__adaptcot_result__", ast.Load()), [node], [])
        return node

    def visit_Assert(self, node):
        site, self.sites = self.sites, self.sites + 1
        if node in self.must_run:
            self.required.add(site)
        test = self.visit(node.test)
        call = lambda name, *args: ast.Expr(ast.Call(ast.Name(name, ast.Load()), [ast.Constant(site), *args], []))
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            left, right = test.left, test.comparators[0]
            for computed, literal in ((left, right), (right, left)):
                try:
                    self.expected[site] = ast.literal_eval(literal)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    continue
                return ast.copy_location(call("__adaptcot_value__", computed), node)
            return ast.copy_location(call("__adaptcot_pair__", left, right), node)
        return ast.copy_location(call("__adaptcot_truth__", test), node)


def rewrite_asserts(test_code: str, entry_point: str | None) -> AssertPlan:
    tree = ast.parse(test_code)
    rewriter = _AssertRewriter(entry_point, reach_of_asserts(tree).must_run)  # read before the rewrite changes it
    tree = ast.fix_missing_locations(rewriter.visit(tree))
    return AssertPlan(ast.unparse(tree), rewriter.expected, frozenset(rewriter.required))
