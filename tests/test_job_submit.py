"""The job entrypoints as users run them: `python ray_jobs/X.py --help` from the repo root, and `ray job submit` of
one to a real Ray cluster started with `ray start --head` (its own ports and temp dir, stopped however the test
ends; the session's shared Ray in conftest.py is neither used nor touched)."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent  # the venv's python and ray CLI
ENTRYPOINTS = sorted(p for p in (ROOT / "ray_jobs").glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def test_every_entrypoint_runs_from_the_repo_root_and_its_help_gives_its_own_commands(capsys):
    from adaptcot.job.cli import build_parser

    names = {p.stem for p in ENTRYPOINTS}
    assert {"pipeline", "import_pool", "grade", "sample", "teach", "build_sft", "train_sft", "evaluate"} <= names
    for path in ENTRYPOINTS:
        rel = f"ray_jobs/{path.name}"
        # Plain python, as the docstring says: `ray_jobs` must import from anywhere the script is started.
        out = subprocess.run([sys.executable, rel, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "--config" in out.stdout and "--set KEY=VALUE" in out.stdout
        named = re.findall(r"python (ray_jobs/\S+\.py)", out.stdout)
        assert named and set(named) == {rel}, f"{rel}: its help names {named}"
        assert f"python {rel} --config configs/" in out.stdout
        assert re.search(rf"ray job submit --working-dir \. -- python {re.escape(rel)} --config configs/", out.stdout)
        # The `adaptcot` commands it points to exist.
        for command in re.findall(r"(?:^\s*|or: |`)adaptcot ([a-z][a-z-]*)", out.stdout, re.M):
            with pytest.raises(SystemExit) as e:
                build_parser().parse_args([command, "--help"])
            assert e.value.code == 0, f"{rel}: `adaptcot {command}` is not a command"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def local_head_node():
    """A local head node with the dashboard's job server, on free ports: (dashboard URL, clean env for `ray`)."""
    # A short temp dir: Ray's unix sockets live under it and a socket path may not exceed 107 bytes (pytest's
    # tmp_path plus Ray's session_<date>_<pid>/sockets/plasma_store does).
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")
    gcs, dashboard, client, agent, agent_grpc, env_agent, metrics, node_manager, object_manager = free_ports(9)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # on SIGTERM: stop at once, not drain for 30 s
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--temp-dir", temp_dir, "--num-cpus", "2",
           "--object-store-memory", str(300 * 2**20), "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
           "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
           "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats"]  # 0: workers take any port
    log = open(Path(temp_dir) / "ray_start.log", "wb")
    head = subprocess.Popen(cmd, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_job_server(url, head, Path(temp_dir) / "ray_start.log")
        yield url, env
    finally:
        stop_head(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def ray_head():
    with local_head_node() as head:
        yield head


def wait_for_job_server(url: str, head: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert head.poll() is None, f"ray start exited {head.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no job server at {url} after {timeout} s:\n{log.read_text()[-3000:]}")


def stop_head(head: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block`, which stops the daemons it started (as `ray stop` would, but only these),
    then SIGKILL to anything it started that is still alive. `ray stop` itself is not an option: it stops every Ray
    on the machine, the session's shared one included."""
    try:
        started = psutil.Process(head.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    head.terminate()
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    _, alive = psutil.wait_procs(started, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.mark.slow
def test_ray_job_submit_imports_the_synthetic_pool_on_the_cluster_it_runs_on(ray_head, tmp_path):
    from adaptcot.job import stages
    from adaptcot.job.config import load_config
    from adaptcot.pool.importer import import_pool, read_pool

    url, env = ray_head
    overrides = ["synthetic_pool.math_questions=20", "synthetic_pool.code_questions=4", "tiny_models.enabled=false"]
    job = ["python", "ray_jobs/import_pool.py", "--config", "configs/plumbing.yaml",
           *[a for o in [f"run_dir={tmp_path / 'job'}", *overrides, "ray.address=auto"] for a in ("--set", o)]]
    started = time.time()
    out = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(ROOT), "--",
                          *job], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(f"ray job submit: {time.time() - started:.1f} s")  # shown with -s / on failure
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "[import] done" in out.stdout and "math math.jsonl" in out.stdout and "code code.jsonl" in out.stdout
    assert "succeeded" in out.stdout.lower()

    # The same synthetic rows imported directly, here: the job's pool holds exactly their questions.
    direct = load_config(ROOT / "configs" / "plumbing.yaml", [f"run_dir={tmp_path / 'direct'}", *overrides])
    stages.write_synthetic_pool(direct)
    for imp in stages.pool_imports(direct):
        import_pool(imp)
    expected = read_pool(direct.pool.out)["question_id"].to_pylist()
    got = read_pool(tmp_path / "job" / "pool")["question_id"].to_pylist()
    assert len(got) == len(set(got)) == len(expected) == 24
    assert sorted(got) == sorted(expected)
