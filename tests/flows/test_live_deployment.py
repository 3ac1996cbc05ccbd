"""The documented deployment path, for real on localhost: `prefect server start`, a process work
pool, `prefect deploy` from deploy/prefect.yaml, `prefect worker start`, then
`prefect deployment run train-and-sample/default` with the tiny preset. The flow run, its task
runs and its artifacts are read back through the Prefect API.

Every process this test starts runs in its own process group and only those groups are stopped;
the server gets its own PREFECT_HOME (database) so nothing on the machine is touched.
"""

import asyncio
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM this process's own group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def live_server(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),  # else the UI points at 4200
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DIFFUSION_LIB_ROOT": str(ROOT),
    }
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    started = [server]
    try:
        _wait_healthy(api, server)
        yield env, started
    finally:
        for proc in reversed(started):
            _stop(proc)
        log.close()


def _cli(env, *args, timeout=180) -> str:
    done = subprocess.run(
        [*PREFECT, "--no-prompt", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_deploy_worker_and_deployment_run_on_a_live_server(live_server, tmp_path):
    env, started = live_server
    _cli(env, "work-pool", "create", "diffusion-process", "--type", "process")
    _cli(
        env,
        "work-pool",
        "create",
        "diffusion-gpu",
        "--type",
        "kubernetes",
        "--base-job-template",
        "deploy/kubernetes/base-job-template.json",
    )
    _cli(env, "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")
    worker_log = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [*PREFECT, "worker", "start", "--pool", "diffusion-process", "--limit", "1"],
        cwd=tmp_path,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    started.append(worker)
    output_root = tmp_path / "runs"
    out = _cli(
        env,
        "deployment",
        "run",
        "train-and-sample/default",
        "--param",
        f"output_root={output_root}",
        "--param",
        "run_name=live",
    )
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    async def read_back():
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            deadline = time.monotonic() + 600
            while True:
                flow_run = await client.read_flow_run(flow_run_id)
                if flow_run.state.is_final() or time.monotonic() > deadline:
                    break
                await asyncio.sleep(2)
            # The stages are subflows: their tasks belong to the child flow runs.
            stages = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])
                )
            )
            run_ids = [flow_run.id, *(stage.id for stage in stages)]
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids))
            )
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids))
            )
            deployments = await client.read_deployments()
            return flow_run, task_runs, artifacts, deployments

    flow_run, task_runs, artifacts, deployments = asyncio.run(read_back())
    worker_log.flush()
    assert flow_run.state.is_completed(), (
        f"{flow_run.state}\n--- worker log ---\n{(tmp_path / 'worker.log').read_text()[-4000:]}"
    )
    assert flow_run.parameters["preset"] == "tiny"  # the deployment's default, not overridden
    assert flow_run.parameters["output_root"] == str(output_root)

    names = {d.name: d for d in deployments}
    assert set(names) == {"default", "nightly", "gpu"}
    assert names["nightly"].schedules[0].schedule.cron == "0 2 * * *"
    assert names["gpu"].work_pool_name == "diffusion-gpu"
    assert names["gpu"].job_variables["gpu_count"] == 8

    task_names = {run.name.rsplit("-", 1)[0] for run in task_runs}
    assert {"prepare-dataset", "train", "evaluate", "sample"} <= task_names  # the stages
    assert {
        "plan_shards",
        "prepare_shards",
        "finalize_shards",
        "train_model",
        "score_checkpoints",
        "sample_shards",
        "render_outputs",
    } <= task_names
    assert all(run.state.is_completed() for run in task_runs), [
        (run.name, run.state.name) for run in task_runs if not run.state.is_completed()
    ]

    keys = {a.key for a in artifacts if a.key}
    assert {"checkpoint-metrics", "sample-report"} <= keys
    assert any(a.type == "progress" and a.data == 100.0 for a in artifacts)

    run_dir = output_root / "live"
    assert (run_dir / "render" / "sampling.gif").is_file()
    assert (run_dir / "checkpoints" / "ckpt-600.json").is_file()
    worker_log.close()
