"""The cluster definitions in cluster/ are ones KubeRay and `ray up` accept, and ones that can run the job of
configs/cluster.yaml: every actor, bundle and gang the stages ask Ray for fits on the nodes they can scale to."""

import copy
from pathlib import Path

import pytest
import yaml

from adaptcot.job.config import load_config
from adaptcot.job.stages import eval_config

ROOT = Path(__file__).parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = {p.name: yaml.safe_load(p.read_text()) for p in sorted((CLUSTER / "kuberay").glob("*.yaml"))}
LAUNCHER = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
JOB = ROOT / "configs" / "cluster.yaml"


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_cluster_yaml_parses_to_a_mapping(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


def cpu_quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_kuberay_manifest_has_what_the_operator_needs(name):
    doc = KUBERAY[name]
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob") and doc["metadata"]["name"]
    spec = cluster_spec(doc)
    assert spec["enableInTreeAutoscaling"] is True
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    images = set()
    for group in [spec["headGroupSpec"], *groups]:
        c = container(group)
        images.add(c["image"])
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), f"{c['name']}: no cpu/memory limits"
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    assert len(images) == 1, f"pods run different images: {images}"


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_ray_sees_the_gpus_the_pods_get(name):
    """Ray schedules by num-gpus, Kubernetes places by nvidia.com/gpu: if they differ, engines wait forever (or
    two processes share a GPU)."""
    for g in cluster_spec(KUBERAY[name])["workerGroupSpecs"]:
        limits = container(g)["resources"]["limits"]
        assert int(limits.get("nvidia.com/gpu", 0)) == int(g["rayStartParams"].get("num-gpus", 0)), g["groupName"]
        assert container(g)["resources"].get("requests", {}).get("nvidia.com/gpu", limits.get("nvidia.com/gpu")) \
            == limits.get("nvidia.com/gpu")


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_worker_pods_give_the_code_sandbox_what_it_needs(name):
    """Verifier actors run on the workers, and the sandbox fails closed: without a user namespace for the pod, an
    unmasked /proc and no runtime seccomp/AppArmor profile in the way, bubblewrap cannot start and the job stops."""
    for g in cluster_spec(KUBERAY[name])["workerGroupSpecs"]:
        assert g["template"]["spec"].get("hostUsers") is False, g["groupName"]
        context = container(g).get("securityContext", {})
        assert context.get("procMount") == "Unmasked", g["groupName"]
        assert context.get("seccompProfile") == {"type": "Unconfined"}, g["groupName"]
        assert context.get("appArmorProfile") == {"type": "Unconfined"}, g["groupName"]
        assert not context.get("privileged"), g["groupName"]


def test_the_cluster_job_verifies_code_in_namespaces_or_not_at_all():
    assert load_config(JOB).grade.verify.code.sandbox.isolation == "namespaces"


def test_rayjob_runs_the_pipeline_on_the_cluster_of_raycluster_yaml():
    job = KUBERAY["rayjob.yaml"]["spec"]
    assert job["entrypoint"] == "python ray_jobs/pipeline.py --config configs/cluster.yaml"
    assert (ROOT / "ray_jobs" / "pipeline.py").exists() and JOB.exists()
    assert job["shutdownAfterJobFinishes"] is True
    assert "working_dir" in yaml.safe_load(job["runtimeEnvYAML"])
    assert job["rayClusterSpec"] == KUBERAY["raycluster.yaml"]["spec"], "the two manifests describe different clusters"


def test_launcher_config_is_one_ray_up_accepts():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(LAUNCHER)))  # Ray's own schema and defaults, offline
    types = LAUNCHER["available_node_types"]
    assert LAUNCHER["cluster_name"] and LAUNCHER["provider"]["type"] == "aws"
    assert LAUNCHER["head_node_type"] in types
    assert all("resources" in t for t in types.values())
    workers = [t for name, t in types.items() if name != LAUNCHER["head_node_type"]]
    assert LAUNCHER["max_workers"] >= sum(t.get("min_workers", 0) for t in workers)


# --- what the job asks for, and where it fits -----------------------------------------------------------------
def engine_requests(student) -> tuple[dict, int]:
    """One vLLM engine replica and how many must run at once. `ray.data.llm` gives a GPU engine one
    {GPU: 1, CPU: 1} bundle per tensor/pipeline rank, packed on one node; a CPU engine its `cpus_per_engine`."""
    res, eng = student.resources, student.engine
    ranks = eng.tensor_parallel_size * eng.pipeline_parallel_size
    one = {"GPU": ranks, "CPU": ranks} if res.use_gpu else {"CPU": res.cpus_per_engine}
    return one, res.concurrency if isinstance(res.concurrency, int) else res.concurrency[0]


def at_least(concurrency) -> int:
    return concurrency if isinstance(concurrency, int) else concurrency[0]


def job_gangs(cfg) -> dict[str, list[dict]]:
    """Per stage, the requests that must be placed at the same time (the minimum of each actor pool)."""
    grade = cfg.grade
    light = {"CPU": grade.student.resources.cpus_per_light_stage}
    verify = [{"CPU": grade.verify.num_cpus}] * grade.verify.concurrency
    engine, replicas = engine_requests(grade.student)
    gangs = {"pool import": [{"CPU": 1}],
             "grade": [engine] * replicas + verify + [light]}
    if grade.prm is not None:
        gangs["grade"] += [{"CPU": grade.prm.num_cpus, "GPU": grade.prm.num_gpus}] * at_least(grade.prm.concurrency)
    teach = [{"CPU": cfg.filter.num_cpus}] * cfg.filter.concurrency
    if cfg.teacher is not None and cfg.teacher.vllm is not None:
        engine, replicas = engine_requests(cfg.teacher.vllm)
        teach += [engine] * replicas
    gangs["teach"] = teach
    if cfg.train is not None:
        worker = {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})}
        gangs["train"] = [worker] * cfg.train.num_workers  # Ray Train starts all workers or none
    if cfg.eval is not None:
        engine, replicas = engine_requests(eval_config(cfg, "before").model)
        gangs["eval"] = [engine] * replicas + verify
    return gangs


def kuberay_nodes(doc: dict) -> list[dict]:
    """Every node the cluster can grow to: each group's capacity as Ray counts it, maxReplicas times."""
    spec, nodes = cluster_spec(doc), []
    for group, count in [(spec["headGroupSpec"], 1)] + [(g, g["maxReplicas"]) for g in spec["workerGroupSpecs"]]:
        params, limits = group["rayStartParams"], container(group)["resources"]["limits"]
        cpu = cpu_quantity(params.get("num-cpus", limits["cpu"]))
        nodes += [{"CPU": cpu, "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}] * count
    return nodes


def launcher_nodes(config: dict) -> list[dict]:
    nodes = []
    for name, t in config["available_node_types"].items():
        count = 1 if name == config["head_node_type"] else t["max_workers"]
        nodes += [dict(t["resources"])] * count
    return nodes


def place(requests: list[dict], nodes: list[dict]) -> list[dict] | None:
    """First-fit decreasing (largest GPU, then CPU, asks first): the requests placed on copies of `nodes`, or None
    when one of them finds no room."""
    free = [{k: float(v) for k, v in n.items()} for n in nodes]
    for req in sorted(requests, key=lambda r: (-r.get("GPU", 0), -r.get("CPU", 0))):
        node = next((n for n in free if all(n.get(k, 0.0) >= v for k, v in req.items() if v)), None)
        if node is None:
            return None
        for k, v in req.items():
            node[k] = node.get(k, 0.0) - v
    return free


CLUSTERS = {**{f"kuberay/{name}": kuberay_nodes(doc) for name, doc in KUBERAY.items()},
            "aws.yaml": launcher_nodes(LAUNCHER)}


@pytest.mark.parametrize("cluster", sorted(CLUSTERS))
def test_the_cluster_can_schedule_every_stage_of_the_cluster_job(cluster):
    nodes = CLUSTERS[cluster]
    gangs = job_gangs(load_config(JOB))
    assert {"grade", "train", "eval"} <= set(gangs) and any(r.get("GPU") for r in gangs["grade"])
    for stage, requests in gangs.items():
        for req in requests:  # each actor or engine alone: some node type holds it
            assert place([req], nodes) is not None, f"{cluster}: no node can hold one {stage} request {req}"
        assert place(requests, nodes) is not None, f"{cluster}: {stage} needs {requests} at once; nodes {nodes}"


@pytest.mark.parametrize("cluster", sorted(CLUSTERS))
@pytest.mark.parametrize("override,stage", [
    ("grade.student.engine.tensor_parallel_size=8", "grade"),  # an engine spread over 8 GPUs: no node has 8
    ("train.num_workers=32", "train"),                         # more training GPUs than the cluster can reach
    ("grade.prm.num_cpus=64", "grade"),                        # a scorer larger than any node
])
def test_a_job_the_cluster_could_never_schedule_is_noticed(cluster, override, stage):
    gangs = job_gangs(load_config(JOB, [override]))
    assert place(gangs[stage], CLUSTERS[cluster]) is None
