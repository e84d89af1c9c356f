"""The job's later stages, each reading the previous one's output under `run_dir`: sample, teach (+ filter), SFT.

    <run_dir>/samples/  samples.parquet, distribution.json, sample_report.json    (adaptcot sample)
    <run_dir>/teach/    journal/, parts/ (every CoT as it arrived), cots.parquet (verified, with drop reasons),
                        filter_report.json                                         (adaptcot teach)
    <run_dir>/sft/      sft_records.parquet, sft_report.json                      (adaptcot build-sft)
    <run_dir>/train/    model/ (Hugging Face format), metrics.jsonl, train_report.json, ray/ (checkpoints),
                        data/ (the tokenised training order)                        (adaptcot train)

Each function takes the whole job config and uses its own section; `adaptcot run` calls them in order after
grading, and the CLI calls them one at a time. Teach and filter need Ray (an in-cluster teacher, filter actors).
"""

from __future__ import annotations

import functools
import json

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from adaptcot import sampling, sft_data, sft_train, storage, teacher
from adaptcot.config import JobConfig, resolve_grade, resolve_sample, resolve_teacher, resolve_train
from adaptcot.cot_filter import QUESTION_COLUMNS, CoTFilterActor, FilterConfig, FilterReport, endpoint_judge


def samples_path(cfg: JobConfig) -> str:
    return cfg.path("samples", "samples.parquet")


def run_sample(cfg: JobConfig) -> sampling.SampleReport:
    grade = resolve_grade(cfg)
    return sampling.sample(grade.bank, grade.pool, grade.student.display_name, grade.grader_id(),
                           resolve_sample(cfg), cfg.path("samples"))


def filter_cots_on_ray(cots: pa.Table, samples: pa.Table, config: FilterConfig) -> pa.Table:
    """Verify every stored CoT with filter actors (math-verify processes, warm sandboxes); one row per CoT."""
    import ray

    if cots.num_rows == 0:
        return cots
    index = {q: i for i, q in enumerate(samples["question_id"].to_pylist())}
    # A positional take, not Table.join: the join does not carry the nested `tests` struct.
    questions = samples.select(list(QUESTION_COLUMNS)).take([index[q] for q in cots["question_id"].to_pylist()])
    joined = cots.drop_columns(["domain"])
    for name in QUESTION_COLUMNS[1:]:
        joined = joined.append_column(name, questions[name])
    judge = functools.partial(endpoint_judge, config.judge) if config.judge else None
    out = ray.data.from_arrow(joined).map_batches(
        CoTFilterActor, fn_constructor_kwargs={"config": config, "judge_factory": judge},
        concurrency=config.concurrency, num_cpus=config.num_cpus, batch_size=64, batch_format="pyarrow")
    table = pa.concat_tables([ray.get(ref) for ref in out.to_arrow_refs()])
    if table.num_rows != cots.num_rows:
        raise RuntimeError(f"filter: {cots.num_rows} CoTs in, {table.num_rows} out")
    return table.sort_by([("question_id", "ascending"), ("sample_index", "ascending")])


def run_teach(cfg: JobConfig, journal_dir: str | None = None) -> dict:
    """Generate the CoTs still missing, then verify all stored ones into `teach/cots.parquet`.

    `journal_dir` (default `teach/`) is where CoTs are stored as they arrive; jobs that share one (the ablation's
    arms) never pay twice for the same request."""
    out, teacher_cfg = cfg.path("teach"), resolve_teacher(cfg)
    journal = journal_dir or out
    report = teacher.teach(samples_path(cfg), teacher_cfg, journal)
    samples = storage.read_table(samples_path(cfg))
    stored = teacher.collect(journal)
    # CoTs of questions no longer in the sample (it was redrawn), or from other prompts or sampling settings, stay
    # stored for later but are not used now.
    pc = pa.compute
    in_sample = pc.and_(pc.is_in(stored["question_id"], value_set=samples["question_id"].combine_chunks()),
                        pc.and_(pc.equal(stored["teacher"], teacher_cfg.name),
                                pc.equal(stored["sampling_key"], teacher_cfg.sampling_key())))
    filtered = filter_cots_on_ray(stored.filter(in_sample), samples, cfg.filter)
    storage.write_table(filtered, storage.join(out, "cots.parquet"))
    kept = FilterReport.of(filtered)
    storage.write_text(storage.join(out, "filter_report.json"), json.dumps(
        {"teach": report.__dict__, "filter": kept.__dict__}, indent=2, default=dict))
    return {"teach": report, "filter": kept}


def run_build_sft(cfg: JobConfig) -> sft_data.SFTReport:
    cots = storage.read_table(cfg.path("teach", "cots.parquet"))
    table, report = sft_data.build_sft(cots, storage.read_table(samples_path(cfg)), cfg.sft)
    sft_data.write_records(table, cfg.path("sft"), report)
    return report


def run_train(cfg: JobConfig) -> sft_train.TrainReport:
    """Fine-tune the student on the SFT records with Ray Train (Ray must be initialised)."""
    train_cfg, data, out = resolve_train(cfg)
    return sft_train.train(train_cfg, data, out)

