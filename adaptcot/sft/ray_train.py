"""The SFT job on Ray Train: tokenise and order the records on the driver (`order.prepare`), run
`trainer.train_loop_per_worker` in a `TorchTrainer`, copy the exported model out, and report.

`train(cfg, data, out)` is what `adaptcot train`, `ray_jobs/train_sft.py` and the pipeline call (through
`adaptcot.job.stages`). Its run is named by a fingerprint of the data and settings: the same ones resume a killed
run from Ray Train's latest checkpoint (or return a finished run's model at once); other data or settings start a
new run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs  # noqa: F401  (pa.fs: checkpoints, data and exports on local paths or URIs)
import pyarrow.parquet as pq

from adaptcot.common import storage
from adaptcot.common.terminal import bar
from adaptcot.sft.order import DatasetError, optimizer_steps, prepare
from adaptcot.sft.train_config import TrainConfig
from adaptcot.sft.trainer import FINAL_MARKER, train_loop_per_worker


def log_history(trainer_state: dict) -> list[dict]:
    """The training log lines of a saved `trainer_state.json` (one per logging step, exactly once each)."""
    return [row for row in trainer_state.get("log_history", []) if "loss" in row]


@dataclass
class TrainReport:
    run_name: str
    data: dict
    global_step: int = 0
    model_dir: str = ""
    seconds: float = 0.0
    final_loss: float | None = None
    resumed_from_step: int | None = None  # the checkpoint a killed run was resumed from

    def lines(self) -> list[str]:
        resumed = f" (resumed from step {self.resumed_from_step})" if self.resumed_from_step else ""
        loss = "none" if self.final_loss is None else f"{self.final_loss:.4f}"
        return [f"run {self.run_name}: {self.global_step} steps in {self.seconds:.0f} s{resumed}, "
                f"final loss {loss}; model in {self.model_dir}"]

    def as_dict(self) -> dict:
        return asdict(self)


def data_digest(path: str) -> str:
    """Content fingerprint of the SFT records file (it names the run, with the settings)."""
    h = hashlib.sha256()
    with _open_input(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _open_input(path: str):
    fs, inner = storage.resolve(path)
    return fs.open_input_stream(inner)


_fs = storage.resolve  # (pyarrow filesystem, path inside it) for a local path or a URI


def _join(base: str, *parts: str) -> str:
    """`storage.join`, local paths made absolute (workers may run in another working directory)."""
    joined = storage.join(base, *parts)
    return joined if storage.is_remote(joined) else os.path.abspath(joined)


def train(cfg: TrainConfig) -> TrainReport:
    """Fine-tune `cfg.model` on the SFT records at `cfg.data`; everything under `cfg.out` (a path or URI). Ray must
    be up.

    `out/` holds `data/<run>.order.parquet` (the tokenised order), `ray/<run>/` (Ray Train's checkpoints), `model/`
    (the exported model), `metrics.jsonl` (one line per logging step) and `train_report.json`. The run's name is a
    fingerprint of the data and settings: running again with the same ones resumes (or, when finished, returns the
    exported model at once); other data or settings start a new run."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from transformers import AutoTokenizer

    started = time.perf_counter()
    if cfg.model is None or cfg.data is None:
        raise DatasetError("train: set train.model (the model to fine-tune) and train.data (its SFT records)")
    data, out = cfg.data, cfg.out
    if Path(cfg.model).exists():  # a local directory: workers may run in another working directory
        cfg = cfg.model_copy(update={"model": str(Path(cfg.model).absolute())})
    fs, data_path = _fs(data)
    if fs.get_file_info(data_path).type == pa.fs.FileType.NotFound:
        raise DatasetError(f"train: no SFT records at {data}")
    records = pq.read_table(data_path, filesystem=fs)
    order, data_report = prepare(records, AutoTokenizer.from_pretrained(cfg.model), cfg)
    run_name = "sft-" + cfg.fingerprint(data_digest(data))
    report = TrainReport(run_name=run_name, data=asdict(data_report), model_dir=_join(out, "model"))
    out_fs, out_path = _fs(out)
    report_path = _join(out_path, "train_report.json")
    if _finished(out_fs, out_path, run_name):
        previous = json.loads(out_fs.open_input_stream(report_path).read())
        return TrainReport(**previous)
    order_path = _join(out_path, "data", f"{run_name}.order.parquet")
    out_fs.create_dir(_join(out_path, "data"), recursive=True)
    pq.write_table(order, order_path, filesystem=out_fs)
    checkpoints = _join(out, "ray")
    # Live lines as training goes (every attempt appends: after a resume, the steps since the checkpoint repeat);
    # metrics.jsonl is rewritten at the end from the final trainer state, each step exactly once.
    metrics_path = None if "://" in out else _join(out_path, "metrics.live.jsonl")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.model_dump(), "model": cfg.model, "run_name": run_name,
                           "order_uri": order_path if "://" not in out else _join(out, "data",
                                                                                  f"{run_name}.order.parquet"),
                           "metrics_path": metrics_path},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(name=run_name, storage_path=checkpoints,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)))
    steps = optimizer_steps(order.num_rows, cfg)
    with bar(steps, "train", "step") as progress, _following(metrics_path, progress):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"train: run {run_name} ended without a final model")
    model_dir = _join(out_path, "model")
    if out_fs.get_file_info(model_dir).type != pa.fs.FileType.NotFound:
        out_fs.delete_dir(model_dir)
    out_fs.create_dir(model_dir, recursive=True)
    with result.checkpoint.as_directory() as final:
        pa.fs.copy_files(str(Path(final).absolute()), model_dir, source_filesystem=pa.fs.LocalFileSystem(),
                         destination_filesystem=out_fs)
        state = json.loads((Path(final) / "trainer_state.json").read_text())
        report.resumed_from_step = json.loads((Path(final) / FINAL_MARKER).read_text())["resumed_from_step"]
    history = log_history(state)
    with out_fs.open_output_stream(_join(out_path, "metrics.jsonl")) as f:  # exact: each step once, after resumes
        f.write("".join(json.dumps(row) + "\n" for row in history).encode())
    report.global_step = state.get("global_step", 0)
    report.final_loss = history[-1]["loss"] if history else None
    report.seconds = round(time.perf_counter() - started, 1)
    with out_fs.open_output_stream(report_path) as f:
        f.write(json.dumps(report.as_dict(), indent=2).encode())
    return report


@contextlib.contextmanager
def _following(metrics_path: str | None, progress):
    """Move `progress` to the last step in the workers' live metrics file while the block runs (Ray Train's `fit`
    blocks the driver; the file is the one thing it can watch). Without a local file the bar jumps at the end."""
    stop = threading.Event()

    def follow():
        while not stop.wait(1.0):
            try:
                last = Path(metrics_path).read_text().rstrip("\n").rsplit("\n", 1)[-1]
                step = json.loads(last)["step"] if last else 0
            except (OSError, ValueError, KeyError):
                continue
            progress.update(max(0, step - progress.n))

    watcher = threading.Thread(target=follow, daemon=True) if metrics_path else None
    if watcher:
        watcher.start()
    try:
        yield
    finally:
        stop.set()
        if watcher:
            watcher.join()
    progress.update(progress.total - progress.n)  # finished (a failure leaves the bar where it stopped)


def _finished(fs, out_path: str, run_name: str) -> bool:
    marker = _join(out_path, "model", FINAL_MARKER)
    report = _join(out_path, "train_report.json")
    if fs.get_file_info(marker).type == pa.fs.FileType.NotFound or \
            fs.get_file_info(report).type == pa.fs.FileType.NotFound:
        return False
    return json.loads(fs.open_input_stream(report).read()).get("run_name") == run_name
