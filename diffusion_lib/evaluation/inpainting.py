"""Metrics of a completion set (`diffusion_lib.completions`) against the truth it hid, each
method beside two baselines that need no model:

- `mean fill`: the hidden entries set to the training set's mean example;
- `nearest neighbour`: the hidden entries copied from the training example nearest (in L2) on
  the given entries.

Per mask, for the completions and each baseline:

    accuracy        images with labels: the share the offline classifier assigns the true label
    hidden_mse      mean squared error on the hidden entries (pixels in [0, 1]; points in data
                    units)
    hidden_psnr     images: 10 log10(1 / hidden_mse), in dB
    fid             images: FID of the completed images against as many held-out images, with
                    its real-versus-real floor (n training against n held-out images); left
                    out below 129 completions a mask, too few for the features' covariance
    precision       points: k-NN precision of the completed points against the held-out points
    diversity       the RMS distance between two completions of the same example, on the hidden
                    entries (same units as hidden_mse's root; 0 for the baselines)

    completion_metrics(completions_dir, run_dir) -> {"masks": {mask: {method: {...}}}, ...}
"""

from __future__ import annotations

import pathlib

import numpy as np

from diffusion_lib.data import open_dataset
from diffusion_lib.evaluation.classifier import ClassifierSpec, load_or_train_classifier
from diffusion_lib.evaluation.metrics import fid, precision_recall
from diffusion_lib.run import Run

METHODS = ("completions", "mean fill", "nearest neighbour")
FEATURES = 128  # the feature classifier's
EXTRA = ("original", "mask", "source_index", "mask_name", "completion")


def mean_fill(originals: np.ndarray, masks: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The originals with the hidden entries set to the training set's mean example."""
    mean = train.astype(np.float64).mean(axis=0)
    if originals.dtype == np.uint8:
        mean = np.clip(np.round(mean), 0, 255).astype(np.uint8)
    return np.where(masks, originals, mean.astype(originals.dtype)[None])


def nearest_fill(originals: np.ndarray, masks: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The originals with the hidden entries copied from the training example nearest to each
    on its given entries (L2)."""
    flat_train = train.reshape(len(train), -1).astype(np.float64)
    out = originals.copy()
    for row in range(len(originals)):
        given = masks[row].reshape(-1)
        known = originals[row].reshape(-1)[given].astype(np.float64)
        distance = np.sum(np.square(flat_train[:, given] - known[None]), axis=1)
        nearest = train[int(np.argmin(distance))]
        out[row] = np.where(masks[row], originals[row], nearest)
    return out


def _hidden_mse(filled, originals, masks, scale: float) -> float:
    hidden = ~masks
    difference = (filled.astype(np.float64) - originals.astype(np.float64)) / scale
    return float(np.sum(np.square(difference) * hidden) / max(np.sum(hidden), 1))


def _diversity(completions, masks, groups, scale: float) -> float:
    """RMS distance (per hidden entry) between pairs of completions of the same example."""
    squares, count = 0.0, 0
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        hidden = ~masks[rows[0]]
        values = completions[rows].astype(np.float64) / scale
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                squares += float(np.sum(np.square(values[a] - values[b]) * hidden))
                count += int(np.sum(hidden))
    return float(np.sqrt(squares / count)) if count else 0.0


def completion_metrics(
    completions_dir: str | pathlib.Path, run_dir: str | pathlib.Path, *, classifier_epochs: int = 5
) -> dict:
    """Every metric of the module's docstring, per mask and method (see its docstring)."""
    run = Run(run_dir)
    completions = open_dataset(completions_dir)
    rows = completions.read()
    extra = completions.read_extra(EXTRA)
    train_set, test_set = open_dataset(run.data_dir("train")), open_dataset(run.data_dir("test"))
    train = train_set.read().values
    is_image = completions.kind == "image"
    scale = 255.0 if is_image else 1.0
    extractor = None
    if is_image and train_set.has_labels:
        extractor = load_or_train_classifier(
            train_set.directory,
            test_set.directory,
            run.eval_dir / "cache",
            ClassifierSpec(epochs=classifier_epochs),
        )
    test_values = test_set.read().values
    references: dict[int, dict] = {}  # by n: every mask of a set has the same
    report: dict = {"masks": {}, "n": len(rows.values), "kind": completions.kind}
    for name in dict.fromkeys(extra["mask_name"]):
        chosen = extra["mask_name"] == name
        masks = extra["mask"][chosen].astype(bool)
        originals = extra["original"][chosen]
        labels = None if rows.labels is None else rows.labels[chosen]
        filled = {
            "completions": rows.values[chosen],
            "mean fill": mean_fill(originals, masks, train),
        }
        # The nearest neighbour depends only on the example: found once per example.
        first = extra["completion"][chosen] == 0
        nearest = nearest_fill(originals[first], masks[first], train)
        index = np.cumsum(first) - 1
        filled["nearest neighbour"] = nearest[index]
        groups = extra["source_index"][chosen]
        if len(originals) not in references:
            references[len(originals)] = _reference(
                extractor, train, test_values, len(originals), is_image
            )
        reference = references[len(originals)]
        methods = {}
        for method, values in filled.items():
            entry = {"hidden_mse": _hidden_mse(values, originals, masks, scale)}
            if is_image:
                entry["hidden_psnr"] = float(10 * np.log10(1.0 / max(entry["hidden_mse"], 1e-12)))
            if extractor is not None:
                features, probabilities = extractor.features_and_probabilities(values)
                if labels is not None:
                    entry["accuracy"] = float(np.mean(probabilities.argmax(1) == labels))
                if "fid_floor" in reference:
                    entry["fid"] = fid(reference["test_features"], features)
                    entry["fid_floor"] = reference["fid_floor"]
            if not is_image:
                entry["precision"] = precision_recall(reference["test"], values).precision
                entry["precision_floor"] = reference["precision_floor"]
            entry["diversity"] = (
                _diversity(values, masks, groups, scale) if method == "completions" else 0.0
            )
            methods[method] = entry
        report["masks"][name] = methods
    return report


def _reference(extractor, train, test, n: int, is_image: bool) -> dict:
    """Held-out data for the set-level metrics, and the real-versus-real floors at n."""
    rng = np.random.default_rng(0)
    train_rows = train[np.sort(rng.choice(len(train), min(n, len(train)), replace=False))]
    test_rows = test[np.sort(rng.choice(len(test), min(n, len(test)), replace=False))]
    if is_image:
        # FID needs more rows than features for a full-rank covariance.
        if extractor is None or min(len(train_rows), len(test_rows)) <= FEATURES:
            return {}
        test_features = extractor.features(test_rows)
        return {
            "test_features": test_features,
            "fid_floor": fid(test_features, extractor.features(train_rows)),
        }
    return {
        "test": test_rows,
        "precision_floor": precision_recall(test_rows, train_rows).precision,
    }
