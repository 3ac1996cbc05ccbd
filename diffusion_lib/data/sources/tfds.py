"""Any image dataset of TensorFlow Datasets by name (mnist, fashion_mnist, cifar10, ...).

Downloads only when `download=True`; by default the dataset must already be prepared in
`data_dir` (a cluster's shared cache, or a test's temporary folder), so nothing reaches the
network unasked. Ranges are read with TFDS split slicing ("train[100:200]"), in file order.
"""

from __future__ import annotations

import numpy as np

from diffusion_lib.data.errors import DataError
from diffusion_lib.data.sources.base import (
    Examples,
    as_image_array,
    as_labels_array,
    check_range,
    register_source,
)


class TfdsSource:
    kind = "image"

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None,
        download: bool,
        image_key: str,
        label_key: str,
    ):
        import tensorflow_datasets as tfds  # heavy import, only when this source is used

        try:
            self._builder = tfds.builder(name, data_dir=data_dir)
        except Exception as err:  # tfds raises DatasetNotFoundError and friends
            raise DataError(f"tfds dataset {name!r}: {err}") from None
        if download:
            self._builder.download_and_prepare()
        elif not self._builder.is_prepared():
            raise DataError(
                f"tfds dataset {name!r} is not prepared in data_dir={data_dir!r}; "
                "prepare it there or pass download=True"
            )
        info = self._builder.info
        if split not in info.splits:
            raise DataError(
                f"tfds dataset {name!r} has splits {sorted(info.splits)}, not {split!r}"
            )
        if image_key not in info.features:
            raise DataError(f"tfds dataset {name!r} has no feature {image_key!r}")
        self._name, self._split, self._image_key = name, split, image_key
        self._label_key = label_key if label_key in info.features else None
        self.has_labels = self._label_key is not None
        shape = tuple(info.features[image_key].shape)
        if None in shape:
            raise DataError(f"tfds dataset {name!r}: images of varying size {shape} need a resize")
        self.example_shape = shape
        self._length = int(info.splits[split].num_examples)

    def __len__(self) -> int:
        return self._length

    def read(self, start: int, stop: int) -> Examples:
        import tensorflow_datasets as tfds

        check_range(start, stop, len(self))
        dataset = self._builder.as_dataset(
            split=f"{self._split}[{start}:{stop}]", shuffle_files=False
        )
        images, labels = [], []
        for example in tfds.as_numpy(dataset):
            images.append(example[self._image_key])
            if self._label_key:
                labels.append(example[self._label_key])
        what = f"tfds {self._name}/{self._split}[{start}:{stop}]"
        if len(images) != stop - start:
            raise DataError(f"{what}: read {len(images)} examples, expected {stop - start}")
        values = as_image_array(np.stack(images), what)
        out_labels = (
            as_labels_array(np.asarray(labels), len(images), what) if self._label_key else None
        )
        return Examples(values, out_labels)


@register_source("tfds")
def tfds_source(
    split: str = "train",
    *,
    name: str,
    data_dir: str | None = None,
    download: bool = False,
    image_key: str = "image",
    label_key: str = "label",
):
    return TfdsSource(name, split, data_dir, download, image_key, label_key)
