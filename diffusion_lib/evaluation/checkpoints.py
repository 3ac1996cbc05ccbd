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
subset. 2-D points: k-NN precision and recall on the points themselves, the mean log-likelihood
of the held-out points under a kernel density of the samples and of the samples under one of the
held-out points (one bandwidth, fitted by likelihood from the training to the held-out points),
sliced Wasserstein distance and RBF MMD, and for the gaussian_mixture source the exact average
log-likelihood under the true density. The best 2-D checkpoint is chosen by `balanced_pr`, the
smaller of precision and recall each over its floor: a model must be both faithful and cover the
data to score high (sliced Wasserstein alone rates a disc of the data's spread close to a swiss
roll).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from diffusion_lib._atomic import atomic_path, atomic_write_bytes
from diffusion_lib.data import open_dataset
from diffusion_lib.data.sources.toy2d import stored_mixture
from diffusion_lib.draw import SamplerMismatch, draw_set
from diffusion_lib.evaluation import metrics as M
from diffusion_lib.evaluation.classifier import ClassifierSpec, load_or_train_classifier
from diffusion_lib.normalizer import Normalizer
from diffusion_lib.run import EVAL_DIR, METRICS_NAME, Run
from diffusion_lib.samplers import SamplerSpec
from diffusion_lib.sde_likelihood import bits_per_dim, ode_log_likelihood
from diffusion_lib.training import TrainConfig

LOWER_IS_BETTER = {
    "fid": True,
    "kid": True,
    "sliced_wasserstein": True,
    "mmd": True,
    "bits_per_dim": True,
    "ode_bits_per_dim": True,
    "precision": False,
    "recall": False,
    "balanced_pr": False,
    "kde_real_under_samples": False,
    "kde_samples_under_real": False,
    "classifier_score": False,
    "log_likelihood": False,
    "smallest_class_share": False,
    "chain_worst_rms_ratio": True,
}


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    n: int = 1000
    # The sampler and its settings; it must serve the run's family (a score run needs e.g.
    # SamplerSpec.of("annealed_langevin", steps_per_level=..., step_lr=...)).
    sampler: SamplerSpec = SamplerSpec.of("ddim", num_steps=50)
    seed: int = 0
    batch_size: int = 500
    bpd_examples: int = 16
    best_metric: str | None = None  # default: fid for images, balanced_pr for points
    classifier_epochs: int = 5
    # Score only the newest k checkpoints (0: all). A score model's sampler costs hundreds of
    # network calls a sample: on a CPU budget the last checkpoint is where they pay.
    newest: int = 0
    # Bits/dim of this many held-out images by the probability-flow ODE (Hutchinson, Rademacher
    # probes from `seed`; uniform dequantisation), for runs that are a score SDE's model (an
    # SDE run, a DDPM with a linear schedule, an NCSN): `ode_bits_per_dim`. 0: not computed.
    ode_bpd_examples: int = 0

    def __post_init__(self):
        for name in ("newest", "ode_bpd_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.sampler, SamplerSpec):
            raise ValueError(f"sampler must be a SamplerSpec, got {self.sampler!r}")

    def to_dict(self) -> dict:
        record = {**dataclasses.asdict(self), "sampler": self.sampler.to_dict()}
        if not self.ode_bpd_examples:  # off: the settings' fingerprint of before it existed
            del record["ode_bpd_examples"]
        return record

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class EvalReport:
    path: str
    rows: list
    floors: dict
    best_step: int | None
    best_metric: str


def _reference(train, test, n: int, seed: int):
    """n training and n held-out examples, fixed by seed (the floor's two real sets)."""
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


def _point_metrics(real, samples, mixture, bandwidth: float) -> dict:
    """The 2-D metrics of `samples` against the held-out `real` points (both [n, 2], data
    units); `bandwidth`, the kernel densities', is fitted on real data once, so it is the same
    for every checkpoint and for the floor."""
    pr = M.precision_recall(real, samples)
    out = {
        "precision": pr.precision,
        "recall": pr.recall,
        "kde_real_under_samples": M.kde_log_likelihood(real, samples, bandwidth=bandwidth),
        "kde_samples_under_real": M.kde_log_likelihood(samples, real, bandwidth=bandwidth),
        "sliced_wasserstein": M.sliced_wasserstein(real, samples),
        "mmd": M.mmd_rbf(real, samples),
    }
    if mixture is not None:
        out["log_likelihood"] = float(
            np.mean(mixture.log_prob(tf.constant(samples, tf.float64)).numpy())
        )
    return out


def balanced_pr(values: dict, floors: dict) -> float:
    """min(precision / its floor, recall / its floor): 1 is as good as real data. High only when
    the samples are both where the data is (precision) and everywhere it is (recall)."""
    return min(values[name] / floors[name] for name in ("precision", "recall"))


def _draw(restored, spec: EvalSpec, data_rms: float, fraction):
    """The evaluation's samples of one checkpoint (a Drawn); NaN or Inf in them is a
    MetricInputError."""
    try:
        return draw_set(
            restored,
            spec.sampler,
            n=spec.n,
            chunk_rows=spec.batch_size,
            seed=spec.seed,
            data_rms=data_rms,
            fraction=fraction,
        )
    except SamplerMismatch:
        raise
    except ValueError as err:  # NaN or Inf in the samples
        raise M.MetricInputError(str(err)) from None


class _PointScorer:
    """2-D points: the floors (training against held-out points) and a checkpoint's samples'
    metrics against the held-out points, at one kernel bandwidth fitted on the real sets."""

    def __init__(self, train, train_real, test_real):
        self.mixture = None
        if train.manifest.spec.get("source") == "gaussian_mixture":
            self.mixture = stored_mixture(train.manifest.spec["options"])
        self.test_real = test_real.astype(np.float64)
        train_real = train_real.astype(np.float64)
        self.bandwidth = M.kde_bandwidth(train_real, self.test_real)
        floors = _point_metrics(self.test_real, train_real, self.mixture, self.bandwidth)
        self.floors = {"balanced_pr": balanced_pr(floors, floors), **floors}

    def score(self, samples, run, restored) -> dict:
        values = _point_metrics(self.test_real, samples, self.mixture, self.bandwidth)
        return {"balanced_pr": balanced_pr(values, self.floors), **values}  # the ranking first


class _ImageScorer:
    """Images: the feature classifier, the held-out features and the floors (cached), and a
    checkpoint's samples' metrics, with the bits/dim the spec asks for."""

    def __init__(self, train, test, train_real, test_real, spec: EvalSpec, cache_dir):
        self.extractor = load_or_train_classifier(
            train.directory,
            test.directory,
            cache_dir,
            ClassifierSpec(epochs=spec.classifier_epochs),
        )
        self.test_feats, self.floors = _image_reference(
            self.extractor, train, test, train_real, test_real, spec, cache_dir
        )
        self.test_real, self.spec = test_real, spec

    def score(self, samples, run, restored) -> dict:
        spec = self.spec
        feats, probs = self.extractor.features_and_probabilities(samples)
        values = _image_metrics(self.test_feats, feats, probs)
        # Likelihoods in float32, whatever precision the run computes in.
        wanted = spec.bpd_examples or spec.ode_bpd_examples
        exact = run.restore(restored.step, precision="float32") if wanted else restored
        if exact.objective.family == "diffusion" and spec.bpd_examples:
            subset = exact.normalizer.to_model(self.test_real[: spec.bpd_examples], np.float32)
            bound = exact.objective.diffusion.bits_per_dim(exact.model, subset, seed=spec.seed)
            values["bits_per_dim"] = float(np.mean(bound.total.numpy()))
        if spec.ode_bpd_examples:
            values["ode_bits_per_dim"] = _ode_bits_per_dim(
                exact, self.test_real[: spec.ode_bpd_examples], spec.seed
            )
        return values


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """What an evaluation scores, made by `plan_evaluation` before any work: paths and settings
    only (it pickles small, so another process or host that sees the same files can score a
    checkpoint of it). `todo`: the checkpoints not scored yet with these settings."""

    run_dir: str
    test_dir: str
    train_dir: str
    cache_dir: str
    spec: EvalSpec
    report_name: str
    todo: tuple[int, ...]

    @property
    def report_path(self) -> pathlib.Path:
        return Run(self.run_dir).eval_dir / self.report_name

    @property
    def best_metric(self) -> str:
        images = open_dataset(self.train_dir, verify="none").kind == "image"
        return self.spec.best_metric or ("fid" if images else "balanced_pr")


def plan_evaluation(
    run_dir: str | pathlib.Path,
    *,
    test_dir: str | pathlib.Path,
    train_dir: str | pathlib.Path | None = None,
    cache_dir: str | pathlib.Path | None = None,
    spec: EvalSpec = EvalSpec(),
    report_name: str = METRICS_NAME,
) -> EvalPlan:
    """The checkpoints to score (see `evaluate_checkpoints`), with every input checked: no
    checkpoint, train and test sets of different shapes or too few examples for `spec.n`, or a
    bad `report_name` raise here, before anything is computed."""
    if pathlib.Path(report_name).name != report_name or not report_name.endswith(".json"):
        raise ValueError(f"report_name must be a file name ending in .json, got {report_name!r}")
    run = Run(run_dir)
    steps = run.steps()
    if not steps:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint to evaluate")
    steps = steps[-spec.newest :] if spec.newest else steps
    train_dir = pathlib.Path(train_dir or run.config.data.data_dir)
    train, test = open_dataset(train_dir), open_dataset(test_dir)
    if train.example_shape != test.example_shape:
        raise M.MetricInputError(
            f"train {train.example_shape} and test {test.example_shape} shapes differ"
        )
    if len(train) < spec.n or len(test) < spec.n:
        raise M.MetricInputError(
            f"n={spec.n} needs {spec.n} examples in each of train ({len(train)}) and test "
            f"({len(test)})"
        )
    plan = EvalPlan(
        str(run_dir),
        str(test_dir),
        str(train_dir),
        str(cache_dir or run.eval_dir / "cache"),
        spec,
        report_name,
        (),
    )
    rows = _previous_rows(plan)
    # The rest were scored with these settings. A row without the metric that picks the best
    # (scored before that metric existed) is scored again.
    best_metric = plan.best_metric
    todo = tuple(s for s in steps if best_metric not in rows.get(s, {}).get("metrics", {}))
    return dataclasses.replace(plan, todo=todo)


def _previous(plan: EvalPlan) -> dict:
    """The report already written with `plan`'s settings ({} if none)."""
    path = plan.report_path
    previous = json.loads(path.read_text()) if path.is_file() else {}
    return previous if previous.get("settings") == plan.spec.fingerprint() else {}


def _previous_rows(plan: EvalPlan) -> dict[int, dict]:
    return {row["step"]: row for row in _previous(plan).get("rows", [])}


class _Scorer:
    """A plan's references (the real examples, the floors, the data's RMS in the network's
    space) and its scorer of samples: made once per process and plan (`_scorer`)."""

    def __init__(self, plan: EvalPlan):
        spec = plan.spec
        train, test = open_dataset(plan.train_dir), open_dataset(plan.test_dir)
        train_real, test_real = _reference(train, test, spec.n, spec.seed)
        if train.kind == "image":
            self.samples = _ImageScorer(
                train, test, train_real, test_real, spec, pathlib.Path(plan.cache_dir)
            )
        else:
            self.samples = _PointScorer(train, train_real, test_real)
        self.floors = self.samples.floors
        # The data's RMS in the network's space: what a healthy sampling chain ends near.
        model_space = Normalizer.of(train.manifest).to_model(train_real)
        self.data_rms = float(np.sqrt(np.mean(np.square(model_space, dtype=np.float64))))


@functools.lru_cache(maxsize=1)
def _cached_scorer(plan: EvalPlan, train: str, test: str) -> _Scorer:
    return _Scorer(plan)


def _scorer(plan: EvalPlan) -> _Scorer:
    """The plan's scorer, made once per process while both data sets stay the same."""
    fingerprint = lambda d: open_dataset(d, verify="none").manifest.fingerprint  # noqa: E731
    return _cached_scorer(plan, fingerprint(plan.train_dir), fingerprint(plan.test_dir))


def prepare_references(plan: EvalPlan) -> dict:
    """Makes what scoring a checkpoint of `plan` reads (for images the feature classifier,
    trained if not cached, and the held-out features and floors, written to the cache), so the
    checkpoints can then be scored anywhere at once; returns the floors."""
    return _scorer(plan).floors


def score_checkpoint(
    plan: EvalPlan, step: int, progress: Callable[[float], None] | None = None
) -> dict:
    """The report's row of checkpoint `step`: every metric beside its floor (and for a score
    model the sampling chain's health). `progress(f)` follows the sampling, 0 to 1. The
    references are read once per process; the weights are this checkpoint's."""
    scorer = _scorer(plan)
    run = Run(plan.run_dir)
    restored = run.restore(step)
    drawn = _draw(restored, plan.spec, scorer.data_rms, progress)
    values = scorer.samples.score(drawn.samples, run, restored)
    if drawn.health:
        # The worst level's RMS of x over the RMS it should carry: ~1 for a healthy chain.
        values["chain_worst_rms_ratio"] = max(h.ratio for h in drawn.health)
    row = {
        "step": step,
        "metrics": {k: {"value": v, "floor": scorer.floors.get(k)} for k, v in values.items()},
    }
    if drawn.health:
        row["chain"] = [
            {"sigma": h.sigma, "rms": h.rms, "expected_rms": h.expected_rms} for h in drawn.health
        ]
    return row


def write_report(plan: EvalPlan, scored: list[dict]) -> EvalReport:
    """The report of the rows already written with `plan`'s settings and the `scored` ones (by
    `score_checkpoint`), written to eval/`plan.report_name` unless it would not change."""
    previous = _previous(plan)
    rows = {**_previous_rows(plan), **{row["step"]: row for row in scored}}
    if scored:
        floors = _scorer(plan).floors
    else:  # a re-run: no references (classifier, features, floors) computed again
        floors = previous["floors"]
    committed = Run(plan.run_dir).steps()
    return _report(plan.report_path, previous, rows, floors, committed, plan.best_metric, plan.spec)


def evaluate_checkpoints(
    run_dir: str | pathlib.Path,
    *,
    test_dir: str | pathlib.Path,
    train_dir: str | pathlib.Path | None = None,
    cache_dir: str | pathlib.Path | None = None,
    spec: EvalSpec = EvalSpec(),
    progress: Callable[[float], None] | None = None,
    report_name: str = METRICS_NAME,
) -> EvalReport:
    """Scores the run's checkpoints (see EvalSpec) one after another; `progress(f)` follows the
    share of the sampling done, 0 to 1, through each checkpoint's chains. The report goes to
    eval/`report_name` (another name keeps another sampler's scores beside the run's own).
    The same in parts, for checkpoints scored in parallel: `plan_evaluation`,
    `prepare_references`, `score_checkpoint` for each of `plan.todo`, `write_report`."""
    plan = plan_evaluation(
        run_dir,
        test_dir=test_dir,
        train_dir=train_dir,
        cache_dir=cache_dir,
        spec=spec,
        report_name=report_name,
    )
    scored = []
    for done, step in enumerate(plan.todo):
        share = None
        if progress is not None:
            share = lambda f, k=done: progress((k + f) / len(plan.todo))  # noqa: E731
        scored.append(score_checkpoint(plan, step, share))
    return write_report(plan, scored)


def _report(out_path, previous, rows, floors, committed, best_metric, spec) -> EvalReport:
    """The report of `rows`, written to `out_path` unless it is `previous` unchanged."""
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
        "spec": spec.to_dict(),
        "n": spec.n,
        "floors": floors,
        "rows": ordered,
        "best": {"metric": best_metric, "step": best},
    }
    if json.loads(json.dumps(report)) != previous:  # unchanged: the file is left as it was
        atomic_write_bytes(out_path, json.dumps(report, indent=2).encode())
    return EvalReport(str(out_path), ordered, floors, best, best_metric)


def _ode_bits_per_dim(restored, pixels, seed: int) -> float:
    """Mean bits/dim of `pixels` by the probability-flow ODE of the run's score SDE."""
    view = getattr(restored.objective, "sde_view", None)
    if view is None:
        raise ValueError(
            f"ode_bpd_examples: {type(restored.objective).__name__} is no score SDE's model"
        )
    try:
        sde, score_fn = view(restored.model)
    except ValueError as err:
        raise ValueError(f"ode_bpd_examples: {err}") from None
    x, log_abs_scale = restored.normalizer.dequantized(pixels, seed)
    likelihood = ode_log_likelihood(score_fn, sde, x.astype(np.float32), seed=seed)
    dim = int(np.prod(x.shape[1:]))
    return float(np.mean(bits_per_dim(likelihood.log_prob, dim, log_abs_scale)))


def best_previous_checkpoint(root, like: TrainConfig, exclude=()) -> str:
    """ "RUN_DIR@STEP" of the best scored checkpoint of the newest run under `root` (newest by
    its eval/metrics.json) trained on the same dataset as `like.data.data_dir`, with the same
    architecture and objective; "" if there is none. Runs in `exclude` are skipped."""
    fingerprint = open_dataset(like.data.data_dir, verify="none").manifest.fingerprint
    wanted = like.architecture()
    skip = {pathlib.Path(p).resolve() for p in exclude}
    candidates = sorted(
        pathlib.Path(root).glob(f"*/{EVAL_DIR}/{METRICS_NAME}"), key=lambda p: p.stat().st_mtime_ns
    )
    for metrics in reversed(candidates):
        run = Run(metrics.parent.parent)
        if run.path.resolve() in skip or not run.config_path.is_file():
            continue
        step = json.loads(metrics.read_text())["best"]["step"]
        if (
            run.record.get("dataset_fingerprint") == fingerprint
            and run.config.architecture() == wanted
            and step in run.steps()
        ):
            return f"{run.path}@{step}"
    return ""
