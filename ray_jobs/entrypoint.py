"""What every entrypoint in `ray_jobs/` shares: the command line (`--config FILE`, repeatable `--set KEY=VALUE`),
loading the job config, and printing a stage's report lines. Not an entrypoint itself.
"""

from __future__ import annotations

import argparse

from adaptcot.config import ConfigError, JobConfig, load_config


def parser(doc: str) -> argparse.ArgumentParser:
    """The flags of every job entrypoint; `doc` (the module docstring, with its run commands) is the --help text."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a job YAML, e.g. configs/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set run_dir=runs/r2 (repeatable)")
    return p


def load(args: argparse.Namespace, section: str | None = None) -> JobConfig:
    """The validated job config; exits with the validation message (no traceback) when it is bad, or when the
    stage's `section` is missing."""
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    if section is not None and getattr(cfg, section) is None:
        raise SystemExit(f"error: {args.config} has no `{section}` section")
    return cfg


def config_from_command_line(doc: str, section: str | None = None) -> JobConfig:
    return load(parser(doc).parse_args(), section)


def print_report(title: str, lines: list[str]) -> None:
    """`[stage] ...` then the report's lines, indented (the way `adaptcot run` prints them)."""
    print(title + "\n" + "\n".join("  " + line for line in lines), flush=True)


def reported(title: str, report):
    """A stage's report (anything with `.lines()`), printed under `title`, and returned."""
    print_report(title, report.lines())
    return report
