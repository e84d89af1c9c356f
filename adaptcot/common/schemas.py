"""The Arrow schemas of every table adaptcot reads or writes, in one place.

Each table is a `pyarrow.Schema` whose metadata carries `adaptcot.table` and `adaptcot.schema_version`; Parquet
files written with these schemas keep that metadata, so a reader can tell which table and version a file holds.
`docs/data_model.md` documents every column; a test keeps the two in step.

Stages import the schema they produce, state the columns they read with `require_columns`, and check row
conservation with `require_same_rows` (a lost or duplicated row is a bug, never a silent outcome).
"""

from __future__ import annotations

import json
from enum import Enum

import pyarrow as pa

# 2: teacher_cots verdict and drop columns, samples, sft_records.cot_id; 3: pool.category; 4: attempts.answer_rule,
# step_scores.steps_scored and steps_total (older files read with those columns null)
SCHEMA_VERSION = 4


def _tagged(name: str, fields: list[pa.Field]) -> pa.Schema:
    meta = {b"adaptcot.table": name.encode(), b"adaptcot.schema_version": str(SCHEMA_VERSION).encode()}
    return pa.schema(fields, metadata=meta)


# --- Difficulty levels -------------------------------------------------------------------------------------------
# The seeds number levels inconsistently (one passage: 1 = hardest; the curriculum prior: level 1 has most samples),
# so a level is always stored by name, with `difficulty_rank` (0 = easiest) beside it, never as a bare integer.
class Level(str, Enum):
    EASY = "easy"              # the student answered correctly
    WRONG_NEAR = "wrong_near"  # wrong; PRM score in the highest band (reasoning mostly sound)
    WRONG_MILD = "wrong_mild"
    WRONG_MID = "wrong_mid"
    WRONG_HARD = "wrong_hard"
    WRONG_HARDEST = "wrong_hardest"  # wrong; PRM score in the lowest band (the paper's "level 1, hardest")

    @property
    def rank(self) -> int:
        return LEVELS_EASIEST_FIRST.index(self)


LEVELS_EASIEST_FIRST: tuple[Level, ...] = tuple(Level)


# --- Code tests -------------------------------------------------------------------------------------------------
# One form covers the three kinds real datasets use (docs/pool_format.md):
#   stdin_stdout: cases[i].input is fed on stdin, cases[i].output is the expected stdout.
#   call:         fn_name is called with json.loads(cases[i].input) as positional args (a JSON array);
#                 json.loads(cases[i].output) is the expected return value.
#   assert:       test_code runs after the solution in the same namespace; the program passes iff it raises
#                 nothing. entry_point names the function under test.
TEST_KINDS = ("stdin_stdout", "call", "assert")
TEST_CASE = pa.struct([pa.field("input", pa.string()), pa.field("output", pa.string())])
CODE_TESTS = pa.struct([
    pa.field("kind", pa.string(), nullable=False),
    pa.field("cases", pa.list_(TEST_CASE)),
    pa.field("fn_name", pa.string()),
    pa.field("test_code", pa.string()),
    pa.field("entry_point", pa.string()),
])


# Code tests travel through the answering stages as JSON text (`tests_json`), not as CODE_TESTS: a struct column that
# is all null in a math-only block does not unify with the struct of a code block downstream (Ray Data blocks).
def tests_to_json(tests: dict | None) -> str | None:
    return None if tests is None else json.dumps(tests)


def tests_from_json(text: str | None) -> dict | None:
    return None if text is None else json.loads(text)


def with_tests_json(table: pa.Table) -> pa.Table:
    """`table` with its `tests` column replaced by `tests_json` (see `tests_to_json`)."""
    if "tests" not in table.column_names:
        return table
    text = [tests_to_json(t) for t in table["tests"].to_pylist()]
    return table.drop_columns(["tests"]).append_column("tests_json", pa.array(text, pa.string()))

# --- Question pool ----------------------------------------------------------------------------------------------
POOL = _tagged("pool", [
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("reference_answer", pa.string()),
    pa.field("reference_solution", pa.string()),
    pa.field("tests", CODE_TESTS),
    pa.field("starter_code", pa.string()),
    # A label the source gives a question, carried along for per-category metrics (e.g. LiveCodeBench's difficulty
    # easy/medium/hard). Pools written before version 3 lack the column: read with POOL, it is null.
    pa.field("category", pa.string()),
    pa.field("source", pa.string(), nullable=False),
    pa.field("source_row", pa.int64(), nullable=False),
])

REJECT_REASONS = (
    "malformed_row",     # not parseable as a record (bad JSON line, wrong CSV field count)
    "invalid_utf8",      # a text field is not valid UTF-8
    "missing_question",  # no question text after normalisation
    "missing_answer",    # math question without a usable reference answer
    "bad_tests",         # code question without parseable tests
    "too_long",          # question text longer than the configured limit
    "near_duplicate",    # a valid question left out at import: near duplicate of a kept one (named in `detail`)
)
REJECTS = _tagged("rejects", [
    pa.field("source", pa.string(), nullable=False),
    pa.field("source_row", pa.int64(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string()),
    pa.field("raw", pa.string()),  # the row as text (invalid bytes escaped), cut to a few KB
])

# --- Student attempts, PRM step scores, the question bank -------------------------------------------------------
ATTEMPTS = _tagged("attempts", [
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("student", pa.string(), nullable=False),
    pa.field("sample_index", pa.int32(), nullable=False),
    pa.field("response", pa.string()),
    pa.field("num_tokens", pa.int32()),
    pa.field("finish_reason", pa.string()),
    pa.field("verdict", pa.string()),        # passed / wrong_answer / ... / error
    pa.field("correct", pa.bool_()),         # null when the verdict could not be decided
    pa.field("verify_detail", pa.string()),
    # Which rule read the math answer: boxed / marker / bare_line / last_expression (verify/math_answers.py); null
    # when none did, for code, and in attempts written before version 4.
    pa.field("answer_rule", pa.string()),
    pa.field("error", pa.string()),
])

STEP_SCORES = _tagged("step_scores", [
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("student", pa.string(), nullable=False),
    pa.field("sample_index", pa.int32(), nullable=False),
    pa.field("prm", pa.string(), nullable=False),
    pa.field("step_scores", pa.list_(pa.float32())),
    pa.field("prm_score", pa.float32()),     # the step scores aggregated by the grader's rule
    pa.field("prm_error", pa.string()),      # why a wrong answer has no score (e.g. the PRM's step count differs)
    pa.field("steps_scored", pa.int32()),    # the first steps scored (a long answer is cut to fit the PRM)
    pa.field("steps_total", pa.int32()),     # the steps of the whole response
])

BANK = _tagged("bank", [
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("student", pa.string(), nullable=False),
    pa.field("grader_id", pa.string(), nullable=False),  # hash of the grader config
    pa.field("level", pa.string(), nullable=False),      # a Level name
    pa.field("difficulty_rank", pa.int8(), nullable=False),  # Level.rank: 0 = easy ... 5 = wrong_hardest
    pa.field("pass_rate", pa.float32()),
    pa.field("num_samples", pa.int32()),
    pa.field("prm_score", pa.float32()),
    pa.field("attempts_ref", pa.string()),   # where the attempts of this (question, student) are stored
])

# --- Samples, teacher CoTs and SFT records ------------------------------------------------------------------------
SAMPLES = _tagged("samples", [  # questions drawn from one student's bank by a difficulty distribution
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("student", pa.string(), nullable=False),
    pa.field("grader_id", pa.string(), nullable=False),
    pa.field("level", pa.string(), nullable=False),
    pa.field("difficulty_rank", pa.int8(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("reference_answer", pa.string()),
    pa.field("tests", CODE_TESTS),
    pa.field("starter_code", pa.string()),
])

TEACHER_COTS = _tagged("teacher_cots", [
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("teacher", pa.string(), nullable=False),
    pa.field("sampling_key", pa.string(), nullable=False),  # hash of the sampling params
    pa.field("sample_index", pa.int32(), nullable=False),
    pa.field("level", pa.string()),
    pa.field("reasoning", pa.string()),
    pa.field("answer_text", pa.string()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("completion_tokens", pa.int32()),
    pa.field("finish_reason", pa.string()),
    pa.field("cost_usd", pa.float64()),
    pa.field("error", pa.string()),          # the request failed after its retries (nothing to keep)
    pa.field("verdict", pa.string()),
    pa.field("correct", pa.bool_()),
    pa.field("verify_detail", pa.string()),
    pa.field("drop_reason", pa.string()),    # null: kept for SFT; else one of DROP_REASONS
])
# not_joint: kept by its own filter, but another teacher of a trace-style comparison kept no CoT for the question
DROP_REASONS = ("error", "truncated", "too_long", "bad_format", "wrong_answer", "undecided", "not_joint")

CHAT_MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
SFT_RECORD_KINDS = ("cot", "cascod_rationale", "cascod_answer")
SFT_RECORDS = _tagged("sft_records", [
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # one of SFT_RECORD_KINDS
    # The teacher CoT the record was made from: a CasCoD rationale record and its answer record share it.
    pa.field("cot_id", pa.string()),
    pa.field("messages", pa.list_(CHAT_MESSAGE), nullable=False),
    pa.field("level", pa.string()),
    pa.field("teacher", pa.string()),
])

ALL_TABLES: dict[str, pa.Schema] = {
    "pool": POOL, "rejects": REJECTS, "attempts": ATTEMPTS, "step_scores": STEP_SCORES, "bank": BANK,
    "samples": SAMPLES, "teacher_cots": TEACHER_COTS, "sft_records": SFT_RECORDS,
}


class SchemaError(ValueError):
    """A table does not have the columns or rows a stage needs."""


def require_columns(table: pa.Table | pa.Schema, columns: list[str] | tuple[str, ...], stage: str) -> None:
    names = set(table.schema.names if isinstance(table, pa.Table) else table.names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise SchemaError(f"{stage}: input lacks column(s) {missing}; it has {sorted(names)}")


def require_same_rows(before: pa.Table, after: pa.Table, key: str, stage: str) -> None:
    """Every key that went in comes out exactly once."""
    before_keys, after_keys = before.column(key).to_pylist(), after.column(key).to_pylist()
    if len(after_keys) != len(set(after_keys)):
        raise SchemaError(f"{stage}: duplicated rows in output (column {key})")
    if set(before_keys) != set(after_keys):
        lost = len(set(before_keys) - set(after_keys))
        extra = len(set(after_keys) - set(before_keys))
        raise SchemaError(f"{stage}: {lost} row(s) lost and {extra} unexpected row(s) (column {key})")


def schema_of(path_or_schema) -> tuple[str | None, int | None]:
    """(table name, schema version) recorded in a schema's metadata, or (None, None)."""
    meta = (path_or_schema.metadata or {}) if isinstance(path_or_schema, pa.Schema) else {}
    name = meta.get(b"adaptcot.table")
    version = meta.get(b"adaptcot.schema_version")
    return (name.decode() if name else None, int(version) if version else None)
