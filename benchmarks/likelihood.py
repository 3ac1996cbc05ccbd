"""Bits/dim of held-out images: the probability-flow ODE's exact likelihood beside DDPM's
variational bound, on one trained checkpoint.

    python benchmarks/likelihood.py RUN_DIR [--step N] [--n 32] [--rtol 1e-5] [--probes 1]

The ODE figure: uniform dequantisation, Hutchinson's estimator with Rademacher probes (one per
image per repeat), Dormand-Prince at rtol = atol; printed as the mean over images with its
standard error (images and probes both vary), the network evaluations per solve and seconds.
The bound (DDPM runs): `GaussianDiffusion.bits_per_dim` on the same images, all T terms. Both
are upper bounds on the discrete data's bits/dim only in expectation over the dequantisation.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from report import Table, add_markdown_option, measure_machine, publish  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--n", type=int, default=32, help="held-out images")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--probes", type=int, default=1, help="repeats with other probes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-vlb", action="store_true")
    add_markdown_option(parser)
    args = parser.parse_args()

    import numpy as np

    from diffusion_lib.data import open_dataset
    from diffusion_lib.run import Run
    from diffusion_lib.sde_likelihood import bits_per_dim, ode_log_likelihood

    run = Run(args.run_dir)
    restored = run.restore(args.step, precision="float32")  # whatever the run computes in
    test = open_dataset(run.data_dir("test"))
    pixels = test.read_rows(np.arange(args.n)).values
    dim = int(np.prod(pixels.shape[1:]))
    machine = measure_machine()
    table = Table(
        "likelihood",
        ["figure", "bits/dim", "standard error", "network evaluations / solve", "seconds"],
        n=f"{args.n} held-out images x {args.probes} probe(s) each",
        caption=f"the {restored.config.objective} checkpoint at step {restored.step} of "
        f"`{run.path.name}`, {dim} dimensions",
    )
    sde, score_fn = restored.objective.sde_view(restored.model)
    values, evaluations = [], []
    start = time.perf_counter()
    for repeat in range(args.probes):
        x, log_abs_scale = run.normalizer.dequantized(pixels, [args.seed, repeat])
        out = ode_log_likelihood(
            score_fn,
            sde,
            x.astype(np.float32),
            seed=[args.seed, repeat],
            rtol=args.rtol,
            atol=args.rtol,
        )
        values.append(bits_per_dim(out.log_prob, dim, log_abs_scale))
        evaluations.append(out.evaluations)
    values = np.concatenate(values)
    seconds = time.perf_counter() - start
    table.add(
        f"probability-flow ODE ({sde.name}, rtol {args.rtol:g})",
        f"{values.mean():.3f}",
        f"{values.std(ddof=1) / np.sqrt(values.size):.3f}",
        f"{np.mean(evaluations):.0f}",
        f"{seconds:.0f}",
    )
    if args.no_vlb or restored.objective.family != "diffusion":
        publish(__file__, args, [table], machine)
        return
    start = time.perf_counter()
    bound = restored.objective.diffusion.bits_per_dim(
        restored.model, run.normalizer.to_model(pixels, np.float32), seed=args.seed
    )
    total = bound.total.numpy()
    table.add(
        f"variational bound (DDPM, all {restored.objective.diffusion.num_timesteps} terms)",
        f"{total.mean():.3f}",
        f"{total.std(ddof=1) / np.sqrt(total.size):.3f}",
        restored.objective.diffusion.num_timesteps,
        f"{time.perf_counter() - start:.0f}",
    )
    publish(__file__, args, [table], machine)


if __name__ == "__main__":
    main()
