"""Command lines made from the flows (flows/cli.py): a flag per parameter with its type, choices,
default and meaning, only the flags given reaching the flow."""

import inspect

import pytest

from flows.cli import parser_for
from flows.evaluate import evaluate_flow
from flows.inpaint import inpaint_flow
from flows.params import MEANINGS, described
from flows.prepare_dataset import prepare_dataset_flow
from flows.sample import sample_flow
from flows.train import train_flow
from flows.train_and_sample import train_and_sample

FLOWS = [
    train_and_sample,
    prepare_dataset_flow,
    train_flow,
    evaluate_flow,
    sample_flow,
    inpaint_flow,
]


@pytest.mark.parametrize("flow_obj", FLOWS, ids=lambda f: f.name)
def test_every_parameter_is_a_flag_with_its_meaning_and_default(flow_obj, capsys):
    parser = parser_for(flow_obj)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    shown, unwrapped = " ".join(out.split()), "".join(out.split())  # argparse wraps lines
    for name, parameter in inspect.signature(flow_obj.fn).parameters.items():
        flag = "--" + name.replace("_", "-")
        assert flag in shown, flag
        assert "".join(MEANINGS[name].split()) in unwrapped, name
        if parameter.default is inspect.Parameter.empty:
            assert f"{flag}" in parser.format_usage() and "required" in shown
        elif parameter.default is not None:
            assert f"default: {parameter.default}" in shown


def test_only_the_flags_given_reach_the_flow_typed():
    parser = parser_for(train_and_sample, defaults={"preset": "mnist-cpu"})
    assert vars(parser.parse_args([])) == {}
    given = parser.parse_args(
        ["--steps", "5", "--warm-start", "--guidance", "0.5", "--model", "ncsn"]
    )
    assert vars(given) == {"steps": 5, "warm_start": True, "guidance": 0.5, "model": "ncsn"}
    assert vars(parser.parse_args(["--no-warm-start"])) == {"warm_start": False}
    assert "default: mnist-cpu" in " ".join(parser.format_help().split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "five"], "invalid int value"),
        (["--model", "vae"], "invalid choice"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_a_malformed_flag_exits_2_naming_it(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        parser_for(train_and_sample).parse_args(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_a_required_parameter_left_out_exits_2(capsys):
    with pytest.raises(SystemExit) as exited:
        parser_for(evaluate_flow).parse_args(["--preset", "tiny"])
    assert exited.value.code == 2 and "--run-name" in capsys.readouterr().err


def test_a_flow_parameter_without_a_meaning_is_refused_at_import():
    def flow_fn(preset: str, colour: str = "red"):
        """Does something."""

    with pytest.raises(TypeError, match=r"no meaning .* \['colour'\]"):
        described(flow_fn)

    def undocumented(preset: str):
        pass

    with pytest.raises(TypeError, match="docstring"):
        described(undocumented)
