"""Sampler settings on a trained run: FID and classifier score per setting, no retraining.

    python benchmarks/sampler_settings.py RUN_DIR [--step N] [--n 400] \
        --levels 100 232 --steps-per-level 3 5 [--no-denoise]        # a score (NCSN) run
    python benchmarks/sampler_settings.py RUN_DIR --ddim-steps 20 50 --eta 0 1   # a DDPM run

Score runs: for each number of levels L (geometric between the run's sigma_max and sigma_min: the network is
conditioned on log sigma, so the sampler may use other levels than training drew from) and each
T steps per level, step_lr is NCSNv2's technique 4 for (L, T), and `n` samples from the EMA
weights are scored like the evaluation stage scores them (the same feature classifier, the same
`n` held-out digits and seed, so FID is comparable with the run's eval/metrics.json and its
floor). Prints one row per setting: network evaluations per sample, seconds, FID / floor,
classifier score, smallest class share, the chain's worst RMS ratio. DDPM runs: DDIM with each
number of steps and eta (x0 clipped to [-1, 1], as the pipeline samples).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", type=int, nargs="+", default=[100])
    parser.add_argument("--steps-per-level", type=int, nargs="+", default=[3])
    parser.add_argument("--lr-scale", type=float, nargs="+", default=[1.0])
    parser.add_argument(
        "--sigma-max", type=float, default=None, help="start the levels here (default: the run's)"
    )
    parser.add_argument("--no-denoise", action="store_true")
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--eta", type=float, nargs="+", default=[0.0])
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from diffusion_lib.data import open_dataset
    from diffusion_lib.evaluation import (
        ClassifierSpec,
        class_histogram,
        classifier_score,
        fid,
        load_or_train_classifier,
    )
    from diffusion_lib.render import to_uint8
    from diffusion_lib.samplers import annealed_langevin_dynamics, ddim_sample, technique4_step_lr
    from diffusion_lib.training import committed_steps, load_ema_model

    run = args.run_dir
    step = args.step or committed_steps(run / "checkpoints")[-1]
    restored = load_ema_model(run, step)
    train, test = open_dataset(run / "data" / "train"), open_dataset(run / "data" / "test")
    extractor = load_or_train_classifier(
        train.directory, test.directory, run / "eval" / "cache", ClassifierSpec(epochs=5)
    )
    # The evaluation stage's draw of held-out digits: n of train, then n of test, one rng.
    rng = np.random.default_rng(args.seed)
    rng.choice(len(train), args.n, replace=False)
    test_real = test.read_rows(np.sort(rng.choice(len(test), args.n, replace=False))).values
    test_feats = extractor.features(test_real)
    floor = None
    metrics = run / "eval" / "metrics.json"
    if metrics.is_file():
        report = json.loads(metrics.read_text())
        if report.get("n") == args.n:
            floor = report["floors"]["fid"]
    train_real = train.read_rows(np.arange(min(len(train), 2000))).values
    data_rms = float(np.sqrt(np.mean(np.square(train_real / 127.5 - 1.0))))
    shape = train.example_shape

    print(f"run {run} step {step}; FID floor {floor}")
    print(
        "| setting | evals/sample | s | FID | FID/floor | classifier score | smallest share "
        "| worst chain ratio |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    noise = tf.random.stateless_normal((args.n, *shape), [args.seed, 0])

    def score(name, evals, seconds, samples, worst=float("nan")):
        feats, probs = extractor.features_and_probabilities(to_uint8(samples.numpy()))
        value = fid(test_feats, feats)
        print(
            f"| {name} | {evals} | {seconds:.0f} | {value:.2f} "
            f"| {value / floor if floor else float('nan'):.2f} | {classifier_score(probs):.2f} "
            f"| {class_histogram(probs).smallest_share:.3f} | {worst:.2f} |",
            flush=True,
        )

    if hasattr(restored.objective, "diffusion"):
        for steps in args.ddim_steps:
            for eta in args.eta:
                start = time.perf_counter()
                out = ddim_sample(
                    restored.model,
                    restored.objective.diffusion,
                    (args.n, *shape),
                    seed=[args.seed, 0],
                    num_steps=steps,
                    eta=eta,
                    clip_x0=(-1.0, 1.0),
                )
                score(
                    f"DDIM {steps} steps, eta {eta}",
                    steps,
                    time.perf_counter() - start,
                    out.samples,
                )
        return
    sigmas_run = np.asarray(restored.objective.sigmas)
    for levels in args.levels:
        sigmas = np.geomspace(args.sigma_max or sigmas_run[0], sigmas_run[-1], levels)
        for spl in args.steps_per_level:
            for scale in args.lr_scale:
                step_lr = technique4_step_lr(sigmas, spl) * scale
                start = time.perf_counter()
                out = annealed_langevin_dynamics(
                    restored.model,
                    noise * float(sigmas[0]),
                    sigmas,
                    spl,
                    step_lr,
                    seed=[args.seed, 0],
                    denoise_final=not args.no_denoise,
                    data_rms=data_rms,
                )
                score(
                    f"{levels} levels from {sigmas[0]:.3g} x {spl}, step_lr {step_lr:.3g}, "
                    f"denoise {not args.no_denoise}",
                    levels * spl + (0 if args.no_denoise else 1),
                    time.perf_counter() - start,
                    out.samples,
                    max(h.ratio for h in out.health),
                )


if __name__ == "__main__":
    main()
