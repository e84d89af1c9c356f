"""Which teacher CoTs are kept for SFT: the result verifier (the same code as grading), length, format, a judge.

`filter_cots(cots, questions, config, math, code, judge)` takes teacher CoT rows (`schemas.TEACHER_COTS`) and the
sampled questions they answer (`schemas.SAMPLES` columns), and returns the same rows, in the same order, with
`verdict`, `correct`, `verify_detail` and `drop_reason` set. The first check that applies decides the drop reason:

1. `error`: the teacher request failed (`error` is set): nothing to verify;
2. `truncated`: `finish_reason == "length"` (if `drop_truncated`);
3. `too_long`: `completion_tokens > max_completion_tokens` (if set; a row without a token count is not dropped);
4. `bad_format` (if `require_format`): no answer the rules can read, verdict `no_answer`: for math, what
   `verify/math_answers.py` reads with `math_extraction` (`strict`: a `\\boxed{}`, an answer marker or a bare
   one-line answer; `math_verify`, the default: also the last expression of a CoT whose `finish_reason` is "stop");
   for code, no fenced python block (even when the code verifier's `whole_response_fallback` is on: SFT data
   should teach the fenced form);
5. verification of `answer_text` (the text after the reasoning): math by `MathVerifier`, code by `CodeVerifier`
   running the question's tests; then, for math rows whose verdict is in `judge.on`, the LLM judge;
   `wrong_answer` if `correct` is false, `undecided` if it is still null (verifier timeout or error, sandbox error,
   an unreadable judge reply).
Kept rows have `correct` true and `drop_reason` null. Rows dropped by checks 1-3 are not verified: their `verdict`
and `correct` are null and `verify_detail` says why. A verified math row's `verify_detail` ends with the rule that
read its answer ("answer rule: last_expression"), which `FilterReport` counts for the kept CoTs.

The judge is any `Callable[[list[str]], list[str | None]]` (prompts in, raw replies out, one per prompt, in order);
the caller wires it to an OpenAI-compatible endpoint. `parse_judgement` reads YES / NO from a reply.
`CoTFilterActor` is the Ray Data stage (`batch_format="pyarrow"`, question columns joined into the batch).

Not covered: the judge is asked about math only (a program is judged by its tests; a `sandbox_error` stays
undecided); no judge is asked when the reference answer is empty; the judge's own failures (HTTP errors, retries)
are the caller's client's business: an exception from it stops the batch; a `None` reply counts as unreadable.
No style or quality filter beyond length and answer format.
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from adaptcot.common.reasoning import split_reply
from adaptcot.common.runtime import collect_blocks, dataset_in_blocks
from adaptcot.common.schemas import DROP_REASONS, LEVELS_EASIEST_FIRST, TEACHER_COTS, SchemaError, require_columns
from adaptcot.common.settings import ActorPoolSize, Strict, pool_max
from adaptcot.teach.client import EndpointConfig, complete_all
from adaptcot.verify.attempts import code_verifier_on_this_node
from adaptcot.verify.code_answers import extract_code
from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyConfig
from adaptcot.verify.math_answers import ANSWER_RULES, Extraction, MathVerifier, is_finished

Judge = Callable[[list[str]], list[str | None]]
OUTPUT_COLUMNS = ("verdict", "correct", "verify_detail", "drop_reason")
INPUT_COLUMNS = tuple(name for name in TEACHER_COTS.names if name not in OUTPUT_COLUMNS)
QUESTION_COLUMNS = ("question_id", "domain", "question", "reference_answer", "tests")
ROW_KEY = ("question_id", "teacher", "sampling_key", "sample_index")  # one teacher CoT
JUDGEABLE = ("error", "timeout", "wrong_answer", "no_answer")  # math verdicts a judge may overrule
DEFAULT_JUDGE_PROMPT = (
    "Decide whether a final answer to a math problem is equivalent to the reference answer.\n\n"
    "Problem:\n{question}\n\nReference answer:\n{reference}\n\nAnswer to check:\n{answer}\n\n"
    "Compare only the final result, not the working. Answers are equivalent when they denote the same value, set "
    "or expression, whatever the notation (3/4 and 0.75; x = 2 and 2). End your reply with one word on its own "
    "line: YES if they are equivalent, NO if they are not."
)
_RULE_NOTE = "answer rule: "  # ends a verified math row's verify_detail; FilterReport reads it back
_JUDGEMENT = re.compile(  # a negative form first, so "not equivalent" is never read as "equivalent"
    r"(?P<no>(?:\bnot\s+|n['’]t\s+|\bnon-?|\bin)equivalent\b|\bno\b)|(?P<yes>\bequivalent\b|\byes\b)", re.IGNORECASE)


class JudgeConfig(Strict):
    # Verdicts sent to the judge. Default: only what the rules could not decide. Add "wrong_answer" when the judge
    # is trusted more than the rules (free-text answers); "no_answer" needs require_format: false.
    on: tuple[str, ...] = ("error", "timeout")
    prompt: str = DEFAULT_JUDGE_PROMPT  # fields {question}, {reference}, {answer}; literal braces as {{ }}
    max_answer_chars: int = Field(default=4000, ge=100)  # the answer's tail is sent: the final answer is last
    endpoint: EndpointConfig | None = None  # the judge model (any OpenAI-compatible endpoint); the job needs it
    max_tokens: int = Field(default=1024, ge=1)  # a thinking judge needs room before its verdict

    @field_validator("on")
    @classmethod
    def _known_verdicts(cls, on: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(on) - set(JUDGEABLE))
        if not on or unknown:
            raise ValueError(f"judge.on {list(on)}: expected some of {list(JUDGEABLE)}")
        return on

    @field_validator("prompt")
    @classmethod
    def _template_fields(cls, prompt: str) -> str:
        names = {name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None}
        if not {"reference", "answer"} <= names <= {"question", "reference", "answer"}:
            raise ValueError(f"judge.prompt has fields {sorted(names)}: it needs {{reference}} and {{answer}}, "
                             "may have {question}, and writes a literal brace as {{ or }}")
        prompt.format(question="q", reference="r", answer="a")  # "{answer!z}" and the like fail here
        return prompt


class FilterConfig(Strict):
    max_completion_tokens: int | None = Field(default=None, ge=1)
    drop_truncated: bool = True  # finish_reason == "length"
    require_format: bool = True  # math: an answer verify_math can read; code: a fenced python block
    judge: JudgeConfig | None = None
    verify_workers: int = Field(default=1, ge=1)  # math-verify processes
    verify_timeout_s: float = Field(default=5.0, gt=0)
    math_extraction: Extraction = "math_verify"  # which math answers are read (verify/math_answers.py)
    code: CodeVerifyConfig = CodeVerifyConfig()
    concurrency: ActorPoolSize = 1  # filter actors on Ray, or [min, max] to autoscale
    num_cpus: float = Field(default=0.25, gt=0)  # per actor: fractional, never starving upstream tasks

    @model_validator(mode="after")
    def _format_before_judge(self):
        if self.require_format and self.judge and "no_answer" in self.judge.on:
            raise ValueError("judge.on has no_answer, but with require_format those rows are dropped as bad_format "
                             "before the judge: set require_format: false, or take no_answer out of judge.on")
        return self


def parse_judgement(reply: str | None) -> bool | None:
    """YES / "equivalent" -> True, NO / "not equivalent" -> False, the last one after any reasoning; else None."""
    if not reply:
        return None
    parts = split_reply(reply)  # <think> tags or a gpt-oss judge's harmony channels
    if parts.cut_off:
        return None  # the judge's reasoning was cut off before its verdict
    matches = list(_JUDGEMENT.finditer(parts.answer))
    return None if not matches else matches[-1].group("yes") is not None


# --- One decision per row ------------------------------------------------------------------------------------------
@dataclass
class _Decision:
    verdict: str | None = None
    correct: bool | None = None
    detail: str | None = None
    drop: str | None = None


def _precheck(row: dict, config: FilterConfig) -> _Decision:
    """Checks 1-3, and code's format check (no program: nothing to run); a decision with `drop` unset goes on."""
    if row["error"] is not None:
        return _Decision(detail=f"not verified: the request failed ({_short(row['error'])})", drop="error")
    if config.drop_truncated and row["finish_reason"] == "length":
        return _Decision(detail="not verified: finish_reason 'length' (the CoT was cut off)", drop="truncated")
    tokens, limit = row["completion_tokens"], config.max_completion_tokens
    if limit is not None and tokens is not None and tokens > limit:
        return _Decision(detail=f"not verified: {tokens} completion tokens > {limit}", drop="too_long")
    if row["domain"] == "code" and config.require_format and extract_code(row["answer_text"],
                                                                          config.code.extract) is None:
        return _Decision("no_answer", False, "no fenced python block in the answer", drop="bad_format")
    return _Decision()


def _final_drop(decision: _Decision, require_format: bool) -> str | None:
    if decision.verdict == "no_answer" and require_format:
        return "bad_format"
    if decision.correct is None:
        return "undecided"
    return None if decision.correct else "wrong_answer"


def _short(text: str | None, limit: int = 200) -> str:
    text = repr(text) if text is None else text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


# --- Verification and the judge ---------------------------------------------------------------------------------------
def _verify(rows: list[dict], todo: list[int], questions: dict, decisions: list[_Decision], math: MathVerifier,
            code: CodeVerifier | None) -> None:
    """Both verifiers, each over all of its rows at once (they run them in parallel)."""
    math_at = [i for i in todo if rows[i]["domain"] == "math"]
    code_at = [i for i in todo if rows[i]["domain"] == "code"]
    if code_at and code is None:
        raise ValueError(f"filter_cots: {len(code_at)} code row(s) but no CodeVerifier was given")
    pairs = [(rows[i]["answer_text"], questions[rows[i]["question_id"]]["reference_answer"]) for i in math_at]
    finished = [is_finished(rows[i]["finish_reason"]) for i in math_at]
    verdicts = list(zip(math_at, math.verify_many(pairs, finished), strict=True))
    if code_at:
        pairs = [(rows[i]["answer_text"], questions[rows[i]["question_id"]]["tests"]) for i in code_at]
        verdicts += list(zip(code_at, code.verify_many(pairs), strict=True))
    for i, v in verdicts:
        rule = getattr(v, "rule", None)  # code verdicts have none
        detail = "; ".join(part for part in (v.detail, rule and _RULE_NOTE + rule) if part)
        decisions[i] = _Decision(v.verdict, v.correct, detail or None)


def _ask_judge(rows: list[dict], todo: list[int], questions: dict, decisions: list[_Decision], config: JudgeConfig,
               judge: Judge) -> None:
    """Math rows whose verdict is in `config.on` (with a reference and an answer) go to the judge, in one call."""
    asked = [i for i in todo if rows[i]["domain"] == "math" and decisions[i].verdict in config.on
             and (questions[rows[i]["question_id"]]["reference_answer"] or "").strip()
             and (rows[i]["answer_text"] or "").strip()]
    if not asked:
        return
    prompts = [config.prompt.format(question=questions[rows[i]["question_id"]]["question"],
                                    reference=questions[rows[i]["question_id"]]["reference_answer"].strip(),
                                    answer=rows[i]["answer_text"].strip()[-config.max_answer_chars:])
               for i in asked]
    replies = list(judge(prompts))
    if len(replies) != len(prompts):
        raise RuntimeError(f"the judge returned {len(replies)} replies for {len(prompts)} prompts")
    for i, reply in zip(asked, replies):
        decisions[i] = _judged(decisions[i], parse_judgement(reply), reply)


def _judged(rules: _Decision, said: bool | None, reply: str | None) -> _Decision:
    why = f"rules: {rules.verdict}" + (f" ({rules.detail})" if rules.detail else "")
    if said is None:  # the rules' verdict stands: undecided stays undecided, wrong stays wrong
        return _Decision(rules.verdict, rules.correct, f"{why}; judge reply unreadable: {_short(reply)}")
    if said:
        return _Decision("judge_passed", True, f"judge: YES; {why}")
    return _Decision("judge_failed", False, f"judge: NO; {why}")


# --- Tables ---------------------------------------------------------------------------------------------------------
def _question_lookup(questions: pa.Table) -> dict[str, dict]:
    """question_id -> question row; `tests` may be the CODE_TESTS struct or JSON text (as Ray Data batches carry it)."""
    require_columns(questions, QUESTION_COLUMNS, "cot_filter (questions)")
    lookup: dict[str, dict] = {}
    for row in questions.select(QUESTION_COLUMNS).to_pylist():
        if isinstance(row["tests"], str):
            row["tests"] = json.loads(row["tests"])
        if lookup.setdefault(row["question_id"], row) != row:
            raise SchemaError(f"cot_filter: question {row['question_id']} appears twice with different content")
    return lookup


def _check_rows_match(rows: list[dict], questions: dict[str, dict]) -> None:
    for row in rows:
        question = questions.get(row["question_id"])
        if question is None:
            raise SchemaError(f"cot_filter: no question row for CoT of question {row['question_id']}")
        if row["domain"] != question["domain"] or row["domain"] not in ("math", "code"):
            raise SchemaError(f"cot_filter: CoT of question {row['question_id']} has domain {row['domain']!r}, "
                              f"its question {question['domain']!r}; expected math or code for both")
        if row["domain"] == "code" and not question["tests"]:
            raise SchemaError(f"cot_filter: code question {row['question_id']} has no tests")


def _with_decisions(cots: pa.Table, decisions: list[_Decision]) -> pa.Table:
    """Exactly TEACHER_COTS: the input's columns, cast, and the four decided ones."""
    decided = {"verdict": [d.verdict for d in decisions], "correct": [d.correct for d in decisions],
               "verify_detail": [d.detail for d in decisions], "drop_reason": [d.drop for d in decisions]}
    arrays = [pa.array(decided[f.name], f.type) if f.name in decided else cots.column(f.name).cast(f.type)
              for f in TEACHER_COTS]
    out = pa.Table.from_arrays(arrays, schema=TEACHER_COTS)
    keys_in, keys_out = (list(zip(*(t.column(k).to_pylist() for k in ROW_KEY))) for t in (cots, out))
    if keys_in != keys_out:  # every row comes out exactly once, in its place
        raise RuntimeError(f"cot_filter: {cots.num_rows} rows in, {out.num_rows} out, or their order changed")
    return out


def filter_cots(cots: pa.Table, questions: pa.Table, config: FilterConfig, math: MathVerifier,
                code: CodeVerifier | None, judge: Judge | None = None) -> pa.Table:
    """`cots` with verdict, correct, verify_detail and drop_reason decided, row for row (see the module docstring).

    `code` may be None when `cots` has no code rows; `judge` is required exactly when `config.judge` is set."""
    if (config.judge is None) != (judge is None):
        raise ValueError("filter_cots: a judge callable is needed exactly when config.judge is set")
    require_columns(cots, INPUT_COLUMNS, "cot_filter (teacher CoTs)")
    rows = cots.select(["question_id", "domain", "answer_text", "finish_reason", "completion_tokens",
                        "error"]).to_pylist()
    keys = list(zip(*(cots.column(k).to_pylist() for k in ROW_KEY)))
    if len(set(keys)) != len(keys):
        raise SchemaError(f"cot_filter: duplicated CoT rows in the input (key {ROW_KEY})")
    lookup = _question_lookup(questions)
    _check_rows_match(rows, lookup)
    decisions = [_precheck(row, config) for row in rows]
    todo = [i for i, d in enumerate(decisions) if d.drop is None]
    _verify(rows, todo, lookup, decisions, math, code)
    if config.judge is not None:
        _ask_judge(rows, todo, lookup, decisions, config.judge, judge)
    for i in todo:
        decisions[i].drop = _final_drop(decisions[i], config.require_format)
    return _with_decisions(cots, decisions)


# --- The report ---------------------------------------------------------------------------------------------------
NO_LEVEL = "(no level)"


@dataclass
class FilterReport:
    rows: int = 0
    kept: Counter = field(default_factory=Counter)  # level -> CoTs kept
    dropped: Counter = field(default_factory=Counter)  # drop reason -> CoTs
    dropped_by_level: dict[str, Counter] = field(default_factory=dict)  # level -> drop reason -> CoTs
    judged: Counter = field(default_factory=Counter)  # judge_passed / judge_failed -> CoTs
    rules: Counter = field(default_factory=Counter)  # answer rule -> math CoTs kept on the verifier's verdict
    math_extraction: str | None = None  # the filter's setting, when the caller gives it

    @classmethod
    def of(cls, table: pa.Table, math_extraction: str | None = None) -> FilterReport:
        """Counts of a filtered table (only `level`, `drop_reason`, `verdict` and `verify_detail` are read)."""
        report = cls(rows=table.num_rows, math_extraction=math_extraction)
        columns = (table.column(name).to_pylist() for name in ("level", "drop_reason", "verdict", "verify_detail"))
        for level, reason, verdict, detail in zip(*columns):
            level = level or NO_LEVEL
            if reason is None:
                report.kept[level] += 1
                if verdict == "passed" and detail and _RULE_NOTE in detail:
                    report.rules[detail.rsplit(_RULE_NOTE, 1)[1]] += 1
            else:
                report.dropped[reason] += 1
                report.dropped_by_level.setdefault(level, Counter())[reason] += 1
            if verdict in ("judge_passed", "judge_failed"):
                report.judged[verdict] += 1
        return report

    def lines(self) -> list[str]:
        levels = _ordered([*self.kept, *self.dropped_by_level], [lv.value for lv in LEVELS_EASIEST_FIRST])
        kept = sum(self.kept.values())
        out = [f"teacher CoTs: {self.rows}, kept {kept}, dropped {self.rows - kept}"]
        out.append("  kept per level: " + (", ".join(f"{lv} {self.kept[lv]}" for lv in levels) or "-"))
        out.append("  dropped: " + (", ".join(f"{r} {self.dropped[r]}" for r in _ordered(self.dropped, DROP_REASONS))
                                    or "-"))
        for lv in levels:
            if lv in self.dropped_by_level:
                by = self.dropped_by_level[lv]
                out.append(f"    {lv}: " + ", ".join(f"{r} {by[r]}" for r in _ordered(by, DROP_REASONS)))
        if self.judged:
            out.append(f"  judge: {self.judged['judge_passed']} passed, {self.judged['judge_failed']} failed")
        if self.rules or self.math_extraction:
            out.append(f"  kept math answers found by rule (extraction {self.math_extraction or 'not given'}): "
                       + (", ".join(f"{r} {self.rules[r]}" for r in _ordered(self.rules, ANSWER_RULES)) or "-"))
        return out


def _ordered(names, order) -> list[str]:
    names = set(names)
    return [n for n in order if n in names] + sorted(names - set(order))


# --- Ray Data -----------------------------------------------------------------------------------------------------
def endpoint_judge(judge: JudgeConfig) -> Judge:
    """The judge as a function over an OpenAI-compatible endpoint (temperature 0, the reply's final text)."""
    if judge.endpoint is None:
        raise ValueError("filter.judge.endpoint: a judge needs an endpoint (base_url, model, api_key_env)")
    return lambda prompts: complete_all(judge.endpoint, prompts, max_tokens=judge.max_tokens)


class CoTFilterActor:
    """Ray Data stage: `filter_cots` per batch of CoT rows with the question columns joined in.

    `judge_factory` builds the judge client once per actor (clients rarely pickle); needed iff `config.judge`.
    expect_code: check at start that this node can isolate generated code (a math-only job never needs it)."""

    def __init__(self, config: FilterConfig, judge_factory: Callable[[], Judge] | None = None,
                 expect_code: bool = False):
        self.config = config
        self.math = MathVerifier(workers=config.verify_workers, timeout_s=config.verify_timeout_s,
                                 extraction=config.math_extraction)
        self.judge = judge_factory() if judge_factory is not None else None
        self._code: CodeVerifier | None = None
        if expect_code:
            self._code_verifier()

    def _code_verifier(self) -> CodeVerifier:
        if self._code is None:
            self._code = code_verifier_on_this_node(self.config.code)
        return self._code

    def __call__(self, batch: pa.Table) -> pa.Table:
        has_code = pc.any(pc.equal(batch["domain"], "code")).as_py()
        cots = batch.select([name for name in batch.column_names if name in TEACHER_COTS.names])
        return filter_cots(cots, batch.select(QUESTION_COLUMNS), self.config, self.math,
                           self._code_verifier() if has_code else None, self.judge)

    def __del__(self):
        if getattr(self, "math", None) is not None:
            self.math.close()
        if getattr(self, "_code", None) is not None:
            self._code.close()


def filter_on_ray(cots: pa.Table, samples: pa.Table, config: FilterConfig) -> pa.Table:
    """Verify every stored CoT with filter actors (math-verify processes, warm sandboxes); one row per CoT."""
    if cots.num_rows == 0:
        return cots
    index = {q: i for i, q in enumerate(samples["question_id"].to_pylist())}
    # A positional take, not Table.join: the join does not carry the nested `tests` struct.
    questions = samples.select(list(QUESTION_COLUMNS)).take([index[q] for q in cots["question_id"].to_pylist()])
    joined = cots.drop_columns(["domain"])
    for name in QUESTION_COLUMNS[1:]:
        joined = joined.append_column(name, questions[name])
    judge = functools.partial(endpoint_judge, config.judge) if config.judge else None
    # Blocks for every actor the pool may grow to (one block would keep the whole pool on one actor).
    out = dataset_in_blocks(joined, 4 * pool_max(config.concurrency), 64).map_batches(
        CoTFilterActor, fn_constructor_kwargs={"config": config, "judge_factory": judge,
                                               "expect_code": pc.any(pc.equal(cots["domain"], "code")).as_py()},
        concurrency=config.concurrency, num_cpus=config.num_cpus, batch_size=64, batch_format="pyarrow")
    table = pa.concat_tables(collect_blocks(out, cots.num_rows, "verify teacher CoTs", "CoT"))
    if table.num_rows != cots.num_rows:
        raise RuntimeError(f"filter: {cots.num_rows} CoTs in, {table.num_rows} out")
    return table.sort_by([("question_id", "ascending"), ("sample_index", "ascending")])
