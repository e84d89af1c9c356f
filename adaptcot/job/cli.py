"""The `adaptcot` command. Job commands take a job config and run through `job/launch.py` (quiet terminal, logs and
provenance in the run directory); `ray_jobs/<stage>.py` runs the same commands (`job_command`).

  adaptcot run --config configs/local.yaml [--set KEY=VALUE ...] [--verbose]    the whole job
  adaptcot ablate --config C         adaptive vs uniform sampling and CasCoD vs CoT, over seeds, with intervals
  adaptcot import --config C         the job's question pool (configured sources, or its synthetic pool)
  adaptcot grade --config C [--pool DIR] [--student MODEL] [--prm MODEL] [--bank DIR] [--samples N]
  adaptcot sample --config C         draw questions from the student's bank by a difficulty distribution
  adaptcot teach --config C [--dry-run]    teacher CoTs for the sample (resumable), verified and filtered
  adaptcot build-sft --config C      SFT records (standard CoT and/or CasCoD) from the kept CoTs
  adaptcot train --config C          fine-tune the student on the SFT records (Ray Train), export the model
  adaptcot eval --config C [--which before|after|both]     the job's student before and after SFT
  adaptcot eval --model M --benchmarks math500,gsm8k|FILE... [--n 8] [--out DIR] [--cascaded [--sft-records SFT]]
                [--levels BANK STUDENT]

Tools that need no job config:
  adaptcot pool import SRC... --domain {math,code} --out DIR [--preset P] [--map FIELD=COLUMN ...]
  adaptcot tiny-models --out DIR [--seed N]
  adaptcot verify --input FILE --output FILE [--workers N] [--timeout S] [--isolation namespaces|none]
  adaptcot bank summary BANK [--json]  |  adaptcot bank compare BANK STUDENT_A STUDENT_B [--json]
  adaptcot bank migrate BANK  |  adaptcot pool migrate DIR   (a bank or pool of the layout before buckets)
  adaptcot report RUN_DIR            one offline HTML page of a run's figures (RUN_DIR/report.html)
  adaptcot compare NAME=PATH NAME=PATH [--out DIR] [--joint]   trace-style comparison: CoT sets, training, students
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from adaptcot.common.provenance import version
from adaptcot.job import launch
from adaptcot.job.config import ConfigError, load_config
from adaptcot.pool.presets import PRESETS, MappingError, parse_map
from adaptcot.pool.sources import SourceError
from adaptcot.verify.sandbox import SandboxUnavailable

# --- job commands: one stage, the whole job, the ablation --------------------------------------------------------
_GRADE_FLAGS = {"pool": "grade.pool", "student": "grade.student.model", "student_name": "grade.student.name",
                "prm": "grade.prm.model", "bank": "grade.bank", "samples": "grade.student.sampling.n"}


def _grade_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool")
    p.add_argument("--student", help="student model: local directory or hub id")
    p.add_argument("--student-name", help="the student's name in the bank")
    p.add_argument("--prm", help="process reward model: local directory or hub id")
    p.add_argument("--bank")
    p.add_argument("--samples", type=int, help="samples per question (n)")


def _job(args: argparse.Namespace):
    overrides = list(args.overrides)
    if args.command == "grade":  # flags are config overrides, applied before validation
        overrides = [f"{key}={getattr(args, name)}" for name, key in _GRADE_FLAGS.items()
                     if getattr(args, name) is not None] + overrides
    return load_config(args.config, overrides)


def cmd_job(args: argparse.Namespace) -> int:
    """A job command: one stage, `run` (every stage) or `ablate`, through `launch.launch`."""
    from adaptcot.job import ablation, pipeline, stages

    cfg, uses_ray = _job(args), True
    if getattr(args, "dry_run", False):  # reads the sample and what is stored; sends nothing, writes nothing
        print("\n".join(stages.teach_plan(cfg).lines()))
        return 0
    if args.command == "run":
        work, checks = pipeline.run, pipeline.checks(cfg)
    elif args.command == "ablate":
        work, checks = pipeline.ablate, {"ablate": ablation.check, **pipeline.checks(cfg)}
    elif args.command == "eval":
        names = {"before": ["eval-before"], "after": ["eval-after"], "both": ["eval-before", "eval-after"]}[args.which]
        work, checks = _stages_work(names), {names[0]: stages.STAGES[names[0]].check}
    else:
        name = args.command
        work, checks = _stages_work([name]), {name: stages.STAGES[name].check}
        uses_ray = stages.STAGES[name].uses_ray  # build-sft reads and writes Parquet in this process
    for name in checks:
        section = stages.STAGES[name].section if name in stages.STAGES else None
        if section is not None and getattr(cfg, section) is None:
            print(f"adaptcot: error: {args.config} has no `{section}` section", file=sys.stderr)
            return launch.EXIT_BAD_INPUT
    return launch.launch(args.command, cfg, work, checks, verbose=args.verbose, uses_ray=uses_ray)


def _stages_work(names: list[str]) -> Callable:
    from adaptcot.job import pipeline

    def work(cfg) -> None:
        summary: dict = {"stages": {}}
        for name in names:
            pipeline.run_stage(cfg, name, summary, check=False)
    return work


# --- tools without a job config ------------------------------------------------------------------------------------
def cmd_pool_import(args: argparse.Namespace) -> int:
    from adaptcot.pool.importer import PoolImportConfig, import_pool

    cfg = PoolImportConfig(sources=args.sources, domain=args.domain, out=args.out, preset=args.preset,
                           mapping=parse_map(args.map), max_question_chars=args.max_question_chars,
                           hf_split=args.hf_split, hf_config=args.hf_config)
    report = import_pool(cfg)
    print("\n".join(report.lines()))
    print(f"pool: {args.out}/pool  rejects: {args.out}/rejects")
    return 0


def cmd_tiny_models(args: argparse.Namespace) -> int:
    from adaptcot.demo.tiny_models import build_tiny_models

    for name, path in build_tiny_models(args.out, seed=args.seed).items():
        print(f"{name}: {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from adaptcot.verify.code_tests import CodeVerifyConfig
    from adaptcot.verify.files import rejects_path, verify_file
    from adaptcot.verify.sandbox import SandboxConfig

    sandbox = SandboxConfig(isolation=args.isolation, timeout_s=args.timeout, memory_mb=args.memory_mb)
    config = CodeVerifyConfig(sandbox=sandbox, workers=args.workers, extract=args.extract,
                              float_tolerance=args.float_tolerance)
    report = verify_file(args.input, args.output, config, math_workers=args.workers,
                         math_extraction=args.math_extraction)
    print("\n".join(report.lines()))
    print(f"output: {args.output}  rejects: {rejects_path(args.output)}")
    return 0


def cmd_pool_migrate(args: argparse.Namespace) -> int:
    from adaptcot.pool.layout import migrate_pool

    print(f"{migrate_pool(args.pool_dir)} questions moved into question buckets in {args.pool_dir}")
    return 0


def cmd_bank(args: argparse.Namespace) -> int:
    from adaptcot.grade import bank

    if args.bank_command == "summary":
        rows = bank.summary(args.bank)
        print(json.dumps(rows, indent=2) if args.json else bank.format_summary(rows))
    elif args.bank_command == "migrate":
        from adaptcot.grade.migrate import migrate_bank

        print(json.dumps(migrate_bank(args.bank), indent=2))
    else:
        result = bank.compare(args.bank, args.a, args.b)
        print(json.dumps(result, indent=2) if args.json else bank.format_compare(result))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate the job's student (`--config`), or any model on benchmarks: known names, or local files."""
    if args.config:
        return cmd_job(args)
    if not args.model or not args.benchmarks:
        raise ValueError("eval: give --config (the job's student), or --model and --benchmarks")
    from adaptcot.common.runtime import set_cpu_env_defaults
    from adaptcot.evaluate.evaluation import (
        KNOWN_BENCHMARKS,
        EvalConfig,
        LevelsConfig,
        evaluate,
        format_metrics,
        load_benchmark,
    )
    from adaptcot.grade.answering import EngineConfig, ResourcesConfig, SamplingConfig
    from adaptcot.job.config import JobConfig, RayConfig

    benchmarks = []
    for item in (b for spec in args.benchmarks for b in spec.split(",") if b):
        if item in KNOWN_BENCHMARKS:
            benchmarks.append(item)
        else:  # a local file or hf:NAME in the pool format (or with --preset / --map)
            benchmarks.append({"name": item.rsplit("/", 1)[-1].split(".")[0], "source": item, "domain": args.domain,
                               "preset": args.preset, "mapping": parse_map(args.map), "limit": args.limit})
    model = {"model": args.model, "sampling": SamplingConfig(n=args.n, temperature=args.temperature,
                                                             top_p=args.top_p, max_tokens=args.max_tokens),
             "engine": EngineConfig(max_model_len=args.max_model_len, enforce_eager=args.enforce_eager,
                                    dtype=args.dtype),
             "resources": ResourcesConfig(use_gpu=args.gpu)}
    cfg = EvalConfig(model=model, benchmarks=benchmarks, out=args.out, cascaded=args.cascaded,
                     sft_records=args.sft_records,
                     levels=LevelsConfig(bank=args.levels[0], student=args.levels[1]) if args.levels else None)
    set_cpu_env_defaults()
    job = JobConfig(run_dir=args.out, ray=RayConfig(address=args.ray_address), tiny_models={"enabled": False})

    def check(_) -> None:  # each benchmark is imported (once) before Ray starts: one that cannot be read fails first
        for spec in cfg.specs():
            load_benchmark(spec, cfg.out)

    def work(_) -> None:
        from adaptcot.common import terminal

        with terminal.stage("eval", f"evaluating {cfg.model.display_name}") as shown:
            shown.lines(format_metrics(evaluate(cfg)))

    return launch.launch("eval", job, work, {"eval": check}, verbose=args.verbose, config=cfg.model_dump(mode="json"))


def cmd_report(args: argparse.Namespace) -> int:
    from adaptcot.common import storage
    from adaptcot.evaluate.report import write_report

    if not storage.is_dir(args.run_dir):
        raise FileNotFoundError(f"no run directory {args.run_dir}")
    print(write_report(args.run_dir))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from adaptcot.evaluate.compare import format_comparison, write_comparison

    sides = {}
    for item in args.sides:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"compare: {item!r} is not NAME=PATH")
        if name in sides:
            raise ValueError(f"compare: side name {name!r} given twice")
        sides[name] = path
    comparison, page = write_comparison(sides, args.out, joint=args.joint)
    print("\n".join(format_comparison(comparison)))
    print(page)
    return 0


# --- the parser ------------------------------------------------------------------------------------------------------
JOB_COMMANDS = {
    "run": "run the whole job: every stage whose config section is present",
    "ablate": "P_eval vs uniform, P_C and another student's P_eval; CasCoD vs CoT; over seeds, with intervals",
    "import": "import the job's question pool (configured sources, or its synthetic pool)",
    "grade": "grade the pool for the student into the question bank (and the eval set for P_eval)",
    "sample": "draw questions from the student's bank by a difficulty distribution",
    "teach": "teacher CoTs for the sample (resumable), verified and filtered",
    "build-sft": "SFT records (standard CoT and/or CasCoD) from the kept CoTs",
    "train": "fine-tune the student on the SFT records with Ray Train; export the model",
}


def job_flags(p: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """A job command's flags (also what `ray_jobs/<stage>.py --help` shows, with its own docstring)."""
    launch.add_job_flags(p)
    if command == "grade":
        _grade_flags(p)
    if command == "teach":
        p.add_argument("--dry-run", action="store_true", help="print requests, tokens and dollars; send nothing")
    p.set_defaults(func=cmd_job, command=command)
    return p


def eval_flags(ev: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ev.add_argument("--config", help="a job config: evaluate its student before and/or after SFT")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--which", choices=["before", "after", "both"], default="both", help="with --config")
    ev.add_argument("--verbose", action="store_true")
    ev.add_argument("--model", help="a local model directory or a Hugging Face hub id")
    ev.add_argument("--benchmarks", nargs="+",
                    help="known: math500 aime24 aime25 gsm8k gpqa_diamond humaneval mbpp livecodebench; files; hf:NAME")
    ev.add_argument("--domain", choices=["math", "code"], default="math", help="for files that are not known names")
    ev.add_argument("--preset", default="adaptcot", help="column preset for files (default: the pool format)")
    ev.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN")
    ev.add_argument("--limit", type=int, default=None, help="the first N questions of each file")
    ev.add_argument("--n", type=int, default=8)
    ev.add_argument("--temperature", type=float, default=0.6)
    ev.add_argument("--top-p", type=float, default=0.95)
    ev.add_argument("--max-tokens", type=int, default=2048)
    ev.add_argument("--max-model-len", type=int, default=8192)
    ev.add_argument("--dtype", default="auto")
    ev.add_argument("--enforce-eager", action="store_true")
    ev.add_argument("--gpu", action="store_true")
    ev.add_argument("--cascaded", action="store_true", help="rationale first, then the answer (CasCoD students)")
    ev.add_argument("--sft-records", metavar="PATH", default=None,
                    help="with --cascaded: the sft_records.parquet (or its directory) the model was trained on; its "
                         "recorded rationale prompt is used and the model's prompts must match it")
    ev.add_argument("--levels", nargs=2, metavar=("BANK", "STUDENT"), help="report per difficulty level")
    ev.add_argument("--out", default="runs/eval")
    ev.add_argument("--ray-address", default=None)
    ev.set_defaults(func=cmd_eval, command="eval")
    return ev


def _tool_parsers(sub) -> None:
    pool = sub.add_parser("pool", help="question pool commands").add_subparsers(dest="pool_command", required=True)
    imp = pool.add_parser("import", help="import question sources into a de-duplicated Parquet pool")
    imp.add_argument("sources", nargs="+", metavar="SRC",
                     help="JSONL/JSON/Parquet/CSV file, dataset directory, or hf:NAME")
    imp.add_argument("--domain", choices=["math", "code"], required=True)
    imp.add_argument("--out", required=True, help="pool directory (created; an existing pool is added to)")
    imp.add_argument("--preset", help=f"column preset: {', '.join(PRESETS)}")
    imp.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                     help="map a pool field to a source column (question, answer, answer_format, solution, tests, "
                          "tests_format, entry_point, starter_code, setup_code, id); overrides the preset")
    imp.add_argument("--max-question-chars", type=int, default=32_000)
    imp.add_argument("--hf-split", default="train")
    imp.add_argument("--hf-config", default=None)
    imp.set_defaults(func=cmd_pool_import)
    pool_migrate = pool.add_parser("migrate", help="rewrite a pool of the first layout into question buckets")
    pool_migrate.add_argument("pool_dir")
    pool_migrate.set_defaults(func=cmd_pool_migrate)

    tiny = sub.add_parser("tiny-models", help="build tiny student, teacher and PRM models locally")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_models)

    verify = sub.add_parser("verify", help="verify (question, response) rows, math and code (docs/verification.md)")
    verify.add_argument("--input", required=True, help="JSONL or Parquet rows: response + reference_answer or tests")
    verify.add_argument("--output", required=True, help=".jsonl or .parquet: the input rows plus verdict columns")
    verify.add_argument("--workers", type=int, default=2, help="sandboxes (and math verifier processes)")
    verify.add_argument("--timeout", type=float, default=4.0, help="seconds per test case")
    verify.add_argument("--memory-mb", type=int, default=1024, help="memory per test process")
    verify.add_argument("--isolation", choices=["namespaces", "none"], default="namespaces",
                        help="none: no isolation, for trusted code only")
    verify.add_argument("--extract", choices=["last", "first", "longest", "all"], default="last",
                        help="which fenced python block of a response is the program")
    verify.add_argument("--float-tolerance", type=float, default=None)
    verify.add_argument("--math-extraction", choices=["math_verify", "strict"], default="math_verify",
                        help="strict: only a boxed answer, an answer marker or a one-line answer; math_verify: also "
                             "Math-Verify's last expression, for answers that finished (docs/verification.md)")
    verify.set_defaults(func=cmd_verify)

    bank_cmd = sub.add_parser("bank", help="question bank commands").add_subparsers(dest="bank_command",
                                                                                   required=True)
    summary = bank_cmd.add_parser("summary", help="level histogram per student")
    summary.add_argument("bank")
    summary.add_argument("--json", action="store_true")
    summary.set_defaults(func=cmd_bank)
    compare = bank_cmd.add_parser("compare", help="how one student's levels map to another's")
    compare.add_argument("bank")
    compare.add_argument("a", help="student name (or NAME@GRADER_ID)")
    compare.add_argument("b")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(func=cmd_bank)
    migrate = bank_cmd.add_parser("migrate", help="rewrite a bank of the first layout into question buckets")
    migrate.add_argument("bank")
    migrate.set_defaults(func=cmd_bank)

    rep = sub.add_parser("report", help="write RUN_DIR/report.html: levels, sampling, teacher, training, eval")
    rep.add_argument("run_dir")
    rep.set_defaults(func=cmd_report)

    cmp = sub.add_parser("compare", help="compare teachers' CoT sets and the students trained on them (trace style)")
    cmp.add_argument("sides", nargs="+", metavar="NAME=PATH",
                     help="a run directory, a cots.parquet, or an evaluated model's directory (eval/<model>/)")
    cmp.add_argument("--out", default="runs/compare", help="where comparison.json and comparison.html go")
    cmp.add_argument("--joint", action="store_true",
                     help="seed 004's joint filter: CoT sets cut to the questions every side kept a CoT for; the cut "
                          "sets are written to OUT/joint/NAME/cots.parquet")
    cmp.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptcot", description="Student-adapted CoT distillation on Ray.")
    parser.add_argument("--version", action="version", version=f"adaptcot {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in JOB_COMMANDS.items():
        job_flags(sub.add_parser(command, help=text), command)
    eval_flags(sub.add_parser("eval", help="evaluate the job's student before/after SFT, or any model on benchmarks"))
    _tool_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _dispatch(build_parser().parse_args(argv))


def job_command(command: str, doc: str, argv: list[str] | None = None) -> int:
    """`ray_jobs/<stage>.py`: the job command `command`, with the script's docstring as its --help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = (eval_flags(parser) if command == "eval" else job_flags(parser, command)).parse_args(argv)
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except (ConfigError, MappingError, SourceError, SandboxUnavailable, FileNotFoundError, KeyError, ValueError) as e:
        print(f"adaptcot: error: {e}", file=sys.stderr)
        return 2
    except ConnectionError as e:  # e.g. the Hugging Face hub, for a benchmark or model named by hub id
        print(f"adaptcot: error: {e} (no network? give datasets as local files and models as local directories)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
