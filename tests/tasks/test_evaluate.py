"""`score_checkpoints` as tasks: it returns the best step and publishes the metrics table (a row a
metric, its floor once, a column a checkpoint), read back through the Prefect API."""

import json

from prefect import flow

from diffusion_lib.evaluation import EvalSpec
from diffusion_lib.samplers import SamplerSpec
from tasks.evaluate import metrics_table, score_checkpoints
from tests.prefect_reads import artifacts_of

SPEC = EvalSpec(n=200, sampler=SamplerSpec.of("ddim", num_steps=10), batch_size=100)


@flow
def evaluate(run_dir: str, test_dir: str) -> dict:
    return score_checkpoints(run_dir, test_dir, SPEC)


def test_the_metrics_table_has_a_row_a_metric_and_a_column_a_checkpoint(
    prefect_server, toy_ddpm_run
):
    state = evaluate(str(toy_ddpm_run), str(toy_ddpm_run / "data" / "test"), return_state=True)
    assert state.result()["best_step"] in (100, 200)

    (artifact,) = [
        a for a in artifacts_of(state.state_details.flow_run_id) if a.key == "checkpoint-metrics"
    ]
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    best = state.result()["best_step"]
    assert [row["metric"] for row in rows] == [
        "balanced_pr",
        "precision",
        "recall",
        "kde_real_under_samples",
        "kde_samples_under_real",
        "sliced_wasserstein",
        "mmd",
    ]
    steps = [f"step {s}" + (" (best)" if s == best else "") for s in (100, 200)]
    assert list(rows[0]) == ["metric", "real-vs-real floor", *steps]


def test_the_table_states_each_floor_once_and_a_negative_one_as_zero():
    def metrics(fid, kid):
        return {
            "fid": {"value": fid, "floor": 2.0},
            "kid": {"value": kid, "floor": -3e-4},
            "bits_per_dim": {"value": 5.25, "floor": None},
        }

    rows = [
        {"step": 600, "metrics": metrics(30.0, 0.02)},
        {"step": 1200, "metrics": metrics(12.0, 0.01)},
    ]
    table = metrics_table(rows, best_step=1200)
    assert table[0] == {
        "metric": "fid",
        "real-vs-real floor": "2",
        "step 600": "30 (15.00x)",
        "step 1200 (best)": "12 (6.00x)",
    }
    # KID's unbiased estimate of a true 0 can fall below 0: no ratio to it.
    assert table[1]["real-vs-real floor"] == "~0 (-3.0e-04: unbiased estimate of 0)"
    assert table[1]["step 600"] == "0.02"
    assert table[2]["real-vs-real floor"] == "-" and table[2]["step 1200 (best)"] == "5.25"
