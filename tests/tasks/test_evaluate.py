"""`score_checkpoints` as a task: it returns the best step and publishes the metrics table, one
row a checkpoint with each metric beside its floor, read back through the Prefect API."""

import json

from prefect import flow

from diffusion_lib.evaluation import EvalSpec
from diffusion_lib.samplers import SamplerSpec
from tasks.evaluate import score_checkpoints
from tests.prefect_reads import artifacts_of

SPEC = EvalSpec(n=200, sampler=SamplerSpec.of("ddim", num_steps=10), batch_size=100)


@flow
def evaluate(run_dir: str, test_dir: str) -> dict:
    return score_checkpoints(run_dir, test_dir, SPEC)


def test_the_metrics_table_has_a_row_a_checkpoint(prefect_server, toy_ddpm_run):
    state = evaluate(str(toy_ddpm_run), str(toy_ddpm_run / "data" / "test"), return_state=True)
    assert state.result()["best_step"] in (100, 200)

    (artifact,) = [
        a for a in artifacts_of(state.state_details.flow_run_id) if a.key == "checkpoint-metrics"
    ]
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert [row["step"] for row in rows] == [100, 200]
    assert {"sliced_wasserstein", "sliced_wasserstein (floor)"} <= set(rows[0])
