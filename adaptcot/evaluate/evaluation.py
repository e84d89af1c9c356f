"""Evaluation: a model answers benchmarks n times through `ray.data.llm`, answers are verified by the grading
verifiers, and `metrics.py` turns the per-sample rows into accuracy, pass@k, majority vote and token counts.

A benchmark is a known name (`KNOWN_BENCHMARKS`, loaded from the Hugging Face hub with `datasets`) or a spec with a
`source` (a local file or directory in any format `adaptcot pool import` reads, or `hf:NAME`) plus its domain and
column mapping. It is imported once into `<out>/benchmarks/<name>/` (pool format, rejects kept), so every model
is evaluated on the same rows. Output per model, under `<out>/<model name>/`: `samples.parquet` (one row per
question and sample: response, tokens, finish reason, verdict, answer key, level, category) and `metrics.json` (per
benchmark: overall, per level, and per category when the source labels its questions, e.g. LiveCodeBench's
easy/medium/hard).

Cascaded inference (CasCoD-trained students, METHOD.md §2): the model first writes a rationale for the question
(the same user turn as always), then answers a second turn built with `rationale_prompt` from the question and
that rationale (`second_turn_prompts`); the answer is verified, and tokens are counted over both generations. With
`sft_records` (the SFT output the model was trained on) the rationale prompt is the one those records were built
with (`sft/records.py::read_prompts`), and a model whose math, code or system prompt differs from the records'
is refused, naming both (`with_sft_prompts`); records written before the prompts were recorded leave the
configured `rationale_prompt` in use. Not covered: `sft_records` is read only for cascaded evaluations.

Levels: with `levels.bank` set, each question's difficulty level for `levels.student` is read from the bank
(questions not in the bank get none), so every metric is also reported per level.

Math answers are read as grading reads them (`verify.math_extraction`, default `math_verify`: a box, an answer
marker, a one-line answer, else the last expression of a response that finished); each sample records the rule
that found its answer (`answer_rule`) and metrics.json counts them per benchmark (`answer_rules`: rule -> answers
found, of them correct).

Majority vote groups math answers by their last \\boxed{} content with spaces removed, so equivalent answers written
differently ("1/2", "0.5") vote apart; multiple-choice answers by the letter chosen
(`verify/math_answers.py::read_choice`). Code answers have no answer key (no majority vote), and neither have math
answers found by another rule than a box (a marker, a one-line answer, the last expression): they do not vote.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from adaptcot.common import schemas, storage
from adaptcot.common.reasoning import split_reply
from adaptcot.common.runtime import collect_blocks, dataset_in_blocks
from adaptcot.common.settings import Strict, pool_max
from adaptcot.evaluate import metrics as eval_metrics
from adaptcot.grade import bank
from adaptcot.grade.answerer import answerer
from adaptcot.grade.answering import SamplingConfig, StudentConfig, build_messages, expand_samples, to_attempt_row
from adaptcot.pool.presets import last_boxed
from adaptcot.sft.records import RATIONALE_PROMPT, read_prompts
from adaptcot.verify.attempts import VerifyConfig, verify_dataset
from adaptcot.verify.math_answers import ANSWER_RULES, is_choice, read_choice

EVAL_SAMPLING = SamplingConfig(n=8, temperature=0.6, top_p=0.95, max_tokens=2048)
POOL_COLUMNS = ["question_id", "domain", "question", "reference_answer", "tests", "starter_code", "category"]


class BenchmarkSpec(Strict):
    name: str
    source: str  # a local file / directory, or hf:NAME
    domain: Literal["math", "code"]
    preset: str | None = None
    mapping: dict[str, str] = {}
    hf_split: str = "test"
    hf_config: str | None = None
    limit: int | None = Field(default=None, ge=1)  # the first N questions (in question_id order)
    sampling: SamplingConfig | None = None  # this benchmark's own sampling (default: the eval's)


KNOWN_BENCHMARKS: dict[str, dict] = {
    "math500": {"source": "hf:HuggingFaceH4/MATH-500", "domain": "math", "preset": "math"},
    "aime24": {"source": "hf:HuggingFaceH4/aime_2024", "domain": "math", "hf_split": "train",
               "mapping": {"question": "problem", "answer": "answer"}},
    "aime25": {"source": "hf:math-ai/aime25", "domain": "math", "mapping": {"question": "problem", "answer": "answer"}},
    "gsm8k": {"source": "hf:openai/gsm8k", "domain": "math", "preset": "gsm8k", "hf_config": "main"},
    "humaneval": {"source": "hf:openai/openai_humaneval", "domain": "code", "preset": "humaneval"},
    "mbpp": {"source": "hf:google-research-datasets/mbpp", "domain": "code", "preset": "mbpp", "hf_config": "full"},
    # Gated on the hub: accept its terms and log in (HF_TOKEN) first. Options lettered at import (preset gpqa).
    "gpqa_diamond": {"source": "hf:Idavidrein/gpqa", "domain": "math", "preset": "gpqa", "hf_config": "gpqa_diamond",
                     "hf_split": "train"},
    # A loading-script dataset `datasets` no longer runs: its JSON lines files are read directly (every release).
    "livecodebench": {"source": "hf://datasets/livecodebench/code_generation_lite/test*.jsonl", "domain": "code",
                      "preset": "livecodebench"},
}


def benchmark_spec(item: str | BenchmarkSpec) -> BenchmarkSpec:
    if isinstance(item, BenchmarkSpec):
        return item
    if item not in KNOWN_BENCHMARKS:
        raise ValueError(f"unknown benchmark {item!r}: known names are {', '.join(KNOWN_BENCHMARKS)}; or give a spec "
                         f"with `source` and `domain` (a local file in any format `adaptcot pool import` reads)")
    return BenchmarkSpec(name=item, **KNOWN_BENCHMARKS[item])


class LevelsConfig(Strict):
    bank: str
    student: str  # the student whose levels to report: NAME or NAME@GRADER_ID (see `adaptcot bank summary`)


class EvalConfig(Strict):
    model: StudentConfig  # the model to evaluate, with its prompts, engine and resources
    benchmarks: list[str | BenchmarkSpec] = Field(min_length=1)
    out: str = "eval"
    cascaded: bool = False
    rationale_prompt: str = RATIONALE_PROMPT  # must match the one the CasCoD records were built with
    # The SFT output the model was trained on (sft_records.parquet or its directory): cascaded, its recorded
    # prompts are used (`with_sft_prompts`) instead of restating them here.
    sft_records: str | None = None
    levels: LevelsConfig | None = None
    verify: VerifyConfig = VerifyConfig()

    @model_validator(mode="after")
    def _known(self):
        if "sampling" not in self.model.model_fields_set:  # the evaluation defaults, not grading's n = 1
            object.__setattr__(self, "model", self.model.model_copy(update={"sampling": EVAL_SAMPLING}))
        names = [benchmark_spec(b).name for b in self.benchmarks]  # raises on unknown names
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names repeat: {names}")
        return self

    def specs(self) -> list[BenchmarkSpec]:
        return [benchmark_spec(b) for b in self.benchmarks]


class JobEvalConfig(Strict):
    """The `eval` section of a job: the graded student before SFT and the trained model after, same benchmarks."""
    benchmarks: list[str | BenchmarkSpec] = Field(min_length=1)  # sources may use "{run_dir}"
    sampling: SamplingConfig = EVAL_SAMPLING
    before: bool = True
    after: bool = True
    cascaded: bool | None = None  # None: cascaded for a model trained with the cascod objective
    levels: bool = True  # report per level of the graded student (from the job's bank)

    @model_validator(mode="after")
    def _known(self):
        for b in self.benchmarks:
            benchmark_spec(b)
        return self


# --- pure parts ------------------------------------------------------------------------------------------------------
def with_sft_prompts(cfg: EvalConfig) -> EvalConfig:
    """A cascaded evaluation with `sft_records`: `cfg` with the rationale prompt the records were built with. A model
    math / code / system prompt, or a `rationale_prompt` set in `cfg`, that differs from the records' fails."""
    prompts = read_prompts(cfg.sft_records) if cfg.cascaded and cfg.sft_records else None
    if prompts is None:
        return cfg
    if "cascod" not in prompts.get("formats", []):
        raise ValueError(f"eval: cascaded, but the SFT records at {cfg.sft_records} were built without CasCoD pairs "
                         f"(formats {prompts.get('formats')})")
    mine = {key: getattr(cfg.model, key) for key in ("math_prompt", "code_prompt", "system_prompt")}
    if "rationale_prompt" in cfg.model_fields_set:
        mine["rationale_prompt"] = cfg.rationale_prompt
    for key, value in mine.items():
        if value != prompts[key]:
            raise ValueError(f"eval: the {key} here is {value!r} but the SFT records at {cfg.sft_records} were built "
                             f"with {prompts[key]!r}; evaluate with the prompts the model was trained on")
    return cfg.model_copy(update={"rationale_prompt": prompts["rationale_prompt"]})


def second_turn_prompts(rows: list[dict], cfg: EvalConfig) -> list[str]:
    """The cascaded answer turns: `rationale_prompt` over each row's user turn, question and `rationale`."""
    return [cfg.rationale_prompt.format(prompt=build_messages(row, cfg.model)[-1]["content"], question=row["question"],
                                        rationale=row["rationale"]) for row in rows]


_SPACE = re.compile(r"\s+")


def answer_key(domain: str, response: str | None, reference: str | None = None) -> str | None:
    """What majority voting groups by: the last \\boxed{} content, spaces and \\left/\\right removed (math only);
    the chosen letter when the reference is a multiple-choice letter."""
    if domain != "math" or not response:
        return None
    reply = split_reply(response)  # after </think>, or gpt-oss's final channel
    if is_choice(reference):  # read as the verifier reads it: reasoning that never closed chose nothing
        return None if reply.cut_off else read_choice(reply.answer)[0]
    boxed = last_boxed(response if reply.cut_off else reply.answer)
    if boxed is None:
        return None
    return _SPACE.sub("", boxed.replace("\\left", "").replace("\\right", "")).rstrip(".") or None


def sample_rows(attempts: pa.Table, benchmark: str, levels: dict[str, str],
                categories: dict[str, str | None] | None = None) -> pa.Table:
    """Verified attempts -> the per-sample eval table (`levels`, `categories`: by question id)."""
    domains, responses = attempts["domain"].to_pylist(), attempts["response"].to_pylist()
    qids = attempts["question_id"].to_pylist()
    references = (attempts["reference_answer"].to_pylist() if "reference_answer" in attempts.column_names
                  else [None] * attempts.num_rows)
    categories = categories or {}
    return pa.table({
        "benchmark": pa.array([benchmark] * attempts.num_rows, pa.string()),
        "question_id": attempts["question_id"], "domain": attempts["domain"],
        "sample_index": attempts["sample_index"], "response": attempts["response"],
        "num_tokens": attempts["num_tokens"], "finish_reason": attempts["finish_reason"],
        "verdict": attempts["verdict"],
        "answer_rule": (attempts["answer_rule"] if "answer_rule" in attempts.column_names
                        else pa.nulls(attempts.num_rows, pa.string())),
        # An attempt nothing was decided about (engine or verifier error) counts as not correct here, and is
        # visible in `verdict`.
        "correct": pc.fill_null(attempts["correct"], False),
        "answer_key": pa.array([answer_key(d, r, ref) for d, r, ref in zip(domains, responses, references)],
                               pa.string()),
        "level": pa.array([levels.get(q) for q in qids], pa.string()),
        "category": pa.array([categories.get(q) for q in qids], pa.string()),
    })


def metrics_of(samples: pa.Table) -> dict:
    out = {"overall": eval_metrics.summarize(samples)}
    for column, key in (("level", "by_level"), ("category", "by_category")):
        if samples.num_rows and column in samples.column_names and pc.any(pc.is_valid(samples[column])).as_py():
            out[key] = eval_metrics.summarize_by(samples, column)
    if rules := answer_rule_counts(samples):
        out["answer_rules"] = rules
    return out


def answer_rule_counts(samples: pa.Table) -> dict[str, dict[str, int]]:
    """Which rule found the math answers: rule -> {"answers": samples, "correct": of them correct}, in the order of
    `ANSWER_RULES`; empty without an `answer_rule` column or any answer found."""
    if "answer_rule" not in samples.column_names:
        return {}
    counts: dict[str, dict[str, int]] = {}
    for rule, correct in zip(samples["answer_rule"].to_pylist(), samples["correct"].to_pylist()):
        if rule is not None:
            count = counts.setdefault(rule, {"answers": 0, "correct": 0})
            count["answers"] += 1
            count["correct"] += bool(correct)
    order = [r for r in ANSWER_RULES if r in counts] + sorted(set(counts) - set(ANSWER_RULES))
    return {r: counts[r] for r in order}


# --- Ray parts -------------------------------------------------------------------------------------------------------
def load_benchmark(spec: BenchmarkSpec, out: str | Path) -> pa.Table:
    """Import the benchmark once into `<out>/benchmarks/<name>/` (pool format) and read its questions."""
    from adaptcot.pool.importer import PoolImportConfig, import_pool, pool_files, read_pool

    directory = storage.join(str(out), "benchmarks", spec.name)
    if not pool_files(directory):
        # A benchmark is evaluated whole: near duplicates inside it are its authors' business, not removed here.
        import_pool(PoolImportConfig(sources=[spec.source], domain=spec.domain, out=directory,
                                     preset=spec.preset, mapping=spec.mapping, hf_split=spec.hf_split,
                                     hf_config=spec.hf_config, near_duplicates={"enabled": False}))
    pool = read_pool(directory, POOL_COLUMNS).sort_by("question_id")
    return pool.slice(0, spec.limit) if spec.limit else pool


def _collect(ds, requests: int, what: str) -> pa.Table:
    """Every answer, with a progress bar; one per request, sorted by question and sample."""
    tables = collect_blocks(ds, requests, what, "answer")
    answered = sum(table.num_rows for table in tables)
    if answered != requests or not tables:
        raise RuntimeError(f"eval: {requests} requests, {answered} answers")
    return pa.concat_tables(tables, promote_options="default").sort_by(
        [("question_id", "ascending"), ("sample_index", "ascending")])


def _answer(rows: pa.Table, student: StudentConfig, verify: VerifyConfig | None, what: str) -> pa.Table:
    res = student.resources
    # Blocks of one engine batch, enough for every engine and verifier (one block is one actor's work).
    workers = max(pool_max(res.concurrency), pool_max(verify.concurrency) if verify else 1)
    blocks = dataset_in_blocks(rows, workers, res.batch_size)
    ds = answerer(student)(blocks).map(to_attempt_row, num_cpus=res.cpus_per_light_stage)
    if verify is not None:
        ds = verify_dataset(ds, verify, expect_code=pc.any(pc.equal(rows["domain"], "code")).as_py())
    return _collect(ds, rows.num_rows, what)


def answer_and_verify(pool: pa.Table, cfg: EvalConfig, sampling: SamplingConfig) -> pa.Table:
    """n samples per question, verified; cascaded: rationale first, then the answer turn built on it."""
    student = cfg.model.model_copy(update={"sampling": sampling.model_copy(update={"n": 1})})
    rows = expand_samples(schemas.with_tests_json(pool), sampling.n)
    name = cfg.model.display_name
    if not cfg.cascaded:
        return _answer(rows, student, cfg.verify, f"eval {name}")
    rationales = _answer(rows, student, None, f"eval {name} (rationales)")
    by_key = {(q, s): (r, t, f) for q, s, r, t, f in zip(
        rationales["question_id"].to_pylist(), rationales["sample_index"].to_pylist(),
        rationales["response"].to_pylist(), rationales["num_tokens"].to_pylist(),
        rationales["finish_reason"].to_pylist())}
    second_turns = second_turn_prompts([{**row, "rationale": by_key[(row["question_id"], row["sample_index"])][0] or ""}
                                        for row in rows.to_pylist()], cfg)
    # The second turn is the whole user message: the prompts pass it through unchanged.
    passthrough = student.model_copy(update={"math_prompt": "{question}", "code_prompt": "{question}"})
    asked = rows.set_column(rows.schema.get_field_index("question"), "question", pa.array(second_turns, pa.string()))
    answers = _answer(asked, passthrough, None, f"eval {name} (answers)")
    question_of = dict(zip(pool["question_id"].to_pylist(), pool["question"].to_pylist()))
    answers = answers.set_column(answers.schema.get_field_index("question"), "question",
                                 pa.array([question_of[q] for q in answers["question_id"].to_pylist()], pa.string()))
    keys = list(zip(answers["question_id"].to_pylist(), answers["sample_index"].to_pylist()))
    tokens = [by_key[k][1] + t for k, t in zip(keys, answers["num_tokens"].to_pylist())]
    finish = ["length" if "length" in (by_key[k][2], f) else f
              for k, f in zip(keys, answers["finish_reason"].to_pylist())]
    answers = answers.set_column(answers.schema.get_field_index("num_tokens"), "num_tokens", pa.array(tokens))
    answers = answers.set_column(answers.schema.get_field_index("finish_reason"), "finish_reason", pa.array(finish))
    has_code = pc.any(pc.equal(answers["domain"], "code")).as_py()
    blocks = dataset_in_blocks(answers, 4 * pool_max(cfg.verify.concurrency), cfg.model.resources.batch_size)
    return _collect(verify_dataset(blocks, cfg.verify, has_code), answers.num_rows, f"verify {name}")


def bank_levels(levels: LevelsConfig | None, question_ids: list[str]) -> dict[str, str]:
    """The graded student's level of each benchmark question the bank holds: only those questions' buckets are
    read, not the partition."""
    return bank.student_levels(levels.bank, levels.student, question_ids) if levels is not None else {}


def evaluate(cfg: EvalConfig) -> dict:
    """Evaluate `cfg.model` on every benchmark; writes samples.parquet and metrics.json; returns the metrics.

    A finished evaluation with the same settings (recorded in metrics.json) is returned as it is, not redone."""
    started = time.perf_counter()
    cfg = with_sft_prompts(cfg)
    name = cfg.model.display_name
    out_dir = storage.join(cfg.out, name)
    settings = json.loads(cfg.model_dump_json(exclude={"out", "sft_records"}))  # the prompts read from it are in
    metrics_path, samples_path = storage.join(out_dir, "metrics.json"), storage.join(out_dir, "samples.parquet")
    if storage.exists(metrics_path) and storage.exists(samples_path):
        previous = json.loads(storage.read_text(metrics_path))
        if previous.get("settings") == settings:
            return previous
    tables, metrics = [], {"model": cfg.model.model, "name": name, "cascaded": cfg.cascaded, "benchmarks": {}}
    pools = {}
    for spec in cfg.specs():
        pools[spec.name] = load_benchmark(spec, cfg.out)
        if pools[spec.name].num_rows == 0:
            raise ValueError(f"benchmark {spec.name}: no usable question in {spec.source} (see its rejects in "
                             f"{storage.join(cfg.out, 'benchmarks', spec.name, 'rejects')})")
    levels = bank_levels(cfg.levels, [q for pool in pools.values() for q in pool["question_id"].to_pylist()])
    # Benchmarks with the same sampling are answered in one pass (one engine start); a question two of them share
    # is answered once and counted in both.
    groups: dict[str, list[BenchmarkSpec]] = {}
    for spec in cfg.specs():
        groups.setdefault((spec.sampling or cfg.model.sampling).model_dump_json(), []).append(spec)
    for specs in groups.values():
        sampling = specs[0].sampling or cfg.model.sampling
        union = pa.concat_tables([pools[s.name] for s in specs])
        _, first = np.unique(np.array(union["question_id"].to_pylist(), dtype=object), return_index=True)
        answered = answer_and_verify(union.take(pa.array(sorted(first))), cfg, sampling)
        for spec in specs:
            mine = pc.is_in(answered["question_id"], value_set=pools[spec.name]["question_id"])
            pool = pools[spec.name]
            categories = dict(zip(pool["question_id"].to_pylist(), pool["category"].to_pylist()))
            samples = sample_rows(answered.filter(mine), spec.name, levels, categories)
            tables.append(samples)
            metrics["benchmarks"][spec.name] = {"sampling": sampling.model_dump(), **metrics_of(samples)}
    storage.write_table(pa.concat_tables(tables), samples_path)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["settings"] = settings
    storage.write_text(metrics_path, json.dumps(metrics, indent=2))  # last: its presence means done
    return metrics


def format_metrics(metrics: dict) -> list[str]:
    lines = [f"{metrics['name']}{' (cascaded)' if metrics['cascaded'] else ''}:"]
    for bench, m in metrics["benchmarks"].items():
        o = m["overall"]
        ks = o.get("pass_at_k", {})
        top = max(ks, key=int) if ks else None
        lines.append(f"  {bench}: {o['questions']} questions x {o.get('samples_per_question')}: accuracy "
                     f"{o.get('accuracy', 0):.3f} ± {o.get('accuracy_se') or 0:.3f}"
                     + (f", pass@{top} {ks[top]:.3f}" if top else "")
                     + (f", maj@n {o['majority_vote']:.3f}" if "majority_vote" in o else "")
                     + f", tokens mean {o.get('tokens_mean', 0):.0f} (p90 {o.get('tokens_p90', 0):.0f}), "
                       f"truncated {o.get('truncation_rate', 0):.1%}")
        if m.get("answer_rules"):
            lines.append("    answers found by rule: " + ", ".join(
                f"{r} {c['answers']} ({c['correct']} correct)" for r, c in m["answer_rules"].items()))
        if m.get("by_category"):
            order = sorted(m["by_category"], key=lambda c: (_DIFFICULTY_ORDER.get(c, len(_DIFFICULTY_ORDER)), c))
            lines.append("    by category: " + ", ".join(
                f"{c} {m['by_category'][c].get('accuracy', 0):.3f} ({m['by_category'][c]['questions']})"
                for c in order))
    return lines


_DIFFICULTY_ORDER = {"easy": 0, "medium": 1, "hard": 2}  # LiveCodeBench's categories read best in this order
