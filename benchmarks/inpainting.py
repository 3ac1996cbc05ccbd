"""Inpainting and imputation: the bias of the replacement method against resampling on Gaussian
data, and the `inpaint` stage on a trained run beside its baselines.

    python benchmarks/inpainting.py --gaussian [--levels 200] [--n 2000]
    python benchmarks/inpainting.py RUN_DIR --preset mnist-cpu [--model M] [--images 100] [--completions 4]

--gaussian: data N(MEAN, COV) in 2-D with correlation 0.8, coordinate 0 given, the exact score
as every family's model (tests/lib/samplers/test_known.py draws from the same chains). A row a
family, a column a number of resamplings (RePaint, jump length 10; 1 is the replacement
method): the drawn coordinate's mean minus the exact conditional mean, and its variance over
the conditional's.

RUN_DIR: `python -m flows.inpaint` as a user runs it (a fresh process, on a copy of the run so
nothing of it changes), once per method: the replacement method, RePaint with 3 resamplings,
reconstruction guidance, and the last two together (`--method NAME`, repeated, picks some). A
row per method and baseline: the classifier's accuracy on the completions against the true
digit, the error on the hidden part, FID against held-out digits, diversity among the
completions, and the stage's wall time.

RUN_DIR --posterior: what an exact model's completions would be recognised as, from the
training digits alone: the label of a training digit drawn from a kernel density's posterior
given the given part, against the true label, on every held-out digit; the bandwidth with the
best held-out likelihood, and h -> 0, the nearest neighbour.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # this checkout's library, and report.py
from report import Table, add_markdown_option, measure_machine, publish  # noqa: E402

MEAN, COV, GIVEN = [0.5, -0.3], [[1.0, 0.8], [0.8, 1.0]], 1.0
RESAMPLINGS = (1, 2, 4, 8, 16)
# Each method as flags of the inpaint flow, with the preset's sampler for filling in.
_NONE = ["--reconstruction", "0"]
METHODS = {
    "replacement": [*_NONE, "--resamplings", "1"],
    "RePaint, 3 resamplings": [*_NONE, "--resamplings", "3"],
    "reconstruction guidance, weight 30": ["--reconstruction", "30", "--resamplings", "1"],
    "reconstruction guidance 30, 2 resamplings": ["--reconstruction", "30", "--resamplings", "2"],
}


def gaussian_chains(data, levels: int, n: int) -> dict:
    """name -> sample(known): every model family's chain samplers on `data` with its exact
    model, `levels` steps each (the closed-form tests' chains)."""
    import tensorflow as tf

    from diffusion_lib.diffusion import GaussianDiffusion
    from diffusion_lib.samplers import (
        annealed_langevin_dynamics,
        ddim_sample,
        ddpm_sample,
        technique4_step_lr,
        ve_ancestral_sample,
    )
    from diffusion_lib.samplers.sde import ancestral_sample, euler_maruyama_sample
    from diffusion_lib.schedules import beta_schedule, sigma_schedule
    from diffusion_lib.sde import VESDE, VPSDE

    diffusion = GaussianDiffusion(beta_schedule("linear", levels, 1e-4, 0.02 * 1000 / levels))
    sigmas = sigma_schedule(20.0, 0.01, levels)
    start = tf.random.stateless_normal((n, 2), [3, 4]) * 20.0
    per_level = 5
    langevin_levels = sigma_schedule(20.0, 0.01, levels // per_level)
    step_lr = technique4_step_lr(langevin_levels, per_level)
    vp = VPSDE(num_steps=levels)
    ve = VESDE(sigma_min=0.01, sigma_max=20.0, num_steps=levels)
    eps = data.eps_fn(diffusion)
    return {
        "ddpm": lambda k: ddpm_sample(eps, diffusion, (n, 2), seed=0, known=k),
        "ddim eta 1": lambda k: ddim_sample(
            eps, diffusion, (n, 2), seed=0, num_steps=levels, eta=1.0, known=k
        ),
        "ve_ancestral": lambda k: ve_ancestral_sample(
            data.sigma_score_fn(), start, sigmas, seed=0, known=k
        ),
        "annealed_langevin": lambda k: annealed_langevin_dynamics(
            data.sigma_score_fn(),
            start,
            langevin_levels,
            steps_per_level=per_level,
            step_lr=step_lr,
            seed=0,
            known=k,
        ),
        "sde_ancestral (VP)": lambda k: ancestral_sample(
            data.score_fn(vp), vp, (n, 2), seed=0, known=k
        ),
        "sde_euler_maruyama (VE)": lambda k: euler_maruyama_sample(
            data.score_fn(ve), ve, (n, 2), seed=0, num_steps=levels, known=k
        ),
    }


def given_first(n: int, **resampling):
    """Coordinate 0 given (GIVEN) in each of n rows, in the samplers' `Known` form."""
    import numpy as np
    import tensorflow as tf

    from diffusion_lib.samplers import Known

    values = tf.constant(np.tile([[GIVEN, 0.0]], (n, 1)), tf.float32)
    return Known(values, tf.constant([[1.0, 0.0]]), **resampling)


def gaussian(args) -> Table:
    from diffusion_lib.analytic import GaussianData

    data = GaussianData(MEAN, COV)
    mean, cov = data.conditional([True, False], [[GIVEN]])
    table = Table(
        "inpainting:gaussian",
        ["family", *[f"{r} resampling{'s' if r > 1 else ''}" for r in RESAMPLINGS]],
        n=f"{args.n} draws a cell, fixed seeds",
        caption=f"data N({MEAN}, {COV}), coordinate 0 given = {GIVEN}: the drawn coordinate's "
        f"mean error and variance over the exact conditional's (N({mean[0, 0]:.2f}, "
        f"{cov[0, 0]:.2f})); {args.levels} steps, jump length 10",
    )
    for name, sample in gaussian_chains(data, args.levels, args.n).items():
        cells = []
        for r in RESAMPLINGS:
            drawn = sample(given_first(args.n, jump_length=10, resamplings=r)).samples.numpy()
            error = drawn[:, 1].mean() - mean[0, 0]
            cells.append(f"{error:+.3f} / {drawn[:, 1].var() / cov[0, 0]:.2f}")
        table.add(name, *cells)
    return table


def stage(args) -> Table:
    table = Table(
        # Another number of digits is another table (the flow's default, 100, has none).
        f"inpainting:stage-{args.model}" + (f"-{args.images}" if args.images != 100 else ""),
        ["method", "accuracy", "hidden MSE", "hidden PSNR dB", "FID (floor)", "diversity"]
        + ["stage wall s"],
        n=f"{args.images} held-out digits x {args.completions} completions, one run a method",
        caption=f"`python -m flows.inpaint` on `{args.run_dir.name}` ({args.preset}, "
        f"--model {args.model}), mask "
        f"{args.masks}; the baselines need no model",
    )
    baselines = None
    for method, flags in METHODS.items():
        if args.method and method not in args.method:
            continue
        scratch = pathlib.Path(tempfile.mkdtemp(prefix="inpainting-bench-"))
        shutil.copytree(args.run_dir, scratch / "run", ignore=shutil.ignore_patterns("inpaint"))
        command = [sys.executable, "-m", "flows.inpaint", "--preset", args.preset]
        command += ["--model", args.model]
        command += ["--output-root", str(scratch), "--run-name", "run", "--masks", args.masks]
        command += ["--images", str(args.images), "--completions", str(args.completions)]
        start = time.perf_counter()
        done = subprocess.run([*command, *flags], cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{method}: the stage failed:\n{done.stderr[-3000:]}")
        report = json.loads((scratch / "run" / "inpaint" / "metrics.json").read_text())
        methods = report["masks"][args.masks]
        table.add(method, *_cells(methods["completions"]), f"{seconds:.0f}")
        baselines = {k: v for k, v in methods.items() if k != "completions"}
        shutil.rmtree(scratch, ignore_errors=True)
    for name, entry in baselines.items():
        table.add(f"baseline: {name}", *_cells(entry), "-")
    return table


def posterior(args) -> Table:
    """How often a draw from the training digits' own p(label | given part) names the true
    digit: a Gaussian kernel density on the training digits' given pixels (pixels in [0, 1]) at
    bandwidths h, each with its held-out log-likelihood; h -> 0 is the nearest neighbour."""
    import numpy as np

    from diffusion_lib.data import open_dataset
    from diffusion_lib.masks import mask_of
    from diffusion_lib.run import Run

    run = Run(args.run_dir)
    train, test = (open_dataset(run.data_dir(split)).read() for split in ("train", "test"))
    given = mask_of(args.masks, train.values.shape[1:]).reshape(-1)
    known = train.values.reshape(len(train.values), -1)[:, given].astype(np.float64) / 255
    held = test.values.reshape(len(test.values), -1)[:, given].astype(np.float64) / 255
    squared = (held**2).sum(1)[:, None] + (known**2).sum(1)[None] - 2 * held @ known.T
    squared = np.maximum(squared, 0.0)
    same = train.labels[None, :] == test.labels[:, None]
    table = Table(
        "inpainting:posterior",
        [
            "bandwidth h",
            "held-out log-likelihood (nats)",
            "effective neighbours",
            "label agreement",
        ],
        n=f"{len(held):,} held-out digits (all of the test split), {len(known):,} training digits",
        caption=f"mask {args.masks}: the label of a training digit drawn with weight "
        "exp(-d^2 / 2h^2), d the distance between the given parts, against the true label",
    )
    nearest = same[np.arange(len(held)), squared.argmin(1)].mean()
    table.add("0 (the nearest neighbour)", "-", "1.0", f"{nearest:.1%}")
    for h in (0.1, 0.2, 0.3, 0.5, 1.0):
        log_w = -squared / (2 * h * h)
        top = log_w.max(1, keepdims=True)
        log_sum = top[:, 0] + np.log(np.exp(log_w - top).sum(1))
        weights = np.exp(log_w - log_sum[:, None])
        log_likelihood = log_sum - np.log(len(known)) - given.sum() / 2 * np.log(2 * np.pi * h * h)
        table.add(
            h,
            f"{log_likelihood.mean():.1f}",
            f"{(1 / (weights**2).sum(1)).mean():.1f}",
            f"{(weights * same).sum(1).mean():.1%}",
        )
    return table


def _cells(entry: dict) -> list[str]:
    fid = f"{entry['fid']:.2f} ({entry['fid_floor']:.2f})" if "fid" in entry else "-"
    accuracy = f"{entry['accuracy']:.1%}" if "accuracy" in entry else "-"
    psnr = f"{entry['hidden_psnr']:.2f}" if "hidden_psnr" in entry else "-"
    return [accuracy, f"{entry['hidden_mse']:.4f}", psnr, fid, f"{entry['diversity']:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=pathlib.Path, nargs="?")
    parser.add_argument("--gaussian", action="store_true", help="the resampling curve")
    parser.add_argument("--levels", type=int, default=200)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--preset", default="mnist-cpu")
    parser.add_argument("--model", help="the run's model (default: the preset's)")
    parser.add_argument("--masks", default="top-known")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--completions", type=int, default=4)
    parser.add_argument(
        "--method", action="append", choices=list(METHODS), help="only these (default: all)"
    )
    parser.add_argument(
        "--posterior",
        action="store_true",
        help="with RUN_DIR: the training digits' own label posterior instead of the stage",
    )
    add_markdown_option(parser)
    args = parser.parse_args()
    if not args.gaussian and args.run_dir is None:
        parser.error("give RUN_DIR, or --gaussian")
    if args.run_dir is not None and args.model is None:
        from tasks.presets import default_model

        args.model = default_model(args.preset)
    machine = measure_machine()
    tables = [gaussian(args)] if args.gaussian else []
    if args.run_dir is not None:
        tables.append(posterior(args) if args.posterior else stage(args))
    publish(__file__, args, tables, machine)


if __name__ == "__main__":
    main()
