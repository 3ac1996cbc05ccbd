"""The README's Deploy section, run as written against a live local server: its shell blocks are
taken from README.md itself, so the README cannot drift from what works.

Changed from the README, and only this: the port (a free one, not 4200), the run's preset
(`tiny`, not `mnist-cpu`), its output root and run name (a temporary directory) and the server's,
the worker's and the run's log files. The GPU block contributes the lines that need no Docker or cluster (its pool and its
deployment). Between the deploy block and the stop block the script waits while this test reads
back, through the API, what each deployment stores and what the run produced.

While the server still runs, a real browser (Debian's Chromium, driven by Playwright) opens the
UI as a user would: the parent run lists its run-summary, the summary and the sample report show
their images (loaded: natural width > 0), the metrics table marks the best step. Screenshots
are kept in $TEST_ARTIFACTS_DIR when set, else in the test's temporary directory. Without
Chromium or Playwright the browser part skips locally, saying how to install them, and fails
when CI is set.

Every process the blocks start (the server and the worker among them) stays in the script's
own process group; the server has its own PREFECT_HOME (database), so nothing on the machine is
touched.
"""

import asyncio
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tasks.presets import resolve
from tests.local_servers import free_port, healthy, processes

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)

pytestmark = [pytest.mark.system, pytest.mark.cost(150)]
INSTALL = "apt-get update && apt-get install -y chromium (as root), and pip install playwright"


def _browser_problem() -> str | None:
    """Why the browser part cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"no playwright package for the browser checks: {INSTALL}"
    if CHROMIUM is None:
        return f"no Chromium binary for the browser checks: {INSTALL}"
    return None


def deploy_blocks() -> tuple[str, str, str]:
    """The Deploy section's three shell blocks: deploy and run, stop, GPU pool."""
    section = README.read_text().split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3, f"expected 3 bash blocks under Deploy, found {len(blocks)}"
    return blocks[0], blocks[1], blocks[2]


def _gpu_lines(block: str) -> str:
    """The GPU block's pool and deploy commands (continuation lines joined); no Docker, no worker."""
    commands = block.replace("\\\n", " ").splitlines()
    keep = [c for c in commands if "work-pool create diffusion-gpu" in c or "--name gpu" in c]
    assert len(keep) == 2, keep
    return "\n".join(keep) + "\n"


def test_the_readme_deploy_section_runs_as_written(tmp_path):
    deploy, stop, gpu = deploy_blocks()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    runs = tmp_path / "runs"
    run = (
        deploy.replace("4200", str(port))
        .replace(
            "--param preset=mnist-cpu",
            f"--param preset=tiny --param output_root={runs} --param run_name=live",
        )
        .replace("> server.log", f"> {tmp_path / 'server.log'}")
        .replace("> worker.log", f"> {tmp_path / 'worker.log'}")
        .replace("run.log", str(tmp_path / "run.log"))
    )
    assert run.count(str(port)) == 2 and str(runs) in run
    assert all(str(tmp_path) in line for line in run.splitlines() if "nohup" in line)
    ready, go = tmp_path / "ready", tmp_path / "go"
    script = (
        "set -eo pipefail\n"
        + run
        + _gpu_lines(gpu)
        + f"touch {ready}\nwhile [ ! -e {go} ]; do sleep 0.5; done\n"
        + stop
    )
    env = {
        **os.environ,
        "PWD": str(ROOT),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_API_PORT": str(port),  # what `prefect server start` binds
        "PREFECT_UI_ENABLED": "true",
        # `prefect` as the block calls it: this interpreter's, activated or not.
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    }
    env.pop("PREFECT_API_URL", None)  # the block exports its own
    out = open(tmp_path / "script.log", "w")  # noqa: SIM115 - closed below
    shell = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def log(tail: int | None = 6000) -> str:
        out.flush()
        text = (tmp_path / "script.log").read_text()
        return text if tail is None else text[-tail:]

    try:
        deadline = time.monotonic() + 900
        while not ready.exists():
            assert shell.poll() is None, f"the Deploy block failed ({shell.returncode}):\n{log()}"
            assert time.monotonic() < deadline, f"the Deploy block did not finish:\n{log()}"
            time.sleep(1)
        # `inspect` shows the nightly schedule (searched in the whole output: it is long).
        assert re.search(r"'cron': '0 2 \* \* \*'", log(tail=None)), log()
        flow_run_id, artifacts = _check_what_was_deployed_and_run(api, runs)
        browser = _browser_problem()
        if browser is None:
            _check_the_ui(f"http://127.0.0.1:{port}", flow_run_id, artifacts, tmp_path)
        go.touch()
        assert shell.wait(timeout=120) == 0, f"the stop block failed:\n{log()}"
        deadline = time.monotonic() + 60  # the stop block's SIGTERM: the server shuts down
        while healthy(api) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not healthy(api), (tmp_path / "server.log").read_text()[-3000:]
        while _group(shell.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group(shell.pid), f"the stop block left {_group(shell.pid)} running"
        if browser is not None:
            (pytest.fail if os.environ.get("CI") else pytest.skip)(browser)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
        out.close()
        try:
            os.killpg(shell.pid, signal.SIGKILL)  # a server or worker left by a failed step
        except ProcessLookupError:
            pass


def _group(pgid: int) -> list[str]:
    """The command lines of the live processes in process group `pgid` (zombies are gone)."""
    import psutil

    return processes(
        lambda proc: os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE
    )


def _check_what_was_deployed_and_run(api: str, runs: pathlib.Path) -> tuple:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    async def read_back():
        async with PrefectClient(api=api) as client:
            deployments = {d.name: d for d in await client.read_deployments()}
            (flow_run,) = [
                r
                for r in await client.read_flow_runs()
                if r.deployment_id == deployments["default"].id
            ]
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
            return deployments, flow_run, task_runs, artifacts

    deployments, flow_run, task_runs, artifacts = asyncio.run(read_back())
    assert set(deployments) == {"default", "nightly", "gpu"}

    def working_directory(name):
        (step,) = deployments[name].pull_steps
        return step["prefect.deployments.steps.set_working_directory"]["directory"]

    # Fixed at deploy time: this checkout for the process pool, the image's copy for the GPU pool.
    assert working_directory("default") == working_directory("nightly") == str(ROOT)
    assert working_directory("gpu") == "/opt/diffusion-lib"
    assert deployments["nightly"].schedules[0].schedule.cron == "0 2 * * *"
    assert deployments["gpu"].work_pool_name == "diffusion-gpu"
    assert deployments["gpu"].job_variables["gpu_count"] == 0  # the GPUs are the Ray cluster's
    assert deployments["gpu"].job_variables["env"]["RAY_ADDRESS"].startswith("ray://")

    assert flow_run.state.is_completed(), flow_run.state
    assert flow_run.parameters["preset"] == "tiny"
    assert flow_run.parameters["output_root"] == str(runs)
    task_names = {run.name.rsplit("-", 1)[0] for run in task_runs}
    assert {
        "plan_shards",
        "prepare_shards",
        "finalize_shards",
        "train_model",
        "plan_scoring",
        "score_checkpoint",
        "publish_metrics",
        "sample_shards",
        "render_outputs",
    } <= task_names
    assert all(run.state.is_completed() for run in task_runs), [
        (run.name, run.state.name) for run in task_runs if not run.state.is_completed()
    ]
    keys = {a.key for a in artifacts if a.key}
    assert {"checkpoint-metrics", "sample-report"} <= keys
    assert any(a.type == "progress" and a.data == 100.0 for a in artifacts)
    assert (runs / "live" / "render" / "sampling.gif").is_file()
    last = resolve("tiny").train.config("unused").run.num_steps  # the default deployment's preset
    assert (runs / "live" / "checkpoints" / f"ckpt-{last}.json").is_file()
    # The newest version of each key (every version is listed).
    latest = {a.key: a for a in sorted(artifacts, key=lambda a: a.created) if a.key}
    return flow_run.id, latest


def _check_the_ui(base: str, flow_run_id, artifacts: dict, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    shots = pathlib.Path(os.environ.get("TEST_ARTIFACTS_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {shots}")
    png = "img[src^='data:image/png']"
    widths = "images => images.map(i => i.naturalWidth)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        page.goto(f"{base}/runs/flow-run/{flow_run_id}")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=shots / "parent-run.png", full_page=True)
        page.locator("li.p-tab#artifacts").click()
        page.wait_for_load_state("networkidle")
        tab = page.locator("#artifacts-content")
        tab.get_by_text("all stages done").first.wait_for(timeout=30_000)
        page.screenshot(path=shots / "parent-run-artifacts.png", full_page=True)
        # One run-summary, the final one: each version replaced the one before.
        assert tab.get_by_text("run-summary", exact=True).count() == 1
        assert tab.get_by_text("stages done").count() == 1

        page.goto(f"{base}/artifacts/artifact/{artifacts['run-summary'].id}")
        page.wait_for_load_state("networkidle")
        page.locator(png).first.wait_for(timeout=30_000)
        page.screenshot(path=shots / "run-summary.png", full_page=True)
        assert page.locator("a[href*='/runs/flow-run/']").count() >= 4  # the stage runs
        assert page.get_by_text("Best checkpoint: step").count() == 1
        assert all(w > 0 for w in page.eval_on_selector_all(png, widths))
        gif = "img[src^='data:image/gif']"  # the sampling GIF, inline
        assert [w > 0 for w in page.eval_on_selector_all(gif, widths)] == [True]
        for title, key in (
            ("checkpoint metrics", "checkpoint-metrics"),
            ("sample report", "sample-report"),
        ):
            link = page.get_by_role("link", name=title)
            assert link.get_attribute("href").endswith(f"/artifacts/artifact/{artifacts[key].id}")

        page.goto(f"{base}/artifacts/artifact/{artifacts['sample-report'].id}")
        page.wait_for_load_state("networkidle")
        page.locator(png).first.wait_for(timeout=30_000)
        page.screenshot(path=shots / "sample-report.png", full_page=True)
        loaded = page.eval_on_selector_all(png, widths)
        assert len(loaded) == 2 and all(w > 0 for w in loaded), loaded  # grid and loss curve

        page.goto(f"{base}/artifacts/artifact/{artifacts['checkpoint-metrics'].id}")
        page.wait_for_load_state("networkidle")
        page.get_by_text("(best)").first.wait_for(timeout=30_000)
        page.screenshot(path=shots / "checkpoint-metrics.png", full_page=True)
        browser.close()
