"""Damaged run files a re-run repairs or names: a config.json that cannot be read is rebuilt from
the run's parameters when its checkpoints were written by them (else refused, untouched), and a
training log cut short is rebuilt from the TensorBoard events beside it. Real training runs."""

import hashlib
import json
import shutil

import pytest

from diffusion_lib.run import Run
from diffusion_lib.training import ConfigError, Trainer, config_preset, train

pytestmark = pytest.mark.cost(25)


def _config(eight, **fields):
    return config_preset(
        "toy-ddpm",
        data_dir=eight,
        network="mlp-tiny",
        **{"num_steps": 30, "checkpoint_every": 10, "log_every": 5, **fields},
    )


@pytest.fixture
def trained(eight, tmp_path):
    run_dir = tmp_path / "run"
    train(_config(eight), run_dir)
    return run_dir


def test_a_damaged_config_json_is_rebuilt_from_parameters_its_checkpoints_agree_with(
    eight, trained
):
    path = trained / "config.json"
    original = path.read_bytes()
    checkpoints = {p.name: p.read_bytes() for p in (trained / "checkpoints").iterdir()}
    path.write_bytes(original[:12])  # cut short: not JSON

    # Read by a later stage, it names itself and says what rebuilds it.
    with pytest.raises(ConfigError, match=r"config\.json cannot be read \(JSONDecodeError"):
        _ = Run(trained).record
    # Parameters other than the run's: refused, saying why, and nothing is written.
    with pytest.raises(
        ConfigError, match=r"config\.json cannot be read .* not the one its checkpoints were"
    ):
        Trainer(_config(eight, learning_rate=0.5), trained)
    assert path.read_bytes() == original[:12]
    assert {p.name: p.read_bytes() for p in (trained / "checkpoints").iterdir()} == checkpoints

    # The run's own parameters: rebuilt, byte for byte, with a warning naming the file.
    warnings = []
    trainer = Trainer(_config(eight), trained, warn=warnings.append)
    assert path.read_bytes() == original
    assert len(warnings) == 1
    assert (
        f"{path} cannot be read" in warnings[0]
        and "match the checkpoints up to ckpt-30" in (warnings[0])
    )
    assert int(trainer.step.numpy()) == 30
    # Not JSON of a record at all (a list): the same.
    path.write_text("[1, 2]")
    Trainer(_config(eight), trained, warn=warnings.append)
    assert path.read_bytes() == original


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_training_log_cut_short_is_rebuilt_from_tensorboard(eight, trained):
    log = trained / "metrics.jsonl"
    original = _rows(trained)
    assert [row["step"] for row in original] == [5, 10, 15, 20, 25, 30]
    text = log.read_text()
    log.write_text(text[: text.index('"step": 15') + 20])  # rows 5 and 10, then half a row

    warnings = []
    Trainer(_config(eight), trained, warn=warnings.append)
    assert len(warnings) == 1, warnings
    assert "4 logged step(s) were cut short or missing (15, 20, 25, 30)" in warnings[0]
    assert "rebuilt from the TensorBoard events" in warnings[0]
    rebuilt = _rows(trained)
    assert [row["step"] for row in rebuilt] == [5, 10, 15, 20, 25, 30]
    for mine, theirs in zip(rebuilt, original, strict=True):
        assert list(mine) == list(theirs)  # the same fields in the same order
        for field in ("step", "total", "loss", "learning_rate", "grad_norm"):
            # TensorBoard keeps float32: the figures are float32 values in the first place.
            assert mine[field] == pytest.approx(theirs[field], rel=1e-6), field
        assert mine["time"] == pytest.approx(theirs["time"], abs=1.0)

    # Steps neither the log nor the events hold are reported, with the steps.
    shutil.rmtree(trained / "tensorboard")
    log.write_text("".join(line + "\n" for line in text.splitlines()[:2]))
    warnings = []
    Trainer(_config(eight), trained, warn=warnings.append)
    assert warnings == [
        f"{log}: step(s) 15, 20, 25, 30 are in neither the log nor the TensorBoard events"
    ]


def test_a_damaged_config_json_is_rebuilt_against_markers_that_name_the_precision(eight, trained):
    """Checkpoint markers whose fingerprint hashed the precision as given ("auto" here, as the
    class-conditional mnist-cpu runs train) still vouch for a run resumed in another precision
    of the same checkpoint layout."""
    identity = _config(eight).identity()
    identity["execution"]["precision"] = "auto"
    named = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    for marker in (trained / "checkpoints").glob("ckpt-*.json"):
        record = json.loads(marker.read_text())
        marker.write_text(json.dumps({**record, "config_fingerprint": named}))
    path = trained / "config.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match=r"not the one its checkpoints were written by"):
        Trainer(_config(eight, precision="mixed_float16"), trained)
    warnings = []
    trainer = Trainer(_config(eight, precision="float32"), trained, warn=warnings.append)
    assert int(trainer.step.numpy()) == 30 and "rebuilt from this run's parameters" in warnings[0]
    assert Run(trained).config.execution.precision == "float32"
