"""Sampler settings on a trained run: FID and classifier score per setting, no retraining.

    python benchmarks/sampler_settings.py RUN_DIR [--step N] [--n 400] \
        --levels 100 232 --steps-per-level 3 5 [--no-denoise]        # a score (NCSN) run
    python benchmarks/sampler_settings.py RUN_DIR --ancestral-levels 100 200 --no-langevin
    python benchmarks/sampler_settings.py RUN_DIR --ddim-steps 20 50 --eta 0 1   # a DDPM run
    python benchmarks/sampler_settings.py RUN_DIR --spec dpm_solver_pp:num_steps=10 --spec ddpm

Score runs: for each number of levels L (geometric between the run's sigma_max and sigma_min: the network is
conditioned on log sigma, so the sampler may use other levels than training drew from) and each
T steps per level, step_lr is NCSNv2's technique 4 for (L, T), and `n` samples from the EMA
weights are scored like the evaluation stage scores them (the same feature classifier, the same
`n` held-out digits and seed, so FID is comparable with the run's eval/metrics.json and its
floor). Prints one row per setting: network evaluations per sample, seconds, FID / floor,
classifier score, smallest class share, the chain's worst RMS ratio. DDPM runs: DDIM with each
number of steps and eta (x0 clipped to [-1, 1], as the pipeline samples). `--spec` rows (any
registered sampler the run can take, e.g. the score-SDE samplers on a DDPM or NCSN run, with
settings as key=value) replace the default rows.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
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
    parser.add_argument(
        "--ancestral-levels",
        type=int,
        nargs="*",
        default=[],
        help="score runs: also ancestral sampling (ve_ancestral) on this many geometric levels",
    )
    parser.add_argument(
        "--no-langevin", action="store_true", help="score runs: skip annealed Langevin rows"
    )
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--eta", type=float, nargs="+", default=[0.0])
    parser.add_argument(
        "--spec",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="a sampler and its settings (JSON values), e.g. dpm_solver_pp:num_steps=10,order=3",
    )
    parser.add_argument(
        "--table",
        default=None,
        metavar="NAME",
        help="the table's section, sampler_settings:NAME (default: the run's objective)",
    )
    add_markdown_option(parser)
    args = parser.parse_args()

    import numpy as np

    from diffusion_lib.data import open_dataset
    from diffusion_lib.draw import draw
    from diffusion_lib.evaluation import (
        ClassifierSpec,
        class_histogram,
        classifier_score,
        fid,
        load_or_train_classifier,
    )
    from diffusion_lib.run import Run
    from diffusion_lib.samplers import SamplerSpec, technique4_step_lr

    run = Run(args.run_dir)
    restored = run.restore(args.step)
    step = restored.step
    train, test = open_dataset(run.data_dir("train")), open_dataset(run.data_dir("test"))
    extractor = load_or_train_classifier(
        train.directory, test.directory, run.eval_dir / "cache", ClassifierSpec(epochs=5)
    )
    # The evaluation stage's draw of held-out digits: n of train, then n of test, one rng.
    rng = np.random.default_rng(args.seed)
    rng.choice(len(train), args.n, replace=False)
    test_real = test.read_rows(np.sort(rng.choice(len(test), args.n, replace=False))).values
    test_feats = extractor.features(test_real)
    floor = None
    metrics = run.metrics_path
    if metrics.is_file():
        report = json.loads(metrics.read_text())
        if report.get("n") == args.n:
            floor = report["floors"]["fid"]
    train_real = train.read_rows(np.arange(min(len(train), 2000))).values
    data_rms = float(np.sqrt(np.mean(np.square(run.normalizer.to_model(train_real)))))

    machine = measure_machine()
    table = Table(
        f"sampler_settings:{args.table or restored.config.objective}",
        ["setting", "network calls a sample", "seconds", "FID", "FID / floor"]
        + ["classifier score", "smallest class share", "worst chain RMS ratio"],
        n=f"{args.n} samples a row, sampling seed {args.seed}",
        caption=f"the {restored.config.objective} checkpoint at step {step} of `{run.path.name}`"
        + (f"; FID floor {floor:.2f}" if floor else ""),
    )

    def score(name, evals, seconds, samples, worst=float("nan")):
        feats, probs = extractor.features_and_probabilities(samples)
        value = fid(test_feats, feats)
        table.add(
            name,
            evals,
            f"{seconds:.0f}",
            f"{value:.2f}",
            f"{value / floor:.2f}" if floor else "-",
            f"{classifier_score(probs):.2f}",
            f"{class_histogram(probs).smallest_share:.3f}",
            "-" if np.isnan(worst) else f"{worst:.2f}",
        )

    # Network evaluations per sample, counted as the sampler calls the network (a guided call
    # on twice the batch counts twice; guidance limited to an interval only where it applies).
    import tensorflow as tf

    rows = tf.Variable(0, dtype=tf.int64, trainable=False)

    def counting(x, cond, **kw):
        rows.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
        return restored.model(x, cond, **kw)

    counted = dataclasses.replace(restored, model=counting, identity=())

    # The evaluation stage draws n <= its batch of 500 as one chunk from seed [seed, 0]: so here.
    for text in args.spec:
        name, _, rest = text.partition(":")
        settings = {}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            settings[key] = json.loads(value)
        spec = SamplerSpec.of(name, **settings)
        start = time.perf_counter()
        rows.assign(0)
        out = draw(counted, spec, args.n, [args.seed, 0], data_rms=data_rms)
        evals = f"{int(rows.numpy()) / args.n:.0f}"
        worst = max((h.ratio for h in out.health), default=float("nan"))
        score(text, evals, time.perf_counter() - start, out.samples, worst)
    if args.spec:
        publish(__file__, args, [table], machine)
        return
    if restored.objective.family == "diffusion":
        for steps in args.ddim_steps:
            for eta in args.eta:
                start = time.perf_counter()
                spec = SamplerSpec.of("ddim", num_steps=steps, eta=eta)
                out = draw(restored, spec, args.n, [args.seed, 0])
                score(
                    f"DDIM {steps} steps, eta {eta}",
                    steps,
                    time.perf_counter() - start,
                    out.samples,
                )
        publish(__file__, args, [table], machine)
        return
    sigmas_run = np.asarray(restored.objective.sigmas)

    def at(levels):
        sigmas = np.geomspace(args.sigma_max or sigmas_run[0], sigmas_run[-1], levels)
        # The network is conditioned on log sigma: the chain may use other levels than training.
        objective = copy.copy(restored.objective)
        objective.sigmas = sigmas
        return sigmas, dataclasses.replace(restored, objective=objective, identity=())

    for levels in args.ancestral_levels:
        sigmas, at_levels = at(levels)
        start = time.perf_counter()
        out = draw(
            at_levels, SamplerSpec.of("ve_ancestral"), args.n, [args.seed, 0], data_rms=data_rms
        )
        score(
            f"ancestral (ve_ancestral), {levels} levels from {sigmas[0]:.3g}",
            levels,
            time.perf_counter() - start,
            out.samples,
            max(h.ratio for h in out.health),
        )
    for levels in [] if args.no_langevin else args.levels:
        sigmas, at_levels = at(levels)
        for spl in args.steps_per_level:
            for scale in args.lr_scale:
                step_lr = technique4_step_lr(sigmas, spl) * scale
                start = time.perf_counter()
                spec = SamplerSpec.of(
                    "annealed_langevin",
                    steps_per_level=spl,
                    step_lr=step_lr,
                    denoise_final=not args.no_denoise,
                )
                out = draw(at_levels, spec, args.n, [args.seed, 0], data_rms=data_rms)
                score(
                    f"{levels} levels from {sigmas[0]:.3g} x {spl}, step_lr {step_lr:.3g}, "
                    f"denoise {not args.no_denoise}",
                    levels * spl + (0 if args.no_denoise else 1),
                    time.perf_counter() - start,
                    out.samples,
                    max(h.ratio for h in out.health),
                )
    publish(__file__, args, [table], machine)


if __name__ == "__main__":
    main()
