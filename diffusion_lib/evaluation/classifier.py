"""The feature extractor for image metrics: a small classifier trained on the dataset itself.

Inception weights cannot be downloaded on an air-gapped cluster, and 1-channel images do not
fit Inception anyway. Instead a LeNet-like CNN (two conv/pool stages, a 128-unit penultimate
layer, a softmax) is trained on the prepared training shards; its penultimate activations are
the features for FID, KID and precision/recall, its softmax feeds the classifier score.

It is cached in `cache_dir` under a name that carries the classifier version and the training
manifest's fingerprint, with a JSON record of its test accuracy: it is reused until either
changes, and a half-written file is never taken for a cached one (written under a temporary
name, then renamed).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import keras
import numpy as np
import tensorflow as tf

from diffusion_lib._atomic import atomic_path, atomic_write_bytes
from diffusion_lib.data import open_dataset
from diffusion_lib.normalizer import IMAGES

CLASSIFIER_VERSION = 1
FEATURE_DIM = 128


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0


@dataclasses.dataclass
class FeatureExtractor:
    """features(images) -> [n, 128] float64; probabilities(images) -> [n, classes] float64.
    images: uint8 [n, H, W, C] or float in [-1, 1]."""

    model: keras.Model
    num_classes: int
    test_accuracy: float
    train_fingerprint: str
    path: pathlib.Path

    def _inputs(self, images) -> tf.Tensor:
        images = np.asarray(images)
        if images.dtype == np.uint8:
            return IMAGES.to_model_tf()(images)
        return tf.constant(images, tf.float32)

    def _run(self, images, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        feats, probs = [], []
        expected = tuple(self.model.input_shape[1:])
        if tuple(np.shape(images)[1:]) != expected:
            raise ValueError(
                f"images have shape {np.shape(images)[1:]}, the classifier expects {expected}"
            )
        for start in range(0, len(images), batch):
            f, p = self._both(self._inputs(images[start : start + batch]))
            feats.append(f.numpy())
            probs.append(p.numpy())
        return np.concatenate(feats).astype(np.float64), np.concatenate(probs).astype(np.float64)

    def __post_init__(self):
        penultimate = self.model.get_layer("features").output
        self._both = keras.Model(self.model.inputs, [penultimate, self.model.output])

    def features(self, images) -> np.ndarray:
        return self._run(images)[0]

    def probabilities(self, images) -> np.ndarray:
        return self._run(images)[1]

    def features_and_probabilities(self, images) -> tuple[np.ndarray, np.ndarray]:
        return self._run(images)


def build_classifier(shape: tuple[int, ...], num_classes: int, seed: int) -> keras.Model:
    init = lambda k: keras.initializers.GlorotUniform(seed=seed * 100 + k)  # noqa: E731
    inputs = keras.Input(shape)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", kernel_initializer=init(1))(
        inputs
    )
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu", kernel_initializer=init(2))(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(
        FEATURE_DIM, activation="relu", name="features", kernel_initializer=init(3)
    )(h)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=init(4))(h)
    return keras.Model(inputs, outputs, name="feature_classifier")


def _normalised(images: np.ndarray) -> np.ndarray:
    return IMAGES.to_model(images, np.float32)


def load_or_train_classifier(
    train_dir: str | pathlib.Path,
    test_dir: str | pathlib.Path,
    cache_dir: str | pathlib.Path,
    spec: ClassifierSpec = ClassifierSpec(),
) -> FeatureExtractor:
    """The cached classifier for `train_dir`'s manifest, training (and caching) it if needed."""
    train_set, test_set = open_dataset(train_dir), open_dataset(test_dir)
    if train_set.kind != "image" or not train_set.has_labels:
        raise ValueError(f"{train_dir}: the feature classifier needs a labelled image dataset")
    fingerprint = train_set.manifest.fingerprint
    cache_dir = pathlib.Path(cache_dir)
    stem = f"classifier-v{CLASSIFIER_VERSION}-{fingerprint[:16]}-e{spec.epochs}-s{spec.seed}"
    model_path, record_path = cache_dir / f"{stem}.keras", cache_dir / f"{stem}.json"
    if model_path.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        model = keras.models.load_model(model_path)
        return FeatureExtractor(
            model, record["num_classes"], record["test_accuracy"], fingerprint, model_path
        )

    train_examples = train_set.read()
    labels = train_examples.labels
    num_classes = int(labels.max()) + 1
    model = build_classifier(train_set.example_shape, num_classes, spec.seed)
    model.compile(
        optimizer=keras.optimizers.Adam(spec.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    order = np.random.default_rng(spec.seed).permutation(len(labels))
    x, y = _normalised(train_examples.values)[order], labels[order]
    model.fit(x, y, batch_size=spec.batch_size, epochs=spec.epochs, verbose=0, shuffle=False)
    test_examples = test_set.read()
    _, accuracy = model.evaluate(_normalised(test_examples.values), test_examples.labels, verbose=0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_path) as tmp:
        model.save(tmp.with_suffix(".keras"))
        tmp.with_suffix(".keras").rename(tmp)
    record = {
        "version": CLASSIFIER_VERSION,
        "train_fingerprint": fingerprint,
        "num_classes": num_classes,
        "test_accuracy": float(accuracy),
        "test_fingerprint": test_set.manifest.fingerprint,
        "spec": dataclasses.asdict(spec),
        "train_examples": len(labels),
        "test_examples": len(test_examples.labels),
    }
    atomic_write_bytes(record_path, json.dumps(record, indent=2).encode())
    return FeatureExtractor(model, num_classes, float(accuracy), fingerprint, model_path)
