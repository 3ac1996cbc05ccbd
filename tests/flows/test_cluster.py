"""The sample stage's shards and the evaluation's checkpoints on an existing Ray cluster (a real
one, started with `ray start` on 127.0.0.1, two CPUs, token authentication), named to the
flows by RAY_ADDRESS as the gpu deployment names its cluster (a Ray Client address): the same sample set and metrics file byte for
byte as on the flow's own threads, each worker process loading the weights once for all the
shards it draws, and a worker SIGKILLed in the middle of a shard costing only that shard."""

import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from tests import runner
from tests.local_servers import free_port

pytestmark = [pytest.mark.system, pytest.mark.cost(150)]

SHARD = re.compile(r"shard (\d+) \(\S+\) by process (\d+) on \S+, which has loaded weights (\d+)")


@pytest.fixture(scope="module")
def cluster():
    """(environment naming the cluster, its temporary directory); stopped at the end."""
    # Short: Ray's socket paths live under it and must stay under the 107-byte limit.
    temp = pathlib.Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port, client = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # everything on 127.0.0.1
        "RAY_worker_niceness": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    start = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--ray-client-server-port={client}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    shared = os.environ.get(runner.SHARED_SERVER_ENV)
    if shared:  # the test run's Prefect server, instead of one started by each flow
        env["PREFECT_API_URL"] = shared
    try:
        yield {**env, "RAY_ADDRESS": f"ray://127.0.0.1:{client}"}, temp
    finally:
        # `ray stop` would stop every cluster of this user on the host: this one's processes
        # only (its workers end with its raylet).
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(str(temp) in part for part in proc.info["cmdline"] or ()):
                    proc.kill()
            except psutil.Error:
                continue
        shutil.rmtree(temp, ignore_errors=True)


def _flow(module: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", f"flows.{module}", "--preset", "tiny", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _shard_lines(temp: pathlib.Path) -> set[tuple[int, int, int]]:
    """(shard, pid, loads so far) of every shard the cluster's workers logged drawing (a line
    can reach both of a worker's log files)."""
    found = set()
    for path in temp.glob("session_*/logs/worker-*"):
        found |= {tuple(map(int, m)) for m in SHARD.findall(path.read_text(errors="replace"))}
    return found


def _client_server_logs(temp: pathlib.Path) -> str:
    """The last lines of the head's Ray Client server logs, for a failure message."""
    tails = []
    for path in sorted(temp.glob("session_*/logs/ray_client_server*.err")):
        lines = path.read_text(errors="replace").splitlines()
        tails.append(f"--- {path.name}\n" + "\n".join(lines[-15:]))
    return "\n".join(tails)[-4000:]


def _kill_the_first_shard_worker(
    deadline: float, flow: subprocess.Popen, temp: pathlib.Path
) -> int:
    """SIGKILLs the first worker seen drawing a shard (Ray titles it ray::sample_shards),
    half a second into its shard; its pid. A flow that ends first fails the test with its
    output and the head's client server logs."""
    while time.monotonic() < deadline:
        if flow.poll() is not None:
            raise AssertionError(
                f"the flow ended before a worker was seen drawing a shard:\n"
                f"{flow.stdout.read()[-3000:]}\n{_client_server_logs(temp)}"
            )
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if (proc.info["cmdline"] or [""])[0].startswith("ray::sample_shards"):
                    time.sleep(0.5)
                    os.kill(proc.pid, signal.SIGKILL)
                    return proc.pid
            except (psutil.Error, ProcessLookupError):
                continue
        time.sleep(0.05)
    raise AssertionError("no worker drew a shard")


def test_shards_and_checkpoints_on_a_cluster_match_the_flows_own_and_survive_a_kill(
    cluster, tmp_path
):
    env, temp = cluster
    local = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    root = str(tmp_path / "runs")
    # A trained run, and its copy for the undisturbed side (the same checkpoints, bit for bit).
    for stage in ("prepare_dataset", "train"):
        _flow(stage, local, "--output-root", root, "--run-name", "on-cluster")
    shutil.copytree(tmp_path / "runs" / "on-cluster", tmp_path / "runs" / "local")

    scored = _flow("evaluate", env, "--output-root", root, "--run-name", "on-cluster")
    _flow("evaluate", local, "--output-root", root, "--run-name", "local")
    metrics = [
        tmp_path / "runs" / name / "eval" / "metrics.json" for name in ("on-cluster", "local")
    ]
    assert metrics[0].read_bytes() == metrics[1].read_bytes(), scored.stdout[-2000:]

    # 8 shards of 300 rows, 1,000 DDPM steps each, on two workers; one is killed mid-shard.
    sample = ["--output-root", root, "--num-samples", "2400", "--sampler", "ddpm"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.sample", "--preset", "tiny", "--run-name", "on-cluster"]
        + sample,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = _kill_the_first_shard_worker(time.monotonic() + 300, proc, temp)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-3000:]
    _flow("sample", local, "--run-name", "local", *sample)

    drawn = [tmp_path / "runs" / name / "samples" for name in ("on-cluster", "local")]
    shards = sorted(p.name for p in drawn[1].glob("shard-*.parquet"))
    assert len(shards) == 8 and sorted(p.name for p in drawn[0].glob("shard-*.parquet")) == shards
    for name in shards:
        assert (drawn[0] / name).read_bytes() == (drawn[1] / name).read_bytes(), name

    lines = _shard_lines(temp)
    # Every shard drawn once by a live worker (the killed one finished none), each worker
    # loading the weights once for all the shards it drew.
    assert sorted(shard for shard, _, _ in lines) == list(range(8)), sorted(lines)
    assert killed not in {pid for _, pid, _ in lines}
    assert {loads for _, _, loads in lines} == {1}, lines
    assert len({pid for _, pid, _ in lines}) < 8  # processes reused, not one a shard
