"""Multi-node scenarios on one machine (`ray.cluster_utils.Cluster`), each run by tests/test_cluster_faults.py in a
process of its own (a Cluster cannot share a process with the test session's Ray). Prints one JSON line, `RESULT
{...}`, with what the test asserts on.

    python tests/cluster_scenarios.py {grade-kill,teach-kill,autoscale} WORKDIR

- grade-kill: grading on two worker nodes; a few seconds into inference, the node running the student's engine is
  killed (no graceful drain) and a fresh node joins. The job must finish with every question graded once.
- teach-kill: an in-cluster teacher (the tiny teacher through ray.data.llm) on two worker nodes; the node running
  the engine is killed mid-inference the same way. Every (question, sample) must be stored exactly once.
- autoscale: grading (pass-rate levels, long answers: the engines are the bottleneck) starts on one small worker
  node with room for one engine and the engine pool at [1, 3]; two more nodes join while it runs. Reports how many
  engines were placed and on how many nodes, and how many ran at once at the most.
The head node has no CPUs: it holds the driver only, so every stage's actors live on the worker nodes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
os.environ.update(ENV)
ENGINE_CLASS = "vLLMEngineStageUDF"


def start_cluster(worker_cpus: list[int]):
    import ray
    from ray.cluster_utils import Cluster

    from adaptcot.common.runtime import configure_ray_data

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=n) for n in worker_cpus]
    configure_ray_data()
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": ENV})
    cluster.wait_for_nodes()
    return cluster, workers


def engine_actors() -> list[dict]:
    """The student/teacher engine actors started so far, dead ones included: {state, node_id}. Read from the GCS
    table (`ray.util.state` would need a dashboard on the head; this keeps the head to the driver alone)."""
    import ray._private.state

    return [{"id": actor_id, "state": a.get("State"), "node_id": (a.get("Address") or {}).get("NodeID")}
            for actor_id, a in ray._private.state.actors().items()
            if ENGINE_CLASS in (a.get("ActorClassName") or "")]


def node_running_engine(cluster, workers):
    """The worker node that hosts a live engine actor, once one is up."""
    for actor in engine_actors():
        if actor["state"] == "ALIVE":
            for node in workers:
                if node.node_id == actor["node_id"]:
                    return node
    return None


def in_background(job) -> tuple[threading.Thread, dict]:
    """Run the job in a thread: `Cluster.add_node` uses signals, so nodes are added and killed from the main one."""
    out: dict = {}

    def run():
        try:
            out["value"] = job()
        except BaseException as e:
            out["error"] = repr(e)
        out["finished"] = time.time()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def kill_engine_node(cluster, workers, job, after_s: float = 3.0) -> dict:
    """Run `job`; once an engine has been up for `after_s` seconds (mid-inference), kill its node without a
    graceful drain and add a fresh one. Returns the job's value and when things happened."""
    thread, out = in_background(job)
    node = None
    while node is None and thread.is_alive():
        node = node_running_engine(cluster, workers)
        time.sleep(0.2)
    time.sleep(after_s)
    if node is not None and thread.is_alive():
        cluster.remove_node(node, allow_graceful=False)
        out["killed_at"] = time.time()
        cluster.add_node(num_cpus=2)
    thread.join()
    if "error" in out:
        raise RuntimeError(out["error"])
    return out


def world(work: Path, math: int, code: int, math_files: int = 1) -> dict:
    """Tiny models and a pool of `math` + `code` questions; the math ones imported in `math_files` imports, so the
    pool has that many files (each is a block of the grading dataset: a block goes to one engine at a time)."""
    from adaptcot.demo.synthetic import code_rows, math_rows, write_jsonl
    from adaptcot.demo.tiny_models import build_tiny_models
    from adaptcot.pool.importer import PoolImportConfig, import_pool

    models = build_tiny_models(work / "models")
    rows = list(math_rows(math, seed=11))
    for i in range(math_files):
        write_jsonl(iter(rows[i::math_files]), work / f"math-{i}.jsonl")
        import_pool(PoolImportConfig(sources=[str(work / f"math-{i}.jsonl")], domain="math", out=str(work / "pool"),
                                     preset="gsm8k"))
    if code:
        write_jsonl(code_rows(code, seed=12), work / "code.jsonl")
        import_pool(PoolImportConfig(sources=[str(work / "code.jsonl")], domain="code", out=str(work / "pool"),
                                     preset="apps"))
    return {k: str(v) for k, v in models.items()}


def grade_config(work: Path, models: dict, concurrency=1, batch_size=4, max_tokens=48, mode="prm",
                 max_concurrent_batches=8, cpus_per_engine=1.0):
    from adaptcot.grade.answering import EngineConfig, ResourcesConfig, SamplingConfig, StudentConfig
    from adaptcot.grade.grading import GradeConfig
    from adaptcot.grade.levels import GraderConfig
    from adaptcot.grade.prm import PRMConfig
    from adaptcot.verify.attempts import VerifyConfig

    engine = EngineConfig(max_model_len=512, dtype="float32", enforce_eager=True)
    student = StudentConfig(model=models["student"], name="tiny-student", engine=engine,
                            sampling=SamplingConfig(n=2, temperature=1.0, max_tokens=max_tokens),
                            resources=ResourcesConfig(cpus_per_engine=cpus_per_engine, cpus_per_light_stage=0.1,
                                                      batch_size=batch_size, concurrency=concurrency,
                                                      max_concurrent_batches=max_concurrent_batches))
    prm = PRMConfig(model=models["prm"], dtype="float32", enforce_eager=True, max_model_len=2048, num_cpus=0.5)
    grader = GraderConfig() if mode == "prm" else GraderConfig(mode="pass_rate", thresholds=(0.4, 0.3, 0.2, 0.1))
    return GradeConfig(pool=str(work / "pool"), bank=str(work / "bank"), student=student,
                       prm=prm if mode == "prm" else None, grader=grader, verify=VerifyConfig(num_cpus=0.1))


def grade_result(cfg) -> dict:
    from adaptcot.grade import bank
    from adaptcot.pool.importer import read_pool

    gid, student = cfg.grader_id(), cfg.student.display_name
    attempts = bank.read_partition(cfg.bank, "attempts", student, gid, ["question_id", "sample_index"])
    return {"pool": sorted(read_pool(cfg.pool)["question_id"].to_pylist()),
            "bank": sorted(bank.read_partition(cfg.bank, "bank", student, gid)["question_id"].to_pylist()),
            "attempts": sorted(f"{q}#{s}" for q, s in zip(attempts["question_id"].to_pylist(),
                                                         attempts["sample_index"].to_pylist()))}


def grade_kill(work: Path) -> dict:
    from adaptcot.grade import grading

    # Enough answers that the engine is still generating when its node is killed, 3 s after it came up.
    models = world(work, math=60, code=4)
    cluster, workers = start_cluster([2, 2])
    cfg = grade_config(work, models, max_tokens=64)
    run = kill_engine_node(cluster, workers, lambda: grading.grade(cfg))
    return {**grade_result(cfg), "killed_at": run.get("killed_at"), "finished": run["finished"],
            "report": grading.report_dict(run["value"])}


def teach_kill(work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from adaptcot.grade.answering import EngineConfig, ResourcesConfig, SamplingConfig, StudentConfig
    from adaptcot.pool.importer import read_pool
    from adaptcot.teach import journal, teacher
    from adaptcot.teach.config import TeacherConfig

    models = world(work, math=30, code=0)
    pool = read_pool(work / "pool")
    samples = pool.select(["question_id", "domain", "question", "reference_answer", "tests", "starter_code"])
    samples = samples.append_column("level", pa.array(["easy"] * samples.num_rows))
    pq.write_table(samples, work / "samples.parquet")
    cluster, workers = start_cluster([2, 2])
    engine = EngineConfig(max_model_len=512, dtype="float32", enforce_eager=True)
    cfg = TeacherConfig(name="tiny-teacher", samples=2, sampling=SamplingConfig(max_tokens=48),
                        vllm=StudentConfig(model=models["teacher"], engine=engine, resources=ResourcesConfig(
                            cpus_per_engine=1.0, cpus_per_light_stage=0.1, batch_size=4)))
    run = kill_engine_node(cluster, workers, lambda: teacher.teach(work / "samples.parquet", cfg, work / "teach"))
    stored = journal.collect(work / "teach")
    rows = [f"{q}#{s}" for q, s in zip(stored["question_id"].to_pylist(), stored["sample_index"].to_pylist())]
    again = teacher.teach(work / "samples.parquet", cfg, work / "teach")  # a rerun asks for nothing
    return {"questions": sorted(pool["question_id"].to_pylist()), "stored": sorted(rows),
            "failed": sum(1 for e in stored["error"].to_pylist() if e), "rerun_requests": again.requests_todo,
            "report": run["value"].__dict__, "killed_at": run.get("killed_at"), "finished": run["finished"]}


def autoscale(work: Path) -> dict:
    from adaptcot.grade import grading

    # 240 samples: one block at the engine's batch size, cut into six (two per engine of the [1, 3] pool) so the
    # engines that start on joining nodes have blocks to take.
    models = world(work, math=120, code=0, math_files=6)
    # Ray Data grows an actor pool at 1.75 tasks in flight per actor: whether a second block is queued in time on a
    # 2-core machine is a race between the upstream stages and the engine. At 1.0 a busy engine with blocks waiting
    # is enough, so what is tested is what adaptcot controls: the configured [1, 3] pool grows onto joining nodes.
    os.environ["RAY_DATA_DEFAULT_ACTOR_POOL_UTIL_UPSCALING_THRESHOLD"] = "1.0"
    cluster, _ = start_cluster([2])  # room for one engine (1.5 CPUs) and the light stages
    # No PRM, long answers, one sample per batch: the engines are the bottleneck, so more of them help.
    cfg = grade_config(work, models, concurrency=(1, 3), batch_size=1, max_tokens=256, mode="pass_rate",
                       max_concurrent_batches=1, cpus_per_engine=1.5)
    thread, out = in_background(lambda: grading.grade(cfg))
    while not engine_actors() and thread.is_alive():
        time.sleep(0.2)
    added, peak_alive, alive_nodes, placed = [], 0, set(), {}
    for _ in range(2):  # capacity arrives while the job runs
        if thread.is_alive():
            cluster.add_node(num_cpus=2)
            added.append(time.time())
            time.sleep(2)
    while thread.is_alive():  # where engines were placed, how many ran at once, and where
        actors = engine_actors()
        placed |= {a["id"]: a["node_id"] for a in actors if a["node_id"]}
        alive = [a for a in actors if a["state"] == "ALIVE"]
        peak_alive = max(peak_alive, len(alive))
        alive_nodes |= {a["node_id"] for a in alive}
        time.sleep(0.2)
    thread.join()
    if "error" in out:
        raise RuntimeError(out["error"])
    report, finished = out["value"], out["finished"]
    actors = engine_actors()
    return {**grade_result(cfg), "report": grading.report_dict(report), "nodes_added": len(added),
            "engines": len(actors), "engines_placed": len(placed), "placement_nodes": len(set(placed.values())),
            "peak_alive_engines": peak_alive, "engine_nodes": len(alive_nodes),
            "added_before_end": sum(t < finished for t in added)}


if __name__ == "__main__":
    scenario, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    result = {"grade-kill": grade_kill, "teach-kill": teach_kill, "autoscale": autoscale}[scenario](work)
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # the Cluster's processes go with the process group the test kills
