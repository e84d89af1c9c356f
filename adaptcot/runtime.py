"""Process-wide knobs, set once and visibly by entrypoints: vLLM-on-CPU environment and Ray start-up; and the one
type every stage's actor pool size has in config (`ActorPoolSize`)."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import AfterValidator


def _pool_size(value: int | tuple[int, int]) -> int | tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else value
    if low < 1 or high < low:
        raise ValueError(f"an actor pool size is n >= 1 or [min, max] with 1 <= min <= max, not {value!r}")
    return value


# A fixed number of actors, or [min, max]: Ray Data starts `min` and adds actors up to `max` as the cluster grows
# and the queue backs up (the autoscaler adds nodes when the pending actors ask for them).
ActorPoolSize = Annotated[int | tuple[int, int], AfterValidator(_pool_size)]

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


def configure_ray_data() -> None:
    """Ray Data knobs, process-wide. Parquet's V2 reader lists files in a task that always asks for a whole CPU;
    on a small node whose CPUs are held by engine actors that task never starts and the job hangs silently. The
    V1 reader honours `read_parquet(num_cpus=...)`. The same trap with shuffle aggregators: see below."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.use_datasource_v2 = False
    # Hash shuffles (the bank's joins and group-bys) give each aggregator actor up to a quarter of the cluster's
    # CPUs; a plan of several shuffles then holds every CPU of a small node and its map tasks never start. The
    # aggregators mostly wait on their inputs: a tenth of a CPU each is enough.
    context.hash_shuffle_operator_actor_num_cpus_override = 0.1
    context.hash_aggregate_operator_actor_num_cpus_override = 0.1
    context.join_operator_actor_num_cpus_override = 0.1


def init_ray(ray_cfg) -> None:
    import ray

    configure_ray_data()
    if ray.is_initialized():
        return
    if ray_cfg.address is not None:  # joining a cluster: its nodes bring their own environment
        ray.init(address=ray_cfg.address)
        return
    env = set_cpu_env_defaults()
    # "local": always a new cluster of our own, never one a `ray start` left running on this machine.
    ray.init(address="local", num_cpus=ray_cfg.num_cpus, include_dashboard=False, runtime_env={"env_vars": env})
