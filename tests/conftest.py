"""Shared test setup: CPU vLLM settings, no hub access, one Ray cluster per session."""

import os
from pathlib import Path

# Set before anything imports vllm or transformers.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: ~2 s load instead of ~20 s
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
# Logs of runs whose run_dir is a bucket go to a local folder (./logs by default): not into the checkout.
os.environ.setdefault("ADAPTCOT_LOGS", __import__("tempfile").mkdtemp(prefix="adaptcot-logs-"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3-compatible server (moto's, on 127.0.0.1) for the session; the AWS_* variables it sets point
    pyarrow at it, in this process, in subprocesses and in Ray's workers (`ray_session` passes them on). It runs
    in a process of its own: in this one, its Flask globals break vLLM's in-process engines (vLLM walks every
    loaded module's attributes, and Flask's proxies raise outside an app context)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError(f"moto server did not start on {url}")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update(env)
    yield env
    server.terminate()
    server.wait(timeout=10)
    log.close()


@pytest.fixture
def bucket(s3_server, request):
    """A new, empty bucket: its s3:// URI."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + f"-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray cluster for the whole session (start-up costs ~3 s); its workers can reach `s3_server`."""
    import ray

    from adaptcot.common.runtime import configure_ray_data

    configure_ray_data()
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING",
                                          "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")}
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {**env, **s3_server}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    """The tiny student, teacher and PRM, built once per session."""
    from adaptcot.demo.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def world_models(tmp_path_factory):
    """The demo's own models (configs/local.yaml's budgets: student, peer, teacher, PRM trained on the arithmetic
    world), trained once per session; each run copies them under its run_dir."""
    from adaptcot.demo.world_models import build_world_models
    from adaptcot.job.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / "local.yaml").tiny_models
    out = tmp_path_factory.mktemp("world") / "models"
    build_world_models(out, cfg.seed, cfg.world)
    return out


@pytest.fixture(scope="session")
def teacher_server(tiny_models_dir, tmp_path_factory):
    """A real vLLM OpenAI-compatible server on 127.0.0.1 serving the tiny teacher: (base url, model name)."""
    import signal

    from teacher_fixtures import start_vllm_server

    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    proc, url = start_vllm_server(tiny_models_dir["teacher"], "tiny-teacher", log)
    yield url, "tiny-teacher"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
