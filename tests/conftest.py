"""Shared test setup: CPU vLLM settings, no hub access, one Ray cluster per session."""

import os

# Set before anything imports vllm or transformers.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: ~2 s load instead of ~20 s
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole session (start-up costs ~3 s)."""
    import ray

    from adaptcot.runtime import configure_ray_data

    configure_ray_data()
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING",
                                          "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")}
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    """The tiny student, teacher and PRM, built once per session."""
    from adaptcot.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


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
