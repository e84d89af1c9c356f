"""Process-wide knobs, set once and visibly by entrypoints: the vLLM-on-CPU environment, Ray Data's context, Ray's
start-up (`init_ray`), a table as a Ray dataset of enough blocks for a pool of actors (`dataset_in_blocks`), reading
a Ray dataset back block by block with a progress bar (`collect_blocks`), and running one function over groups of
question buckets here or as Ray tasks (`run_groups`)."""

from __future__ import annotations

import os

# For a local cluster on a CPU machine (the laptop default). A cluster's own settings come from its runtime env.
CPU_ENV_DEFAULTS = {
    # vLLM's CPU build: a 1 GiB KV cache fits small machines; its default assumes a server.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # In-process engine core: ~2 s to load a small model on the CPU instead of ~20 s.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # Ray Train's controller polls its workers this often (default 2 s): a finished training function is noticed
    # that late. Polling every 0.1 s (the tests' setting) costs ~5-10% of training throughput on 2 cores
    # (benchmarks/sft_throughput.py); 1 s costs nothing measurable.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1",
}


def set_cpu_env_defaults() -> dict[str, str]:
    """Set the defaults above where the user has not; returns the variables workers should inherit."""
    for key, value in CPU_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in CPU_ENV_DEFAULTS}


def configure_ray_data(progress_bars: bool = True) -> None:
    """Ray Data knobs, process-wide. Parquet's V2 reader lists files in a task that always asks for a whole CPU;
    on a small node whose CPUs are held by engine actors that task never starts and the job hangs silently. The
    V1 reader honours `read_parquet(num_cpus=...)`. The same trap with shuffle aggregators: see below.
    `progress_bars`: Ray Data's own per-operator bars (off in a quiet run, which draws one bar per stage)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.use_datasource_v2 = False
    context.enable_progress_bars = progress_bars
    # Hash shuffles (the bank's joins and group-bys) give each aggregator actor up to a quarter of the cluster's
    # CPUs; a plan of several shuffles then holds every CPU of a small node and its map tasks never start. The
    # aggregators mostly wait on their inputs: a tenth of a CPU each is enough.
    context.hash_shuffle_operator_actor_num_cpus_override = 0.1
    context.hash_aggregate_operator_actor_num_cpus_override = 0.1
    context.join_operator_actor_num_cpus_override = 0.1


def init_ray(ray_cfg, progress_bars: bool = True) -> str | None:
    """Join the configured cluster, or start a local one of our own. Returns the session directory of a cluster
    started here (its logs are worth keeping), None when Ray was already up or the cluster is someone else's."""
    import ray

    configure_ray_data(progress_bars)
    if ray.is_initialized():
        return None
    if ray_cfg.address is not None:  # joining a cluster: its nodes bring their own environment
        ray.init(address=ray_cfg.address)
        return None
    env = set_cpu_env_defaults()
    # "local": always a new cluster of our own, never one a `ray start` left running on this machine.
    context = ray.init(address="local", num_cpus=ray_cfg.num_cpus, include_dashboard=False,
                       runtime_env={"env_vars": env})
    return context.address_info.get("session_dir")


def dataset_in_blocks(table, workers: int, max_rows: int | None = None):
    """`table` (pyarrow) as a Ray dataset of at least `workers` blocks (as the rows allow) of at most `max_rows` rows.
    Ray Data gives a block to one task: a dataset of one block is worked on by one actor, whatever its pool's size,
    and stays one block through the map stages after it."""
    import ray

    per_block = max(1, -(-table.num_rows // max(1, workers)))
    per_block = min(per_block, max_rows) if max_rows else per_block
    return ray.data.from_arrow([table.slice(i, per_block) for i in range(0, table.num_rows, per_block)] or [table])


def collect_blocks(dataset, total: int, desc: str, unit: str) -> list:
    """Every block of a Ray dataset as a pyarrow table, taken as each finishes, with a progress bar of `total` rows
    (the bar counts rows of the blocks, so give `total` in the dataset's rows)."""
    from adaptcot.common.terminal import bar

    tables = []
    with bar(total, desc, unit) as progress:
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            tables.append(table)
            progress.update(table.num_rows)
    return tables


def run_groups(fn, payloads: list[dict], on_ray: bool, num_cpus: float = 0.5, **common) -> list:
    """`fn(**common, **payload)` for every payload: here, one after the other, or as Ray tasks (Ray must be up)."""
    if not on_ray:
        return [fn(**common, **p) for p in payloads]
    import ray

    task = ray.remote(num_cpus=num_cpus, max_retries=3)(in_one_chunk)
    shared = {k: ray.put(v) for k, v in common.items()}
    return ray.get([task.remote(fn, **shared, **p) for p in payloads])


def in_one_chunk(fn, **kwargs):
    """`fn(**kwargs)`, a table of it with one chunk per column: a few rows picked from many files came back as
    thousands of tiny chunks, which cost the driver seconds and hundreds of MB to deserialize (bank_scale at 10M)."""
    out = fn(**kwargs)
    return out.combine_chunks() if hasattr(out, "combine_chunks") else out
