"""SFT data: verified teacher CoTs -> chat records for the student (schema SFT_RECORDS), written as Parquet.

Record kinds (`SFT_RECORD_KINDS`, METHOD.md §2; docs/sft_data.md has examples):
- `cot`: user = the question in the student's prompt format (the same text `grade/answering.py::build_messages`
  asks at grading and evaluation time) -> assistant = "<think>\\n{reasoning}\\n</think>\\n\\n{answer_text}" (trace
  "keep"), the answer text alone ("strip"), or the reasoning cut to `cap_words` words plus `CAP_MARKER` ("cap").
- `cascod_rationale` (q -> r) and `cascod_answer` (q, r -> a): CasCoD's two steps. With `cascod_answer: final`
  (the default; the paper's form: a is the short final answer) a is, for math, the sentence or line of the answer
  text that holds its last \\boxed{} (else its last answer marker, else the whole answer text), and r is the
  teacher's reasoning with the answer statements at its END cut off ("So the answer is 12.", "**Final Answer**",
  "\\boxed{12}": `strip_stated_answer`); for code, a is the final program as one ```python block and r the reasoning
  as written. With `cascod_answer: full` (adaptcot's earlier form) r is the reasoning as written and a the whole
  answer text (math). r is cut under "cap" after that. When there is no separate reasoning, or trace is "strip", the
  answer text is split: r = what precedes the sentence holding the last \\boxed{} (math) or the last python block
  (code), a = that sentence onwards / that block (under "final", r also loses a trailing "**Final Answer**" heading).

`SFTReport` counts the math rationales that still hold the question's reference answer in their last lines
(`rationale_states_answer`): the answer leaks into q -> r even when no statement of it was cut. The prompts the
records were built with go into `sft_report.json` (`prompts`) and the Parquet file's schema metadata
(`adaptcot.sft_prompts`), so cascaded evaluation reads them back (`read_prompts`) instead of restating them.

Only CoTs with `drop_reason` null and `correct` true are used (CasCoD's caveat: the rationale bounds everything, so
only verified rationales are trained on); the rest are counted by reason in `SFTReport`. A used CoT whose answer
text has nothing before its final answer (and no separate reasoning) gets a `cot` record but no CasCoD pair.
`build_sft` is pure (no Ray); `write_records` writes `sft_records.parquet` and `sft_report.json`.

Not covered: only answer statements at the very end of the reasoning are cut (one followed by "Let me double-check
... yes." stays, and so does a last computation "2 + 12 = 14."; such rationales are what `rationale_states_answer`
counts); a statement is recognised by a box, or an answer word ("answer", "result", "solution") with the answer's
value, compared as normalised text (not by Math-Verify); a code reasoning is never cut (its drafts may end on the
program); in a split answer text an earlier \\boxed{} stays in r; text after a code answer's program, or after the
final math sentence, is dropped from both CasCoD targets; "cap" counts whitespace-separated words, not tokens (no
tokenizer is loaded).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import model_validator

from adaptcot.common import storage
from adaptcot.common.schemas import (
    LEVELS_EASIEST_FIRST,
    SFT_RECORD_KINDS,
    SFT_RECORDS,
    SchemaError,
    require_columns,
    tests_to_json,
)
from adaptcot.common.settings import Strict
from adaptcot.grade.answering import CODE_PROMPT, MATH_PROMPT, code_io_format
from adaptcot.sft.answer_text import (
    TAIL_LINES,
    answer_values,
    final_answer_span,
    python_block,
    split_answer_text,
    states_answer,
    strip_stated_answer,
)
from adaptcot.verify.code_answers import extract_code
from adaptcot.verify.math_answers import is_choice

COT_COLUMNS = ("question_id", "domain", "teacher", "sampling_key", "sample_index", "level", "reasoning",
               "answer_text", "correct", "drop_reason")
QUESTION_COLUMNS = ("question_id", "domain", "question", "tests", "starter_code")
RATIONALE_PROMPT = "{prompt}\n\nReasoning:\n{rationale}\n\nGive the final answer."
CAP_MARKER = "\n\n[... reasoning cut ...]"
_WORD = re.compile(r"\S+")
_LEVEL_RANK = {level.value: i for i, level in enumerate(LEVELS_EASIEST_FIRST)}  # report lines easiest first


PROMPTS_KEY = b"adaptcot.sft_prompts"  # Parquet schema metadata of sft_records.parquet: the prompts, as JSON


class SFTConfig(Strict):
    formats: list[Literal["cot", "cascod"]] = ["cot"]
    trace: Literal["keep", "strip", "cap"] = "keep"
    cap_words: int | None = None  # required when trace == "cap"
    system_prompt: str | None = None  # use the student's `system_prompt` from grading, if it had one
    math_prompt: str = MATH_PROMPT  # must equal the prompts the student is evaluated with
    code_prompt: str = CODE_PROMPT
    # The CasCoD answer step's user turn: {prompt} is the student's user turn for the question, {question} the bare
    # question text, {rationale} the rationale.
    rationale_prompt: str = RATIONALE_PROMPT
    # The CasCoD answer target: "final" = the final answer's sentence (math; the paper's short a), r loses the
    # answer statements at its end; "full" = the whole answer text, r the reasoning as written.
    cascod_answer: Literal["final", "full"] = "final"

    @model_validator(mode="after")
    def _consistent(self):
        if not self.formats:
            raise ValueError("formats must name at least one of cot, cascod")
        if self.trace == "cap" and (self.cap_words is None or self.cap_words < 1):
            raise ValueError("trace 'cap' needs cap_words >= 1")
        if self.trace != "cap" and self.cap_words is not None:
            raise ValueError(f"cap_words is only used with trace 'cap', not {self.trace!r}")
        _check_template("math_prompt", self.math_prompt, ("question",), ("question",))
        _check_template("code_prompt", self.code_prompt, ("question", "io_format"), ("question",))
        _check_template("rationale_prompt", self.rationale_prompt, ("prompt", "question", "rationale"), ("rationale",))
        return self


def _check_template(name: str, template: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    try:
        template.format(**{key: "" for key in allowed})
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{name}: only the placeholders {list(allowed)} are allowed ({e!r})") from None
    missing = [key for key in required if "{" + key + "}" not in template]
    if missing:
        raise ValueError(f"{name} lacks the placeholder(s) {missing}")


@dataclass
class SFTReport:
    cots_in: int | None = None  # None: the CoTs were not seen (report built from the records alone)
    cots_used: int | None = None
    skipped: Counter = field(default_factory=Counter)  # CoTs not used, by reason
    no_cascod_split: int = 0  # CoTs used for `cot` but not CasCoD: nothing before the final answer to split off
    by_kind: Counter = field(default_factory=Counter)
    by_level: dict[str, Counter] = field(default_factory=dict)  # level -> kind -> records
    # CasCoD pairs (None: only the records were seen): answer statements cut from the end of r; math finals with no
    # box or answer marker (a = the whole answer text); math rationales checked against the question's reference
    # answer (not a choice letter) and those still holding it in their last TAIL_LINES lines.
    rationale_answer_cut: int | None = None
    final_not_found: int | None = None
    rationales_checked: int | None = None
    rationale_states_answer: int | None = None
    prompts: dict | None = None  # what the records were built with (`prompts_of`); written by `write_records`

    def count_pair(self, pair: CasCoDPair, domain: str, reference: str | None) -> None:
        self.rationale_answer_cut = (self.rationale_answer_cut or 0) + pair.answer_cut
        self.final_not_found = (self.final_not_found or 0) + (not pair.final_found)
        if domain == "math" and reference and not is_choice(reference):
            self.rationales_checked = (self.rationales_checked or 0) + 1
            self.rationale_states_answer = (self.rationale_states_answer or 0) + states_answer(pair.rationale,
                                                                                               reference)

    def count_records(self, table: pa.Table) -> SFTReport:
        self.by_kind = Counter(table.column("kind").to_pylist())
        self.by_level = {}
        for level, kind in zip(table.column("level").to_pylist(), table.column("kind").to_pylist()):
            self.by_level.setdefault(str(level), Counter())[kind] += 1
        return self

    def as_dict(self) -> dict:
        skipped = None if self.cots_in is None else dict(sorted(self.skipped.items()))
        return {"cots_in": self.cots_in, "cots_used": self.cots_used, "skipped": skipped,
                "no_cascod_split": self.no_cascod_split, "rationale_answer_cut": self.rationale_answer_cut,
                "final_not_found": self.final_not_found, "rationales_checked": self.rationales_checked,
                "rationale_states_answer": self.rationale_states_answer, "records": sum(self.by_kind.values()),
                "by_kind": {k: self.by_kind[k] for k in SFT_RECORD_KINDS if k in self.by_kind},
                "by_level": {level: dict(kinds) for level, kinds in sorted(self.by_level.items())}}

    def summary(self) -> dict:
        return self.as_dict()

    def lines(self) -> list[str]:
        source = "uncounted" if self.cots_in is None else f"{self.cots_used} of {self.cots_in}"
        kinds = ", ".join(f"{k} {self.by_kind[k]}" for k in SFT_RECORD_KINDS if k in self.by_kind)
        out = [f"{sum(self.by_kind.values())} SFT records from {source} teacher CoTs: {kinds}"]
        out += [f"  skipped {n:>8}  {reason}" for reason, n in sorted(self.skipped.items())]
        if self.no_cascod_split:
            out.append(f"  no CasCoD pair {self.no_cascod_split} (no rationale before the final answer)")
        if self.rationale_answer_cut:
            out.append(f"  CasCoD rationales with an answer statement cut from their end: {self.rationale_answer_cut}")
        if self.final_not_found:
            out.append(f"  CasCoD math answers with no box or answer marker (kept whole): {self.final_not_found}")
        if self.rationales_checked:
            out.append(f"  CasCoD math rationales still stating the reference answer in their last {TAIL_LINES} "
                       f"lines: {self.rationale_states_answer} of {self.rationales_checked}")
        out += [f"  level {level}: " + ", ".join(f"{k} {n}" for k, n in kinds.items())
                for level, kinds in sorted(self.by_level.items(), key=lambda item: _LEVEL_RANK.get(item[0], 99))]
        return out


# --- the pure step ------------------------------------------------------------------------------------------------
def build_sft(cots: pa.Table, questions: pa.Table, config: SFTConfig) -> tuple[pa.Table, SFTReport]:
    """The SFT records of the kept CoTs (schema SFT_RECORDS, in CoT order) and what was used or skipped."""
    require_columns(cots, COT_COLUMNS, "sft_data")
    require_columns(questions, QUESTION_COLUMNS, "sft_data")
    columns = list(QUESTION_COLUMNS) + (["reference_answer"] if "reference_answer" in questions.column_names else [])
    by_id = {q["question_id"]: q for q in questions.select(columns).to_pylist()}
    report, records = SFTReport(cots_in=cots.num_rows, cots_used=0, prompts=prompts_of(config)), []
    for cot in cots.select(list(COT_COLUMNS)).to_pylist():
        reason = skip_reason(cot)
        if reason:
            report.skipped[reason] += 1
            continue
        question = by_id.get(cot["question_id"])
        if question is None or question["domain"] != cot["domain"]:  # an upstream bug, never a skip
            raise SchemaError(f"sft_data: no {cot['domain']} question {cot['question_id']!r} for a kept CoT")
        new = cot_records(cot, question, config, report)
        report.cots_used += 1
        if "cascod" in config.formats and not any(r["kind"] == "cascod_answer" for r in new):
            report.no_cascod_split += 1
        records += new
    table = pa.Table.from_pylist(records, schema=SFT_RECORDS)
    if len(set(table.column("record_id").to_pylist())) != table.num_rows:
        raise SchemaError("sft_data: duplicated (question_id, teacher, sampling_key, sample_index) in the CoTs")
    return table, report.count_records(table)


def build_records(cots: pa.Table, questions: pa.Table, config: SFTConfig) -> pa.Table:
    return build_sft(cots, questions, config)[0]


def skip_reason(cot: dict) -> str | None:
    """Why a CoT is not used (its drop reason, an unverified answer, no answer text), or None to use it."""
    if cot["drop_reason"] is not None:
        return cot["drop_reason"]
    if cot["correct"] is not True:
        return "wrong_answer" if cot["correct"] is False else "undecided"
    if not (cot["answer_text"] or "").strip():
        return "no_answer_text"
    return None


def cot_records(cot: dict, question: dict, config: SFTConfig, report: SFTReport | None = None) -> list[dict]:
    """The records of one kept CoT, in the order cot, cascod_rationale, cascod_answer (those configured); the CasCoD
    pair is counted in `report`, if given."""
    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    prompt = user_prompt(question, config)
    reasoning = "" if config.trace == "strip" else (cot["reasoning"] or "").strip()
    answer = cot["answer_text"].strip()
    turns = []
    if "cot" in config.formats:
        turns.append(("cot", prompt, cot_reply(reasoning, answer, config)))
    reference = question.get("reference_answer")
    pair = cascod_parts(cot["domain"], reasoning, answer, config, reference) if "cascod" in config.formats else None
    if pair:
        answer_turn = config.rationale_prompt.format(prompt=prompt, question=question["question"],
                                                     rationale=pair.rationale)
        turns += [("cascod_rationale", prompt, pair.rationale), ("cascod_answer", answer_turn, pair.answer)]
        if report is not None:
            report.count_pair(pair, cot["domain"], reference)
    return [{"record_id": record_id(kind, cot), "question_id": cot["question_id"], "kind": kind,
             "cot_id": record_id("cot_id", cot),
             "messages": system + [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
             "level": cot["level"], "teacher": cot["teacher"]} for kind, user, reply in turns]


def user_prompt(question: dict, config: SFTConfig) -> str:
    """The user turn the student sees for this question when it is graded or evaluated (`build_messages`)."""
    if question["domain"] == "math":
        return config.math_prompt.format(question=question["question"])
    row = {"tests_json": tests_to_json(question.get("tests")), "starter_code": question.get("starter_code")}
    return config.code_prompt.format(question=question["question"], io_format=code_io_format(row))


def cot_reply(reasoning: str, answer: str, config: SFTConfig) -> str:
    if not reasoning:
        return answer
    return f"<think>\n{cap_reasoning(reasoning, config)}\n</think>\n\n{answer}"


def cap_reasoning(reasoning: str, config: SFTConfig) -> str:
    """The reasoning cut after `cap_words` words (its formatting kept), with `CAP_MARKER`; uncut unless trace 'cap'."""
    if config.trace != "cap":
        return reasoning
    words = list(_WORD.finditer(reasoning))
    if len(words) <= config.cap_words:
        return reasoning
    return reasoning[:words[config.cap_words - 1].end()] + CAP_MARKER


@dataclass(frozen=True)
class CasCoDPair:
    rationale: str  # r, the target of q -> r
    answer: str  # a, the target of (q, r) -> a
    answer_cut: bool = False  # answer statements were cut from the end of the reasoning
    final_found: bool = True  # math under "final": a box or answer marker was found (else a is the whole text)


def cascod_parts(domain: str, reasoning: str, answer: str, config: SFTConfig,
                 reference: str | None = None) -> CasCoDPair | None:
    """CasCoD's (rationale, final answer), or None when there is no rationale to split off."""
    final_form = config.cascod_answer == "final"
    if reasoning and domain == "code":
        program = extract_code(answer)
        final = python_block(program) if program else answer  # a verified program found another way: keep it whole
        return CasCoDPair(cap_reasoning(reasoning, config), final)
    if reasoning and not final_form:
        return CasCoDPair(cap_reasoning(reasoning, config), answer)
    if reasoning:
        span = final_answer_span(answer)
        final = answer[span[0]:span[1]].strip() if span else answer
        rationale = strip_stated_answer(reasoning, answer_values(final, reference))
        if not rationale:
            return None
        return CasCoDPair(cap_reasoning(rationale, config), final, rationale != reasoning, span is not None)
    split = split_answer_text(domain, answer)
    if not split:
        return None
    rationale = strip_stated_answer(split[0], []) if final_form and domain == "math" else split[0]
    return CasCoDPair(cap_reasoning(rationale, config), split[1], rationale != split[0]) if rationale else None


def record_id(kind: str, cot: dict) -> str:
    """128-bit hex id of (kind, question, teacher, sampling key, sample index): stable across runs and configs."""
    key = "\n".join([kind, cot["question_id"], cot["teacher"], cot["sampling_key"], str(cot["sample_index"])])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


# --- output -------------------------------------------------------------------------------------------------------
def prompts_of(config: SFTConfig) -> dict:
    """What the records were built with, as `write_records` records it and `read_prompts` returns it."""
    return config.model_dump(include={"math_prompt", "code_prompt", "system_prompt", "rationale_prompt", "formats",
                                      "cascod_answer"})


def write_records(table: pa.Table, out_dir: str | Path, report: SFTReport | None = None,
                  config: SFTConfig | None = None) -> str:
    """`out_dir/sft_records.parquet` and `out_dir/sft_report.json` (a path or URI), each published whole.

    Without `report` (from `build_sft`) the JSON has the counts per kind and level but no skip counts. The prompts
    (from `config`, else the report's) go into both: the JSON's `prompts` and the Parquet schema's `PROMPTS_KEY`."""
    path = storage.join(str(out_dir), "sft_records.parquet")
    report = report or SFTReport()
    prompts = prompts_of(config) if config is not None else report.prompts
    records = table.select(SFT_RECORDS.names).cast(SFT_RECORDS)
    if prompts is not None:
        records = records.replace_schema_metadata({**SFT_RECORDS.metadata, PROMPTS_KEY: json.dumps(prompts).encode()})
    storage.write_table(records, path)
    summary = {**report.count_records(table).as_dict(), "prompts": prompts}
    storage.write_text(storage.join(str(out_dir), "sft_report.json"), json.dumps(summary, indent=2) + "\n")
    return path


def read_prompts(sft: str | Path) -> dict | None:
    """The prompts SFT records were built with (`prompts_of`), from `sft_records.parquet` (a path or URI, or the
    directory holding it) or else its `sft_report.json`; None when neither records them (written before they were)."""
    sft = str(sft)
    path = sft if sft.endswith(".parquet") else storage.join(sft, "sft_records.parquet")
    if not storage.exists(path):
        raise FileNotFoundError(f"no SFT records at {path}")
    fs, inner = storage.resolve(path)
    metadata = pq.read_schema(inner, filesystem=fs).metadata or {}
    if PROMPTS_KEY in metadata:
        return json.loads(metadata[PROMPTS_KEY])
    report = storage.join(storage.parent(path), "sft_report.json")
    return json.loads(storage.read_text(report)).get("prompts") if storage.exists(report) else None
