"""Draw N questions from one student's bank partition by a difficulty distribution (METHOD.md §1, DB_sample).

- `allocate`: per-level quotas from the weights, with the shortage rule (a level with too few questions is capped
  and its shortfall goes to the other levels; see its docstring and docs/sampling.md).
- `draw`: within a level, questions in the order of sha256(f"{seed}:{question_id}"), first k taken. The same seed
  gives the same sample, and adding questions to the bank never reorders the questions already there.
- `exclusions.py`: decontamination against benchmark questions (the `exclude` lists and the job's own eval
  benchmarks: by identity key, then by shared word n-grams, `decontamination.ngram`) and earlier samples.
- `sample`: the driver, bank partition + pool -> `samples.parquet` (schema SAMPLES), `distribution.json`,
  `sample_report.json`, each published whole.

Bank rows are restricted to the pool's questions, marked with the first exclusion rule that removes them and with their
seeded order keys (`mark_exclusions`), counted per level and mark, and each block gives up its first `quota` questions
per level (`first_per_level`); the first k per level are then taken among those few, which is the same as `draw` over
the whole partition. Question-local (`common/buckets.py`): a group of buckets is marked against the pool's same buckets
alone, so no join or shuffle is needed. A partition of up to `bank.IN_PROCESS_MAX_ROWS` rows is drawn in this process; a
larger one in Ray tasks, a group each, so a bank of tens of millions of questions is never held by one process
(`benchmarks/bank_scale.py`). Both give the same sample. The n-gram rule reads the pool's question text once, a batch at
a time (on Ray Data with the big partitions), keeping only the ids that match; the pool is read again only for the drawn
questions and the report's examples. Not covered: stratifying by domain or source (a mixed bank is drawn by level only),
and paraphrased benchmark questions that share no n-gram (see `exclusions.py`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from adaptcot.common import schemas, storage
from adaptcot.common.buckets import bucket_keys
from adaptcot.common.runtime import run_groups
from adaptcot.common.schemas import Level
from adaptcot.common.settings import Strict
from adaptcot.grade import bank, manifest
from adaptcot.pool import layout as pool_layout
from adaptcot.pool.importer import pool_files, read_pool
from adaptcot.sample.distributions import (
    LEVEL_NAMES,
    Distribution,
    DistributionConfig,
    DistributionError,
    build_distribution,
    eval_pool_ids,
    save_distribution,
)
from adaptcot.sample.exclusions import (
    OVERLAP,
    Benchmarks,
    ngram_index,
    order_key,
    overlapping_questions,
    pool_overlap,
    previous_sample_ids,
    read_benchmarks,
    snippet,
)
from adaptcot.sample.marked import BANK_COLUMNS, Marked

QUESTION_FIELDS = ["question", "reference_answer", "tests", "starter_code"]
QUESTION_FILES_PER_TASK = 64  # pool files one task reads for the drawn questions
EXAMPLES_PER_REASON = 20  # excluded questions the report shows per decontamination rule (json; lines() shows 5)


class DecontaminationConfig(Strict):
    # Word n-gram size of the overlap rule (open-r1: 8; lm-eval: 13); None: identity matching only.
    ngram: int | None = Field(default=8, ge=1)


class SampleConfig(Strict):
    n: int = Field(gt=0)
    seed: int = 0
    distribution: DistributionConfig
    exclude: list[str] = []           # benchmark question lists (decontamination)
    exclude_previous: list[str] = []  # earlier sample outputs (samples.parquet files or their directories)
    domains: list[Literal["math", "code"]] | None = None  # None: every domain in the bank
    decontamination: DecontaminationConfig = DecontaminationConfig()


# --- allocation -----------------------------------------------------------------------------------------------
def _largest_remainder(weights: dict[str, float], n: int) -> dict[str, int]:
    """n split in proportion to weights, floors first, then +1 by largest remainder (ties: easier level first)."""
    total = sum(weights.values())
    exact = {lv: n * w / total for lv, w in weights.items()}
    quotas = {lv: math.floor(x) for lv, x in exact.items()}
    left = n - sum(quotas.values())
    by_remainder = sorted(weights, key=lambda lv: (quotas[lv] - exact[lv], Level(lv).rank))
    for lv in by_remainder[:left]:
        quotas[lv] += 1
    return quotas


def _receivers(weights: dict[str, float], available: dict[str, int], quotas: dict[str, int]) -> dict[str, float]:
    """Levels that can take more questions, with their weights; weight-0 levels (equal shares) only as a last resort."""
    spare = [lv for lv in LEVEL_NAMES if available[lv] > quotas[lv]]
    weighted = {lv: weights[lv] for lv in spare if weights[lv] > 0}
    return weighted or {lv: 1.0 for lv in spare}


def allocate(weights: dict[str, float], available: dict[str, int], n: int) -> tuple[dict[str, int], list[str]]:
    """Questions to draw per level, and notes on every shortage.

    Rule: quotas are n * weight rounded by largest remainder (they sum to n). While a level's quota exceeds the
    questions it has, its quota is capped at what it has and the shortfall is split, again by largest remainder,
    over the levels that still have spare questions, in proportion to their weights. Levels with weight 0 receive
    questions (in equal shares) only when no level with weight > 0 has any to spare. When no level has spare
    questions left, fewer than n are drawn and a note says how many fewer.
    """
    weights = {lv: float(weights[lv]) for lv in LEVEL_NAMES}
    available = {lv: int(available.get(lv, 0)) for lv in LEVEL_NAMES}
    if n < 0 or sum(weights.values()) <= 0:
        raise ValueError(f"allocate needs n >= 0 and some weight > 0 (n={n}, weights={weights})")
    quotas, notes = _largest_remainder(weights, n), []
    while short := {lv: q - available[lv] for lv, q in quotas.items() if q > available[lv]}:
        for lv, missing in short.items():
            notes.append(f"{lv}: wanted {quotas[lv]}, only {available[lv]} available ({missing} short)")
            quotas[lv] = available[lv]
        receivers = _receivers(weights, available, quotas)
        if not receivers:
            break
        if all(weights[lv] == 0 for lv in receivers):
            notes.append(f"no level with weight > 0 has questions to spare: filling from {', '.join(receivers)}")
        for lv, extra in _largest_remainder(receivers, sum(short.values())).items():
            quotas[lv] += extra
    drawn = sum(quotas.values())
    if drawn < n:
        notes.append(f"bank exhausted: drawing {drawn} questions, {n - drawn} fewer than the {n} requested")
    return quotas, notes


# --- drawing --------------------------------------------------------------------------------------------------
def draw(bank_rows: pa.Table, quotas: dict[str, int], seed: int) -> pa.Table:
    """The first quotas[level] questions of each level in seeded hash order; rows come out easiest level first."""
    schemas.require_columns(bank_rows, ["question_id", "level"], "draw")
    ids = bank_rows["question_id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise schemas.SchemaError("draw: the bank rows hold a question more than once")
    unknown = set(quotas) - set(LEVEL_NAMES)
    if unknown:
        raise ValueError(f"draw: unknown level(s) in quotas: {sorted(unknown)}")
    rows = bank_rows.append_column("_order", pa.array([order_key(seed, q) for q in ids], pa.string()))
    parts = [rows.slice(0, 0)]
    for lv in LEVEL_NAMES:
        k = quotas.get(lv, 0)
        in_level = rows.filter(pc.equal(rows["level"], lv))
        if in_level.num_rows < k:
            raise ValueError(f"draw: level {lv} has {in_level.num_rows} questions, quota {k}")
        parts.append(in_level.sort_by("_order").slice(0, k))
    return pa.concat_tables(parts).drop_columns(["_order"])


# --- the driver -----------------------------------------------------------------------------------------------
@dataclass
class SampleReport:
    student: str
    grader_id: str
    seed: int
    requested: int
    distribution: str
    weights: dict[str, float]
    available: dict[str, int]
    quotas: dict[str, int]
    excluded: dict[str, int]
    notes: list[str] = field(default_factory=list)
    out_dir: str = ""
    decontamination: dict = field(default_factory=dict)  # benchmark questions checked, n-gram size
    # reason -> up to EXAMPLES_PER_REASON {question_id, question, benchmark_question[, shared]} (smallest ids)
    examples: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def drawn(self) -> int:
        return sum(self.quotas.values())

    def summary(self) -> dict:
        return {"drawn": self.drawn, "quotas": self.quotas, "excluded": self.excluded}

    def lines(self) -> list[str]:
        out = [f"student {self.student} (grader {self.grader_id}): drew {self.drawn} of {self.requested} questions "
               f"by the {self.distribution} distribution, seed {self.seed} -> {self.out_dir}",
               "  " + "level".ljust(15) + "weight".rjust(8) + "available".rjust(11) + "drawn".rjust(8)]
        out += [f"  {lv.ljust(15)}{self.weights[lv]:8.3f}{self.available[lv]:11d}{self.quotas[lv]:8d}"
                for lv in LEVEL_NAMES]
        out.append("  excluded: " + (", ".join(f"{k} {v}" for k, v in self.excluded.items()) or "none"))
        if self.decontamination:
            d = self.decontamination
            out.append(f"  decontamination: {d['benchmark_questions']} benchmark questions, by identity"
                       + (f" and shared word {d['ngram']}-grams" if d["ngram"] else " only (n-gram rule off)"))
        for reason, examples in self.examples.items():
            out += [f"  {reason}: {e['question_id'][:12]} {e['question'][:60]!r} ~ {e['benchmark_question'][:60]!r}"
                    + (f" (shares {e['shared']!r})" if e.get("shared") else "") for e in examples[:5]]
            if len(examples) > 5:
                out.append(f"  {reason}: {len(examples) - 5} more examples in sample_report.json")
        out += [f"  note: {note}" for note in self.notes]
        return out


def questions_in(files: list[str], ids: pa.Array) -> pa.Table:
    """The question fields of `ids` found in these pool files, read one file at a time (no read-ahead)."""
    return storage.dataset(files, schemas.POOL).to_table(
        columns=["question_id", *QUESTION_FIELDS], filter=pc.field("question_id").isin(ids), batch_readahead=1,
        fragment_readahead=1)


def with_questions(drawn: pa.Table, pool_dir: str | Path, on_ray: bool = False) -> pa.Table:
    """The drawn bank rows with their question fields from the pool, as a SAMPLES table (row order kept). Only the
    drawn questions' buckets are read; on Ray, a task per QUESTION_FILES_PER_TASK files: a few thousand questions
    drawn from millions touch most buckets, and reading them in the driver grew with the pool."""
    ids = drawn["question_id"].combine_chunks()
    pool_buckets = pool_layout.files_by_bucket(pool_dir)
    bits = len(next(iter(pool_buckets), ""))
    wanted = set(bucket_keys(ids, bits).to_pylist()) if bits and len(ids) else set()
    files = [f for b in sorted(wanted) for f in pool_buckets.get(b, [])]
    payloads = [{"files": files[i:i + QUESTION_FILES_PER_TASK]} for i in range(0, len(files),
                                                                               QUESTION_FILES_PER_TASK)]
    parts = run_groups(questions_in, payloads, on_ray, ids=ids)
    pool = pa.concat_tables(parts) if parts else questions_in([], ids)
    # A positional take, not Table.join: Arrow's hash join does not carry the nested `tests` struct.
    index = {q: i for i, q in enumerate(pool["question_id"].to_pylist())}
    if len(index) != pool.num_rows or len(index) != len(ids):
        raise schemas.SchemaError(f"sample: {len(ids)} drawn questions matched {pool.num_rows} pool rows")
    fields = pool.take(pa.array([index[q] for q in ids.to_pylist()], pa.int64()))
    table = drawn
    for name in QUESTION_FIELDS:
        table = table.append_column(name, fields[name])
    return table.select(schemas.SAMPLES.names).cast(schemas.SAMPLES)


def write_outputs(out_dir: str | Path, table: pa.Table, dist: Distribution, report: SampleReport) -> None:
    """samples.parquet, distribution.json, then sample_report.json (written last: its presence means done)."""
    out = str(out_dir)
    storage.write_table(table, storage.join(out, "samples.parquet"))
    save_distribution(dist, storage.join(out, "distribution.json"))
    blob = {**asdict(report), "drawn": report.drawn}
    storage.write_text(storage.join(out, "sample_report.json"), json.dumps(blob, indent=2))


def _eval_note(dist: Distribution) -> list[str]:
    p = dist.provenance
    if dist.kind != "eval" or p["graded_eval_questions"] == p["eval_questions"]:
        return []
    return [f"P_eval from {p['graded_eval_questions']} of {p['eval_questions']} eval questions "
            f"({p['eval_questions'] - p['graded_eval_questions']} not graded yet)"]


def decontamination_examples(marked: Marked, pool: list[str], benchmarks: Benchmarks, ngram_hits: pa.Table,
                             removed: dict[str, int]) -> dict[str, list[dict]]:
    """Up to EXAMPLES_PER_REASON excluded questions per decontamination rule (the smallest ids), with the benchmark
    question each matched: what the report shows so a user can judge the rules."""
    ids = {r: marked.first_ids(r, EXAMPLES_PER_REASON) if removed.get(r) else []
           for r in ("benchmark", "benchmark_ngram")}
    wanted = pa.array(sorted(set(ids["benchmark"]) | set(ids["benchmark_ngram"])), pa.string())
    if not len(wanted):
        return {}
    found = storage.dataset(pool, schemas.POOL).to_table(columns=["question_id", "question"],
                                                         filter=pc.field("question_id").isin(wanted))
    question = dict(zip(found["question_id"].to_pylist(), found["question"].to_pylist()))
    hits = {r["question_id"]: r for r in ngram_hits.filter(pc.is_in(ngram_hits["question_id"], wanted)).to_pylist()}
    out = {"benchmark": [{"question_id": q, "question": snippet(question[q]),
                          "benchmark_question": snippet(benchmarks.by_id[q]) or "(listed by question_id)"}
                         for q in ids["benchmark"]],
           "benchmark_ngram": [{**hits[q], "question": snippet(question[q])} for q in ids["benchmark_ngram"]]}
    return {reason: examples for reason, examples in out.items() if examples}


def check_eval_set_overlap(distribution: DistributionConfig, reported_questions: list[str]) -> dict | None:
    """P_eval's eval set must share no question with a benchmark the job reports: a DistributionError naming the
    shared questions, or, with `allow_overlap`, a note for the distribution's provenance (None: no overlap)."""
    if distribution.kind != "eval" or not reported_questions:
        return None
    questions = read_pool(distribution.eval_pool, ["question_id", "question"])
    shared = overlapping_questions(questions, reported_questions)
    if not shared:
        return None
    if not distribution.allow_overlap:
        shown = "; ".join(repr(q[:80]) for q in shared[:5])
        raise DistributionError(
            f"{len(shared)} of the {questions.num_rows} questions P_eval is measured on ({distribution.eval_pool}) "
            f"are in a benchmark the job reports, so the sample would be tuned on the test set: {shown}"
            f"{' ...' if len(shared) > 5 else ''}. Measure P_eval on a calibration split of its own, or set "
            "sample.distribution.allow_overlap: true (the report then says so)")
    return {"questions": len(shared), "of": questions.num_rows, "allowed": True}


def sample(bank_root: str | Path, pool_dir: str | Path, student: str, grader_id: str, config: SampleConfig,
           out_dir: str | Path, in_process_max_rows: int = bank.IN_PROCESS_MAX_ROWS,
           benchmark_questions: Sequence[str] = ()) -> SampleReport:
    """Draw `config.n` questions of `pool_dir` from `student`'s bank partition and write them to `out_dir`.
    A partition of more than `in_process_max_rows` rows is drawn on Ray Data (Ray must be up then; `adaptcot
    sample` starts it). `benchmark_questions`: the texts of the benchmarks the job evaluates on; they are excluded
    like the `exclude` lists (identity, then n-grams), and P_eval's eval set may not hold any of them
    (`check_eval_set_overlap`)."""
    overlap = check_eval_set_overlap(config.distribution, list(benchmark_questions))
    stored = manifest.read_manifest(str(bank_root), student, grader_id)
    if not stored.row_count("bank"):
        raise FileNotFoundError(f"no graded questions for {student} (grader {grader_id}) in {bank_root}; "
                                "run `adaptcot grade` first (`adaptcot bank summary BANK` lists what is there)")
    if not pool_files(pool_dir):
        raise FileNotFoundError(f"pool not found: {pool_dir} (create it with `adaptcot pool import`)")
    kind = config.distribution.kind
    # P_eval and P_C are known before looking at the pool; uniform weights need what is available (below).
    dist = None if kind == "uniform" else build_distribution(config.distribution, bank_root, student, grader_id)
    drop_ids = {"eval_set": set(eval_pool_ids(config.distribution.eval_pool).to_pylist())} if kind == "eval" \
        else {}  # training on the eval set would be contamination too
    bank_rows, pool = stored.row_count("bank"), pool_files(pool_dir)
    on_ray = bank_rows > in_process_max_rows
    benchmarks = read_benchmarks(config.exclude, benchmark_questions)
    drop_ids["benchmark"] = set(benchmarks.by_id)
    ngram = config.decontamination.ngram
    hits = pool_overlap(pool, ngram_index(benchmarks.texts, ngram), on_ray) if ngram else OVERLAP.empty_table()
    if ngram:
        drop_ids["benchmark_ngram"] = set(hits["question_id"].to_pylist())
    drop_ids["previous_sample"] = previous_sample_ids(config.exclude_previous)
    marked = Marked(str(bank_root), student, grader_id, str(pool_dir), config.domains, config.seed, drop_ids, on_ray)
    available, removed = marked.counts()
    if dist is None:
        dist = build_distribution(config.distribution, bank_root, student, grader_id, available)
    if overlap:
        dist = Distribution(dist.kind, dist.weights, {**dist.provenance, "benchmark_overlap": overlap})
    excluded = {"not_in_pool": bank_rows - sum(available.values()) - sum(removed.values()),
                **({"domain": removed.get("domain", 0)} if config.domains else {}),
                **{reason: removed.get(reason, 0) for reason in drop_ids}}
    quotas, notes = allocate(dist.weights, available, config.n)
    drawn = draw(marked.firsts(quotas).select(BANK_COLUMNS), quotas, config.seed)
    table = with_questions(drawn, pool_dir, on_ray)
    report = SampleReport(student, grader_id, config.seed, config.n, dist.kind, dist.weights, available, quotas,
                          excluded, _eval_note(dist) + notes, str(out_dir),
                          {"benchmark_questions": len(benchmarks.texts), "ngram": ngram},
                          decontamination_examples(marked, pool, benchmarks, hits, removed))
    write_outputs(out_dir, table, dist, report)
    return report
