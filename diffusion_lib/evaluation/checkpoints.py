"""Scoring every checkpoint of a run, each metric beside its real-versus-real floor.

`evaluate_checkpoints(run_dir, ...)` samples `n` examples from each checkpoint's EMA weights with
one fixed sampler and seed, scores them against `n` held-out real examples, and writes
`run_dir/eval/metrics.json`: one row per checkpoint, every metric with its floor (the same
metric between `n` training and `n` held-out real examples, the best a model can honestly
reach at that n), and the best checkpoint by `best_metric`. Checkpoints already scored with the
same settings are not recomputed; reference features and floors are cached by the classifier,
both manifests, n and the seed.

Images: FID, KID, precision/recall on the feature classifier's features, classifier score and
class coverage on its softmax, and bits/dim from the variational bound (DDPM runs) on a fixed
subset. 2-D points: sliced Wasserstein distance and RBF MMD, and for the gaussian_mixture source
the exact average log-likelihood under the true density.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import tensorflow as tf

from diffusion_lib._atomic import atomic_path, atomic_write_bytes
from diffusion_lib.data import open_dataset
from diffusion_lib.data.sources.toy2d import mixture_from_options
from diffusion_lib.evaluation import metrics as M
from diffusion_lib.evaluation.classifier import ClassifierSpec, load_or_train_classifier
from diffusion_lib.render import to_uint8
from diffusion_lib.samplers import annealed_langevin_dynamics, ddim_sample, ddpm_sample
from diffusion_lib.training import (
    TrainConfig,
    committed_steps,
    load_ema_model,
    read_run_config,
)
from diffusion_lib.training.engine import CONFIG_NAME

LOWER_IS_BETTER = {
    "fid": True,
    "kid": True,
    "sliced_wasserstein": True,
    "mmd": True,
    "bits_per_dim": True,
    "precision": False,
    "recall": False,
    "classifier_score": False,
    "log_likelihood": False,
    "smallest_class_share": False,
    "chain_worst_rms_ratio": True,
}


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    n: int = 1000
    sampler: str = "ddim"  # "ddim" or "ddpm" for DDPM runs; score runs use annealed Langevin
    sampler_steps: int = 50
    eta: float = 0.0
    steps_per_level: int = 20
    step_lr: float = 2e-5
    seed: int = 0
    batch_size: int = 500
    bpd_examples: int = 16
    best_metric: str | None = None  # default: fid for images, sliced_wasserstein for points
    classifier_epochs: int = 5
    # Score only the newest k checkpoints (0: all). A score model's sampler costs hundreds of
    # network calls a sample: on a CPU budget the last checkpoint is where they pay.
    newest: int = 0

    def __post_init__(self):
        if isinstance(self.newest, bool) or not isinstance(self.newest, int) or self.newest < 0:
            raise ValueError(f"newest must be a non-negative integer, got {self.newest!r}")

    def fingerprint(self) -> str:
        return hashlib.sha256(
            json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        ).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class EvalReport:
    path: str
    rows: list
    floors: dict
    best_step: int | None
    best_metric: str


def _generate(restored, shape, spec: EvalSpec, data_rms: float) -> tuple[np.ndarray, list]:
    """Samples [n, ...] in model space, and for score runs the chain's per-level health
    [(sigma, rms, expected_rms)] over all n (RMS pooled over the chunks)."""
    model, objective = restored.model, restored.objective
    chunks, health = [], []
    for index, start in enumerate(range(0, spec.n, spec.batch_size)):
        size = min(spec.batch_size, spec.n - start)
        seed = [spec.seed, index]
        if hasattr(objective, "diffusion"):
            fn = lambda x, t: model(x, t)  # noqa: E731
            if spec.sampler == "ddpm":
                out = ddpm_sample(
                    fn, objective.diffusion, (size, *shape), seed=seed, clip_x0=_clip(shape)
                )
            else:
                out = ddim_sample(
                    fn,
                    objective.diffusion,
                    (size, *shape),
                    seed=seed,
                    num_steps=spec.sampler_steps,
                    eta=spec.eta,
                    clip_x0=_clip(shape),
                )
        else:
            sigmas = objective.sigmas
            start_x = tf.random.stateless_normal((size, *shape), seed) * float(sigmas[0])
            out = annealed_langevin_dynamics(
                lambda x, s: model(x, s),
                start_x,
                sigmas,
                spec.steps_per_level,
                spec.step_lr,
                seed=seed,
                denoise_final=True,
                data_rms=data_rms,
            )
            health.append([(h.sigma, h.rms**2 * size, h.expected_rms) for h in out.health])
        chunks.append(out.samples.numpy())
    pooled = [
        (levels[0][0], float(np.sqrt(sum(h[1] for h in levels) / spec.n)), levels[0][2])
        for levels in zip(*health, strict=True)
    ]
    return np.concatenate(chunks), pooled


def _clip(shape) -> tuple[float, float] | None:
    return (-1.0, 1.0) if len(shape) == 3 else None


def _to_images(samples: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(samples)):
        raise M.MetricInputError("generated samples contain NaN or Inf")
    return to_uint8(samples)


def _reference(train, test, n: int, seed: int):
    """n training and n held-out examples, fixed by seed (the floor's two real sets)."""
    if len(train) < n or len(test) < n:
        raise M.MetricInputError(
            f"n={n} needs {n} examples in each of train ({len(train)}) and test ({len(test)})"
        )
    rng = np.random.default_rng(seed)
    pick = lambda ds: ds.read_rows(np.sort(rng.choice(len(ds), n, replace=False))).values  # noqa: E731
    return pick(train), pick(test)


def _image_metrics(real_feats, samples_feats, samples_probs) -> dict:
    pr = M.precision_recall(real_feats, samples_feats)
    k = M.kid(
        real_feats,
        samples_feats,
        num_subsets=20,
        subset_size=max(2, min(1000, len(real_feats) // 2)),
    )
    hist = M.class_histogram(samples_probs)
    return {
        "fid": M.fid(real_feats, samples_feats),
        "kid": k.mean,
        "kid_std": k.std,
        "precision": pr.precision,
        "recall": pr.recall,
        "classifier_score": M.classifier_score(samples_probs),
        "classes_covered": hist.covered,
        "smallest_class_share": hist.smallest_share,
    }


def _image_reference(extractor, train, test, train_real, test_real, spec, cache_dir):
    """Held-out features and the floors, cached by (classifier, both manifests, n, seed)."""
    identity = f"{extractor.path.name}|{train.manifest.fingerprint}|{test.manifest.fingerprint}|{spec.n}|{spec.seed}"
    path = cache_dir / f"reference-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            return cached["test_features"], json.loads(str(cached["floors"]))
    test_feats = extractor.features(test_real)
    train_feats, train_probs = extractor.features_and_probabilities(train_real)
    floors = _image_metrics(test_feats, train_feats, train_probs)
    floors["classifier_test_accuracy"] = extractor.test_accuracy
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, test_features=test_feats, floors=np.array(json.dumps(floors)))
    return test_feats, floors


def _point_metrics(real, samples, mixture) -> dict:
    out = {
        "sliced_wasserstein": M.sliced_wasserstein(real, samples),
        "mmd": M.mmd_rbf(real, samples),
    }
    if mixture is not None:
        out["log_likelihood"] = float(
            np.mean(mixture.log_prob(tf.constant(samples, tf.float64)).numpy())
        )
    return out


def evaluate_checkpoints(
    run_dir: str | pathlib.Path,
    *,
    test_dir: str | pathlib.Path,
    train_dir: str | pathlib.Path | None = None,
    cache_dir: str | pathlib.Path | None = None,
    spec: EvalSpec = EvalSpec(),
) -> EvalReport:
    run_dir = pathlib.Path(run_dir)
    steps = committed_steps(run_dir / "checkpoints")
    if not steps:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint to evaluate")
    committed, steps = steps, steps[-spec.newest :] if spec.newest else steps
    train = open_dataset(train_dir or read_run_config(run_dir).data_dir)
    test = open_dataset(test_dir)
    if train.example_shape != test.example_shape:
        raise M.MetricInputError(
            f"train {train.example_shape} and test {test.example_shape} shapes differ"
        )
    images = train.kind == "image"
    best_metric = spec.best_metric or ("fid" if images else "sliced_wasserstein")
    out_path = run_dir / "eval" / "metrics.json"
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if previous.get("settings") != spec.fingerprint():
        previous = {}
    rows = {row["step"]: row for row in previous.get("rows", [])}

    train_real, test_real = _reference(train, test, spec.n, spec.seed)
    cache_dir = pathlib.Path(cache_dir or run_dir / "eval" / "cache")
    if images:
        extractor = load_or_train_classifier(
            train.directory,
            test.directory,
            cache_dir,
            ClassifierSpec(epochs=spec.classifier_epochs),
        )
        test_feats, floors = _image_reference(
            extractor, train, test, train_real, test_real, spec, cache_dir
        )
    else:
        mixture = None
        if train.manifest.spec.get("source") == "gaussian_mixture":
            options = train.manifest.spec["options"]
            defaults = {
                "weights": (0.2, 0.8),
                "means": ((-5.0, -5.0), (5.0, 5.0)),
                "stds": (1.0, 1.0),
            }
            mixture = mixture_from_options(**{k: options.get(k, v) for k, v in defaults.items()})
        floors = _point_metrics(
            test_real.astype(np.float64), train_real.astype(np.float64), mixture
        )
    mean, std = np.array(train.manifest.stats["mean"]), np.array(train.manifest.stats["std"])
    # The data's RMS in the network's space: what a healthy sampling chain ends near.
    model_space = train_real / 127.5 - 1.0 if images else (train_real - mean) / std
    data_rms = float(np.sqrt(np.mean(np.square(model_space, dtype=np.float64))))

    for step in steps:
        if step in rows:
            continue  # scored before with the same settings
        restored = load_ema_model(run_dir, step)
        raw, health = _generate(restored, train.example_shape, spec, data_rms)
        if images:
            feats, probs = extractor.features_and_probabilities(_to_images(raw))
            values = _image_metrics(test_feats, feats, probs)
            if hasattr(restored.objective, "diffusion") and spec.bpd_examples:
                subset = test_real[: spec.bpd_examples].astype(np.float32) / 127.5 - 1.0
                bound = restored.objective.diffusion.bits_per_dim(
                    restored.model, subset, seed=spec.seed
                )
                values["bits_per_dim"] = float(np.mean(bound.total.numpy()))
        else:
            points = raw.astype(np.float64) * std + mean
            if not np.all(np.isfinite(points)):
                raise M.MetricInputError(f"checkpoint {step}: generated samples contain NaN or Inf")
            values = _point_metrics(test_real.astype(np.float64), points, mixture)
        if health:
            # The worst level's RMS of x over the RMS it should carry: ~1 for a healthy chain.
            values["chain_worst_rms_ratio"] = max(rms / expected for _, rms, expected in health)
        rows[step] = {
            "step": step,
            "metrics": {k: {"value": v, "floor": floors.get(k)} for k, v in values.items()},
        }
        if health:
            rows[step]["chain"] = [
                {"sigma": sigma, "rms": rms, "expected_rms": expected}
                for sigma, rms, expected in health
            ]

    ordered = [rows[s] for s in sorted(rows)]
    sign = 1 if LOWER_IS_BETTER.get(best_metric, True) else -1
    # Only checkpoints still on disk can be best: rows scored earlier may name pruned ones.
    scored = [r for r in ordered if best_metric in r["metrics"] and r["step"] in committed]
    best = (
        min(scored, key=lambda r: sign * r["metrics"][best_metric]["value"])["step"]
        if scored
        else None
    )
    report = {
        "settings": spec.fingerprint(),
        "spec": dataclasses.asdict(spec),
        "n": spec.n,
        "floors": floors,
        "rows": ordered,
        "best": {"metric": best_metric, "step": best},
    }
    atomic_write_bytes(out_path, json.dumps(report, indent=2).encode())
    return EvalReport(str(out_path), ordered, floors, best, best_metric)


# The TrainConfig fields that decide the shapes of a run's weights: a warm start needs them equal.
ARCHITECTURE_FIELDS = (
    "network",
    "network_overrides",
    "objective",
    "num_timesteps",
    "num_levels",
    "var_type",
    "score_output_scaling",
)


def best_previous_checkpoint(root, like: TrainConfig, exclude=()) -> str:
    """ "RUN_DIR@STEP" of the best scored checkpoint of the newest run under `root` (newest by
    its eval/metrics.json) trained on the same dataset as `like.data_dir`, with the same
    architecture and objective; "" if there is none. Runs in `exclude` are skipped."""
    fingerprint = open_dataset(like.data_dir, verify="none").manifest.fingerprint
    wanted = {k: like.to_dict()[k] for k in ARCHITECTURE_FIELDS}
    skip = {pathlib.Path(p).resolve() for p in exclude}
    candidates = sorted(
        pathlib.Path(root).glob("*/eval/metrics.json"), key=lambda p: p.stat().st_mtime_ns
    )
    for metrics in reversed(candidates):
        run_dir = metrics.parent.parent
        if run_dir.resolve() in skip or not (run_dir / CONFIG_NAME).is_file():
            continue
        record = json.loads((run_dir / CONFIG_NAME).read_text())
        config = TrainConfig.from_dict(record["config"]).to_dict()
        step = json.loads(metrics.read_text())["best"]["step"]
        if (
            record.get("dataset_fingerprint") == fingerprint
            and {k: config[k] for k in ARCHITECTURE_FIELDS} == wanted
            and step in committed_steps(run_dir / "checkpoints")
        ):
            return f"{run_dir}@{step}"
    return ""
