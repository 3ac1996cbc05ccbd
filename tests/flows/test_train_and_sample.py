"""The flows under a real (temporary) Prefect server: the tiny preset end to end through the four
stage subflows, artifacts read back through the API, a re-run that redoes nothing, a corrupt
shard rebuilt, the score-based variant with a warm start, a failing stage named in the failure
report, and parameters rejected before any work."""

import asyncio
import json
import pathlib
import re
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from flows.evaluate import evaluate_flow
from flows.prepare_dataset import prepare_dataset_flow
from flows.train import train_flow
from flows.train_and_sample import train_and_sample
from tasks.presets import resolve
from tests.local_servers import processes
from tests.prefect_reads import artifacts_of

pytestmark = pytest.mark.cost(125)

# The tiny preset's checkpoints, as the preset says (its first one and its last).
_TINY = resolve("tiny").train.config("unused")
FIRST, LAST = _TINY.run.checkpoint_every, _TINY.run.num_steps


@pytest.fixture(scope="module")
def tiny_run(prefect_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    state = train_and_sample(preset="tiny", output_root=str(root), run_name="r1", return_state=True)
    return root, state


def _mtimes(directory: pathlib.Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in directory.glob("*.parquet")}


def _read(query):
    async def run():
        async with get_client() as client:
            return await query(client)

    return asyncio.run(run())


def test_tiny_preset_end_to_end(tiny_run):
    root, state = tiny_run
    assert state.is_completed(), state.message
    result = state.result()
    run = root / "r1"
    assert result["run_dir"] == str(run) and result["final_step"] == LAST
    assert result["best_step"] in (FIRST, LAST)
    for path in (
        "data/train/manifest.json",
        "data/test/manifest.json",
        f"checkpoints/ckpt-{LAST}.json",
        "eval/metrics.json",
        "samples/manifest.json",
        "render/grid.png",
        "render/sampling.gif",
        "render/loss.png",
    ):
        assert (run / path).is_file(), path
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert [row["step"] for row in metrics["rows"]] == [FIRST, LAST]
    assert json.loads((run / "samples" / "manifest.json").read_text())["num_examples"] == 600
    # The job draws the roll, not a disc of its spread: its best checkpoint's k-NN precision and
    # recall are each within 0.85x of the real-versus-real floor (a disc scores about 0.4x).
    best = next(r for r in metrics["rows"] if r["step"] == result["best_step"])["metrics"]
    assert metrics["best"]["metric"] == "balanced_pr"
    assert best["balanced_pr"]["value"] >= 0.85, best

    parent_id = state.state_details.flow_run_id
    children = _read(
        lambda client: client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
            )
        )
    )
    flow_names = {_read(lambda client, r=r: client.read_flow(r.flow_id)).name for r in children}
    assert flow_names == {"prepare-dataset", "train", "evaluate", "sample"}
    # This run's own artifacts: the server is shared with other tests that publish the same keys.
    run_ids = [parent_id, *(child.id for child in children)]
    artifacts = artifacts_of(*run_ids)
    keys = {a.key for a in artifacts if a.key}
    assert {
        "checkpoint-metrics",
        "sample-report",
        "sample-progress",
        "training-progress",
        "evaluation-progress",
    } <= keys
    progress = {a.key: a for a in artifacts if a.type == "progress"}
    assert progress["training-progress"].data == 100.0
    assert progress["training-progress"].description == "training r1: done"
    assert progress["sample-progress"].description.endswith(", done")
    # A version a checkpoint (they are scored at once where the task runner allows).
    evaluated = [a.description for a in artifacts if a.key == "evaluation-progress"]
    assert sorted(evaluated) == [f"evaluating r1 ckpt-{s}: done" for s in sorted((FIRST, LAST))]
    report = next(a for a in artifacts if a.key == "sample-report")
    assert "data:image/png;base64," in report.data

    # The parent tells the story: one run-summary (each version replaced the one before) saying
    # what it covers, linking the four stage runs and the stages' reports, with the best
    # checkpoint's metrics against floors, the sample grid and the sampling GIF.
    (summary,) = [a for a in artifacts_of(parent_id) if a.key == "run-summary"]
    assert summary.description == "all stages done"
    latest = summary.data
    assert latest.startswith("# train-and-sample: all stages done\n")
    assert sorted(latest.split("/runs/flow-run/")[i][:36] for i in range(1, 5)) == sorted(
        str(child.id) for child in children
    )
    reports = {a.key: a for a in artifacts if a.key in ("checkpoint-metrics", "sample-report")}
    assert f"[checkpoint metrics](/artifacts/artifact/{reports['checkpoint-metrics'].id})" in latest
    assert f"[sample report](/artifacts/artifact/{reports['sample-report'].id})" in latest
    assert f"## Best checkpoint: step {result['best_step']}" in latest
    assert "| balanced_pr |" in latest and "data:image/png;base64," in latest
    assert "![sampling](data:image/gif;base64," in latest
    # Logs reach the server in batches after the run returns: wait for the closing line.
    closing = f"Best checkpoint: step {result['best_step']}: "
    deadline = time.monotonic() + 30
    while True:
        logs = _read(
            lambda client: client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[parent_id]))
            )
        )
        messages = [log.message for log in logs]
        if any(m.startswith(closing) for m in messages) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any(m.startswith(closing) for m in messages), messages
    for stage in ("prepare-dataset", "train", "evaluate", "sample"):
        assert f"stage {stage!r} started" in messages
        assert any(m.startswith(f"stage {stage!r} finished in") for m in messages)


@pytest.mark.system  # kept out of the default run's 5-minute budget
def test_a_rerun_redoes_nothing_and_a_corrupt_shard_is_rebuilt(tiny_run):
    """One re-run of the finished run, with one training shard corrupted since: that shard is
    rebuilt byte for byte and nothing else is redone (the other shards, the training log and
    checkpoints, the scores and the sample set are left as they were)."""
    root, state = tiny_run
    assert state.is_completed(), state.message
    run = root / "r1"
    shard = sorted((run / "data" / "train").glob("*.parquet"))[0]
    original = shard.read_bytes()
    kept = [run / "metrics.jsonl", run / "eval" / "metrics.json", run / "samples" / "manifest.json"]
    kept += sorted((run / "samples").glob("*.parquet")) + sorted(run.glob("checkpoints/*"))
    kept += sorted((run / "render").iterdir())
    before = {path: path.stat().st_mtime_ns for path in kept}
    shards_before = _mtimes(run / "data" / "train")

    corrupt = bytearray(original)
    corrupt[len(corrupt) // 2] ^= 0xFF
    shard.write_bytes(bytes(corrupt))
    again = train_and_sample(preset="tiny", output_root=str(root), run_name="r1", return_state=True)
    assert again.is_completed(), again.message
    assert shard.read_bytes() == original  # rebuilt byte for byte, the training data unchanged
    others = {k: v for k, v in _mtimes(run / "data" / "train").items() if k != shard.name}
    assert others == {k: v for k, v in shards_before.items() if k != shard.name}
    after = {path: path.stat().st_mtime_ns for path in kept}
    assert [p.name for p in kept if after[p] != before[p]] == []  # nothing else redone
    assert sorted(p.name for p in (run / "checkpoints").glob("*.json")) == [
        f"ckpt-{FIRST}.json",
        f"ckpt-{LAST}.json",
    ]


@pytest.mark.system  # kept out of the default run's 5-minute budget
def test_a_rerun_repairs_a_damaged_config_and_a_training_log_cut_short(tiny_run, tmp_path):
    """A copy of the finished run with config.json cut short and metrics.jsonl cut in the middle
    of a row: a plain re-run completes, config.json is back byte for byte, the log holds every
    logged step again with the same losses, and the sample set is left as it was."""
    import shutil

    root, _ = tiny_run
    copy = tmp_path / "root" / "r1"
    shutil.copytree(root / "r1", copy, ignore=shutil.ignore_patterns(".writer.lock"))
    record, log = copy / "config.json", copy / "metrics.jsonl"
    original_record, original_log = record.read_bytes(), log.read_text()
    record.write_bytes(original_record[:13])
    log.write_text(original_log[: len(original_log) // 3])
    samples = {p.name: p.read_bytes() for p in (copy / "samples").glob("*.parquet")}

    again = train_and_sample(
        preset="tiny", output_root=str(tmp_path / "root"), run_name="r1", return_state=True
    )
    assert again.is_completed(), again.message
    assert record.read_bytes() == original_record
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    before = [json.loads(line) for line in original_log.splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(r["step"], r["loss"]) for r in before]
    assert {p.name: p.read_bytes() for p in (copy / "samples").glob("*.parquet")} == samples


def test_evaluation_scores_another_sampler_beside_the_runs_own_report(tiny_run):
    """The evaluate flow with `sampler`: the DDPM run scored by DPM-Solver++ (the VP SDE's
    sampler) into eval/metrics-dpm_solver_pp.json; the run's own report is left as it was."""
    root, state = tiny_run
    assert state.is_completed(), state.message
    own = root / "r1" / "eval" / "metrics.json"
    before = own.read_bytes()
    result = evaluate_flow(
        preset="tiny", run_name="r1", output_root=str(root), sampler="dpm_solver_pp"
    )
    report = json.loads(pathlib.Path(result["metrics_path"]).read_text())
    assert pathlib.Path(result["metrics_path"]).name == "metrics-dpm_solver_pp.json"
    assert report["spec"]["sampler"]["name"] == "dpm_solver_pp"
    assert report["rows"][-1]["metrics"]["sliced_wasserstein"]["value"] > 0
    assert own.read_bytes() == before


@pytest.mark.system  # the longest flow test: kept out of the default run's 5-minute budget
def test_score_model_and_a_warm_start_from_the_previous_run(prefect_server, tmp_path):
    # 300 of the variant's 3,000 steps: what is checked here is the plumbing, not the quality.
    first = train_and_sample(
        preset="tiny",
        model="ncsn",
        output_root=str(tmp_path),
        run_name="s1",
        steps=300,
        return_state=True,
    )
    assert first.is_completed(), first.message
    run = tmp_path / "s1"
    manifest = json.loads((run / "samples" / "manifest.json").read_text())
    assert manifest["extra"]["sampler"]["name"] == "annealed_langevin"
    assert (run / "render" / "score_field.png").is_file()

    # The warm start is the train stage's (train_and_sample hands it the flag): the stages it
    # involves, without the evaluation and sample set the run above has already covered.
    where = {"preset": "tiny", "model": "ncsn", "output_root": str(tmp_path), "run_name": "s2"}
    prepare_dataset_flow(**where)
    second = train_flow(**where, steps=30, warm_start=True, return_state=True)
    assert second.is_completed(), second.message
    best = first.result()["best_step"]
    config = json.loads((tmp_path / "s2" / "train-config.json").read_text())
    assert config["run"]["init_from"] == f"{run}@{best}"
    assert second.result()["step"] == 30


@pytest.mark.system  # kept out of the default run's 5-minute budget
def test_a_failing_stage_is_named_in_the_failure_report(tiny_run):
    root, _ = tiny_run
    # r1 trained a DDPM: training a score model in the same directory is refused (bad input,
    # exit 2, not retried) and the flow says which stage failed.
    state = train_and_sample(
        preset="tiny", model="ncsn", output_root=str(root), run_name="r1", return_state=True
    )
    assert state.is_failed()
    assert "stage 'train' failed" in state.message
    stages = _read(
        lambda client: client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(
                    any_=[state.state_details.flow_run_id]
                )
            )
        )
    )
    trainings = [
        run
        for run in _read(
            lambda client: client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[s.id for s in stages]))
            )
        )
        if run.name.startswith("train_model")
    ]
    # Bad input (exit 2) fails the same way every time: one attempt, no retries.
    assert len(trainings) == 1 and trainings[0].run_count == 1
    reports = [
        a for a in artifacts_of(state.state_details.flow_run_id) if a.key == "failure-report"
    ]
    assert reports and "stage 'train' failed" in reports[-1].data
    # The command that resumes gives every parameter the run was started with.
    assert f"--param output_root={root} --param run_name=r1 --param model=ncsn" in reports[-1].data
    assert f"--output-root {root} --run-name r1 --model ncsn`" in reports[-1].data
    assert sorted(p.name for p in (root / "r1" / "checkpoints").glob("*.json")) == [
        f"ckpt-{FIRST}.json",
        f"ckpt-{LAST}.json",
    ]


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"steps": 0}, "steps"),
        ({"preset": "imagenet"}, "preset"),
        ({"model": "ncsn", "sampler": "ddim"}, "sampler"),
        ({"preset": "cifar10", "model": "ncsn"}, "model"),
        ({"run_name": "../elsewhere"}, "run_name"),
        ({"timeout_minutes": -1}, "timeout_minutes"),
        ({"timeout_minutes": float("nan")}, "timeout_minutes"),
        ({"timeout_minutes": float("inf")}, "timeout_minutes"),
        ({"guidance": 1.0}, "guidance"),
        ({"preset": "mnist-cpu", "guidance": float("nan")}, "guidance"),
        ({"preset": "mnist-cpu", "guidance_sigma_max": -1.0}, "guidance_sigma_max"),
        ({"preset": "mnist-cpu", "guidance_sigma_min": 1.0}, "guidance_sigma_min"),
    ],
)
def test_bad_parameter_is_rejected_before_any_work(prefect_server, tmp_path, parameters, named):
    with pytest.raises(Exception, match=named):
        train_and_sample(**{"preset": "tiny", "output_root": str(tmp_path), **parameters})
    assert not any(tmp_path.iterdir())


def test_the_cli_offers_every_flow_parameter_and_the_readme_lists_each(capsys):
    """`python -m flows.train_and_sample --help` has a flag per flow parameter, and the getting
    started page's parameter list names exactly the flow's parameters."""
    import inspect
    import re

    from diffusion_lib.samplers import SAMPLERS
    from flows.train_and_sample import main
    from tasks.presets import MODELS

    names = list(inspect.signature(train_and_sample.fn).parameters)
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    assert [n for n in names if f"--{n.replace('_', '-')}" not in usage] == []
    page = (pathlib.Path(__file__).parents[2] / "docs" / "getting-started.md").read_text()
    paragraph = page[page.index("Flow parameters are flat") :].split("\n\n")[0]
    listed = re.findall(r"`([a-z_]+)`", paragraph.split("Bad values")[0])
    values = set(SAMPLERS) | set(MODELS)  # the choices it names beside the parameters
    assert set(listed) - values == set(names)


def _storm_processes(marker: str) -> list[str]:
    return processes(lambda proc: marker in " ".join(proc.info["cmdline"] or ()))


@pytest.mark.system
def test_a_kill_storm_across_stages_then_a_clean_finish_equals_an_uninterrupted_run(
    tiny_run, tmp_path
):
    """Seeded SIGKILLs of the CLI's whole process group in each stage of `tiny` (data, training
    after its first checkpoint, evaluation, sampling): after every kill no process of the run is
    left (the worker has a group of its own and dies with the flow) and every committed
    checkpoint verifies; the run then finishes with checkpoints, metrics and samples equal to
    the uninterrupted run's, bit for bit."""
    import os
    import random
    import signal
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from diffusion_lib.run import Run
    from diffusion_lib.training.checkpoints import verify

    reference, _ = tiny_run
    rng = random.Random(15)
    root = tmp_path / "storm-root"
    run_dir = root / "storm"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = [sys.executable, "-m", "flows.train_and_sample", "--preset", "tiny"]
    command += ["--output-root", str(root), "--run-name", "storm"]

    def started(stage):
        return lambda log: f"stage '{stage}' started" in log

    def checkpoint(log):
        return (run_dir / "checkpoints" / f"ckpt-{FIRST}.json").exists()

    triggers = [
        ("prepare-dataset", started("prepare-dataset")),
        ("train", checkpoint),
        ("evaluate", started("evaluate")),
        ("sample", started("sample")),
    ]
    kills = []
    for number, (stage, ready) in enumerate(triggers):
        log_path = tmp_path / f"attempt-{number}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not ready(log_path.read_text()):
            time.sleep(0.05)
        assert proc.poll() is None, f"attempt {number} ended before {stage}: {log_path.read_text()}"
        time.sleep(rng.uniform(0.1, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(stage)
        time.sleep(0.5)  # the worker's parent-death signal is immediate; give the kernel a moment
        assert _storm_processes(str(run_dir)) == [], f"orphans after the kill in {stage}"
        for step in Run(run_dir).steps():
            verify(run_dir / "checkpoints", step)
    assert kills == ["prepare-dataset", "train", "evaluate", "sample"]

    # A second writer is refused: the CLI exits 1 naming the holder, and changes nothing.
    from diffusion_lib.run_lock import writing

    before = sorted(p.name for p in run_dir.rglob("*"))
    with writing(run_dir):
        busy = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert busy.returncode == 1
    assert f"run {run_dir} is being written by pid {os.getpid()}" in busy.stderr
    assert sorted(p.name for p in run_dir.rglob("*")) == before

    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert _storm_processes(str(run_dir)) == []
    _assert_same_run(run_dir, reference / "r1")


def _assert_same_run(run_dir: pathlib.Path, reference: pathlib.Path) -> None:
    """Checkpoints, scores and sample shards of `run_dir` equal `reference`'s, bit for bit."""
    import numpy as np

    from diffusion_lib.run import Run

    ours, theirs = Run(run_dir), Run(reference)
    assert ours.steps() == theirs.steps() == [FIRST, LAST]
    for step in (FIRST, LAST):
        for a, b in zip(
            ours.restore(step).model.weights, theirs.restore(step).model.weights, strict=True
        ):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    mine = json.loads((run_dir / "eval" / "metrics.json").read_text())
    other = json.loads((reference / "eval" / "metrics.json").read_text())
    assert [r["metrics"] for r in mine["rows"]] == [r["metrics"] for r in other["rows"]]
    for path in sorted((reference / "samples").glob("*.parquet")):
        assert (run_dir / "samples" / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.system
def test_losing_the_api_mid_run_ends_the_job_within_a_minute_and_a_rerun_finishes_it(
    tiny_run, tmp_path
):
    """A real Prefect server SIGKILLed while `tiny` trains: the CLI ends within a minute, exit
    1, its last line naming the API it lost and the command that resumes; no process of the run
    is left. With a server back, that command finishes the run equal to the uninterrupted one."""
    import os
    import signal
    import subprocess
    import sys

    from tests.local_servers import free_port, healthy

    reference, _ = tiny_run
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    prefect = str(pathlib.Path(sys.executable).parent / "prefect")
    servers = []

    def start_server():
        with open(tmp_path / f"server-{len(servers)}.log", "w") as log:
            servers.append(
                subprocess.Popen(
                    [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 120
        while not healthy(api):
            assert time.monotonic() < deadline, "the Prefect server did not start in 120 s"
            time.sleep(0.2)

    root = tmp_path / "root"
    run_dir = root / "lost"
    command = [sys.executable, "-m", "flows.train_and_sample", "--preset", "tiny"]
    command += ["--output-root", str(root), "--run-name", "lost"]
    try:
        start_server()
        with open(tmp_path / "job.out", "w") as out, open(tmp_path / "job.err", "w") as err:
            job = subprocess.Popen(command, env=env, stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / f"ckpt-{FIRST}.json").exists():
            assert job.poll() is None, (tmp_path / "job.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not reach its first checkpoint"
            time.sleep(0.05)
        os.killpg(servers[-1].pid, signal.SIGKILL)
        lost = time.monotonic()
        job.wait(timeout=180)
        took = time.monotonic() - lost
        stderr = (tmp_path / "job.err").read_text()
        assert job.returncode == 1, stderr[-3000:]
        assert took < 60, f"the job took {took:.0f} s to end after the API went away"
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"train-and-sample: lost the Prefect API at {api} (no answer for")
        assert last.endswith(
            f"--param preset=tiny --param output_root={root} --param run_name=lost (or python "
            f"-m flows.train_and_sample --preset tiny --output-root {root} --run-name lost)"
        ), last
        time.sleep(1.0)
        assert _storm_processes(str(run_dir)) == []

        start_server()
        final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
        _assert_same_run(run_dir, reference / "r1")
    finally:
        for server in servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def test_a_stage_whose_tasks_failed_fails_and_is_named(prefect_server, tmp_path):
    """A file where the training data's directory should be: every shard task fails, so the
    prepare-dataset stage is Failed (it used to report Completed, and `train` took the blame),
    and the parent's message and failure report name it; with the output root itself a file,
    the run stops before any stage, naming the path."""
    (tmp_path / "root" / "r" / "data").mkdir(parents=True)
    (tmp_path / "root" / "r" / "data" / "train").write_text("not a directory")
    state = train_and_sample(
        preset="tiny", output_root=str(tmp_path / "root"), run_name="r", return_state=True
    )
    assert state.is_failed()
    assert "stage 'prepare-dataset' failed" in state.message and "File exists" in state.message
    reports = [
        a for a in artifacts_of(state.state_details.flow_run_id) if a.key == "failure-report"
    ]
    assert reports and "stage 'prepare-dataset' failed" in reports[-1].data
    (tmp_path / "file-root").write_text("")
    state = train_and_sample(
        preset="tiny", output_root=str(tmp_path / "file-root"), run_name="r", return_state=True
    )
    assert state.is_failed() and "file-root" in state.message


def test_the_cli_exits_2_on_a_bad_parameter_before_any_work(prefect_server, tmp_path, capsys):
    from flows.train_and_sample import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "tiny", "--output-root", str(tmp_path), "--steps", "0"])
    assert exit_info.value.code == 2
    assert "bad parameter" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("root", "cause"),
    [
        ("file", "file-root is not a directory"),
        ("under-a-file", "lies under .*/file-root, which is not a directory"),
        ("proc", "/proc/runs cannot be written: No such file or directory"),
    ],
)
def test_the_cli_refuses_an_unusable_output_root_in_one_line(
    prefect_server, tmp_path, capsys, root, cause
):
    """Exit 2 before any work, with one line naming the output root and why: no traceback."""
    from flows.train_and_sample import main

    (tmp_path / "file-root").write_text("")
    given = {
        "file": tmp_path / "file-root",
        "under-a-file": tmp_path / "file-root" / "runs",
        "proc": pathlib.Path("/proc/runs"),
    }[root]
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "tiny", "--output-root", str(given)])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(rf"train-and-sample: bad parameter: output root .*{cause}.*", line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file-root"]


def test_a_failed_stage_ends_the_cli_with_the_command_that_resumes(
    prefect_server, tmp_path, capsys
):
    from flows.train_and_sample import main

    (tmp_path / "r" / "data").mkdir(parents=True)
    (tmp_path / "r" / "data" / "train").write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "tiny", "--output-root", str(tmp_path), "--run-name=r"])
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-2:]
    assert last[0].startswith("train-and-sample failed: ") and "prepare-dataset" in last[0]
    assert last[1] == (
        "it resumes where it stopped: python -m flows.train_and_sample --preset tiny "
        f"--output-root {tmp_path} --run-name r"
    )


@pytest.mark.system
def test_a_full_disk_fails_the_job_at_once_naming_the_file_and_a_rerun_with_space_finishes_it(
    tiny_run, tmp_path
):
    """`tiny` on a 2 MiB tmpfs: the disk fills during training; the job ends (exit 1) without
    retrying, its last lines naming a file under the output root, "No space left on device" and
    the command that resumes. With the tmpfs grown, that command finishes the run equal to the
    uninterrupted one."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    reference, _ = tiny_run
    root = tmp_path / "small-disk"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        command = [sys.executable, "-m", "flows.train_and_sample", "--preset", "tiny"]
        command += ["--output-root", str(root), "--run-name", "full"]
        started = time.monotonic()
        full = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert full.returncode == 1, full.stderr[-3000:]
        took = time.monotonic() - started
        assert took < 120, f"the job took {took:.0f} s to fail on a full disk"
        # The CLI's own last two lines (a library's exit handler may print after them).
        lines = full.stderr.strip().splitlines()
        at = max(i for i, line in enumerate(lines) if line.startswith("it resumes where"))
        assert at >= len(lines) - 3, lines[-5:]
        failed, resume = lines[at - 1 : at + 1]
        assert re.search(rf"{root}/full/\S+: No space left on device \(free space there", failed), (
            full.stderr[-2000:]
        )
        assert resume == (
            "it resumes where it stopped: python -m flows.train_and_sample --preset tiny "
            f"--output-root {root} --run-name full"
        )
        assert "AwaitingRetry" not in full.stderr  # no retry of what cannot pass

        subprocess.run(["mount", "-o", "remount,size=64m", str(root)], check=True)
        final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
        _assert_same_run(root / "full", reference / "r1")
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
