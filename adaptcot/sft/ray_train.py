"""The SFT job on Ray Train: tokenise the records on Ray Data, order them on the driver from their lengths and ids
alone (`order.training_order`), give each worker its share (`shards.py`), run `trainer.train_loop_per_worker` in a
`TorchTrainer`, copy the exported model out, and report.

`train(cfg, data, out)` is what `adaptcot train`, `ray_jobs/train_sft.py` and the pipeline call (through
`adaptcot.job.stages`). Its run is named by a fingerprint of the data and settings: the same ones resume a killed
run from Ray Train's latest checkpoint (or return a finished run's model at once); other data or settings start a
new run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.fs  # noqa: F401  (pa.fs: checkpoints, data and exports on local paths or URIs)
import pyarrow.parquet as pq

from adaptcot.common import storage
from adaptcot.common.schemas import require_columns
from adaptcot.common.terminal import bar
from adaptcot.sft.lora import check_targets
from adaptcot.sft.order import (
    RECORD_COLUMNS,
    DataReport,
    DatasetError,
    cascod_pairs,
    count_statuses,
    keep_whole_pairs,
    measure,
    optimizer_steps,
    order_report,
    sort_by_record,
    tokenize_batch,
    training_order,
)
from adaptcot.sft.shards import write_shards
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


def _columns(path: str) -> list[str]:
    fs, inner = _fs(path)
    return pq.read_schema(inner, filesystem=fs).names


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def _tokenize(batch: pa.Table, model: str, train: dict) -> pa.Table:
    return tokenize_batch(batch, _tokenizer(model), TrainConfig(**train))


def tokenize_on_ray(cfg: TrainConfig, data: str, tokens_dir: str) -> list[str]:
    """The records tokenised by Ray Data tasks into `tokens_dir` (order.TOKENS_SCHEMA, one row per record); the
    files, in the order their rows are numbered. A finished tokenisation (its `_done` marker) is reused."""
    import ray

    done = _join(tokens_dir, "_done")
    if not storage.exists(done):
        storage.remove_tree(tokens_dir)
        columns = list(RECORD_COLUMNS) + (["level"] if "level" in _columns(data) else [])
        try:
            ray.data.read_parquet(data, columns=columns, partitioning=None).map_batches(
                _tokenize, fn_kwargs={"model": cfg.model, "train": cfg.model_dump()}, batch_format="pyarrow",
                batch_size=256, num_cpus=0.5).write_parquet(tokens_dir)
        except Exception as error:  # a bad record stops the run with its own message, not Ray's wrapping
            cause = error
            while cause is not None and not isinstance(cause, DatasetError):
                cause = getattr(cause, "cause", None) or cause.__cause__
            raise (DatasetError(str(cause).splitlines()[-1]) if cause is not None else error) from None
        storage.write_text(done, "")
    return storage.list_files(tokens_dir, "*.parquet")


def prepare_data(cfg: TrainConfig, data: str, data_dir: str, run_name: str) -> tuple[list[str], str, DataReport,
                                                                                         int]:
    """Tokenise on Ray Data, then on the driver from ids, kinds and lengths only (no token ids): the report, the
    CasCoD pairs, the order (`<run>.order.parquet`, for the record) and each rank's share (`<run>.shards/`).
    Returns (token files, shards directory, report, examples in the order)."""
    token_files = tokenize_on_ray(cfg, data, _join(data_dir, f"{run_name}.tokens"))
    meta = storage.dataset(token_files).to_table(columns=["record_id", "kind", "level", "status", "n_tokens",
                                                          "prompt_tokens"])
    meta = meta.append_column("token_row", pa.array(range(meta.num_rows), pa.int64()))
    report = count_statuses(meta, cfg)
    used = sort_by_record(meta.filter(pa.compute.equal(meta["status"], "ok")))
    measure(used, report)
    pairs = None
    if cfg.objective == "cascod":
        pairs = cascod_pairs(storage.dataset([data]).to_table(
            columns=[c for c in ("record_id", "cot_id", "kind") if c in _columns(data)]))
        used = keep_whole_pairs(used, pairs, cfg, report)
    order = training_order(used, cfg, pairs)
    order_report(order, cfg, report)
    storage.write_table(order, _join(data_dir, f"{run_name}.order.parquet"))
    shards = _join(data_dir, f"{run_name}.shards")
    write_shards(order, cfg, shards)
    return token_files, shards, report, order.num_rows


def train(cfg: TrainConfig) -> TrainReport:
    """Fine-tune `cfg.model` on the SFT records at `cfg.data`; everything under `cfg.out` (a path or URI). Ray must
    be up.

    `out/` holds `data/<run>.order.parquet` (the tokenised order), `ray/<run>/` (Ray Train's checkpoints), `model/`
    (the exported model), `metrics.jsonl` (one line per logging step) and `train_report.json`. The run's name is a
    fingerprint of the data and settings: running again with the same ones resumes (or, when finished, returns the
    exported model at once); other data or settings start a new run."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.perf_counter()
    if cfg.model is None or cfg.data is None:
        raise DatasetError("train: set train.model (the model to fine-tune) and train.data (its SFT records)")
    data, out = cfg.data, cfg.out
    if Path(cfg.model).exists():  # a local directory: workers may run in another working directory
        cfg = cfg.model_copy(update={"model": str(Path(cfg.model).absolute())})
    if cfg.lora is not None:  # names no module of the model: fail here, not in every worker
        check_targets(cfg.model, cfg.lora)
    fs, data_path = _fs(data)
    if fs.get_file_info(data_path).type == pa.fs.FileType.NotFound:
        raise DatasetError(f"train: no SFT records at {data}")
    require_columns(pa.schema([pa.field(c, pa.null()) for c in _columns(data)]), RECORD_COLUMNS, "train")
    run_name = "sft-" + cfg.fingerprint(data_digest(data))
    out_fs, out_path = _fs(out)
    report_path = _join(out_path, "train_report.json")
    if _finished(out_fs, out_path, run_name):
        previous = json.loads(out_fs.open_input_stream(report_path).read())
        return TrainReport(**previous)
    data_dir = _join(out, "data")
    token_files, order_shards, data_report, n_examples = prepare_data(cfg, data, data_dir, run_name)
    report = TrainReport(run_name=run_name, data=asdict(data_report), model_dir=_join(out, "model"))
    checkpoints = _join(out, "ray")
    # Live lines as training goes (every attempt appends: after a resume, the steps since the checkpoint repeat);
    # metrics.jsonl is rewritten at the end from the final trainer state, each step exactly once.
    metrics_path = None if "://" in out else _join(out_path, "metrics.live.jsonl")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.model_dump(), "model": cfg.model, "run_name": run_name,
                           "token_files": token_files, "order_shards": order_shards, "metrics_path": metrics_path},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(name=run_name, storage_path=checkpoints,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)))
    steps = optimizer_steps(n_examples, cfg)
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
