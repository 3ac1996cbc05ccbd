"""Shard writing and reading throughput, and the reader's peak memory against dataset size.

    python benchmarks/data_throughput.py [--images 1000000] [--workdir DIR]

Prints, for 28x28x1 and 32x32x3 images:
  - writing throughput (images/s): source rows -> zstd Parquet shards + manifest;
  - reading throughput (images/s): shards -> shuffled, normalised float32 batches of 256 out of
    tf.data, i.e. what a training loop receives;
and the reader's peak resident memory streaming one shuffled epoch over datasets of 100,000
and of --images (default 1,000,000) 28x28 images, each measured in a fresh process.

The images are real MNIST digits (the embedded 5,000), tiled with shifts so that compression
behaves as on real data; 32x32x3 pads them and puts three different digits in the channels.
The aim: reading >= 50,000 28x28 images/s on 2 cores; peak memory independent of size.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from report import Table, add_markdown_option, measure_machine, publish  # noqa: E402

from diffusion_lib.data import DatasetSpec, open_dataset, prepare_dataset, register_source  # noqa: E402
from diffusion_lib.data.sources.base import Examples  # noqa: E402
from diffusion_lib.data.sources.mnist_embedded import _load_all  # noqa: E402


class TiledMnist:
    """n images built from the 5,000 embedded digits: digit i % 5000, rolled by (i // 5000)."""

    kind = "image"
    has_labels = True

    def __init__(self, split: str, n: int, size: int, channels: int):
        self.n, self.size, self.channels = n, size, channels
        self.example_shape = (size, size, channels)

    def __len__(self):
        return self.n

    def read(self, start, stop):
        digits, labels = _load_all()
        rows = np.arange(start, stop)
        pad = (self.size - 28) // 2
        out = np.zeros((len(rows), self.size, self.size, self.channels), np.uint8)
        shift = (rows // 5000) % 5 - 2
        for c in range(self.channels):
            imgs = digits[(rows + 1667 * c) % 5000, :, :, 0]
            for s in np.unique(shift):
                mask = shift == s
                imgs[mask] = np.roll(imgs[mask], s, axis=2)
            out[:, pad : pad + 28, pad : pad + 28, c] = imgs
        return Examples(out, labels[rows % 5000].astype(np.int64))


register_source("bench_tiled_mnist")(
    lambda split="train", *, n, size=28, channels=1: TiledMnist(split, n, size, channels)
)


def spec(n: int, size: int, channels: int) -> DatasetSpec:
    return DatasetSpec.create(
        "bench_tiled_mnist", n=n, size=size, channels=channels, rows_per_shard=20_000
    )


def write_throughput(directory: pathlib.Path, n: int, size: int, channels: int) -> float:
    shutil.rmtree(directory, ignore_errors=True)  # a complete dataset would make this a no-op
    start = time.perf_counter()
    prepare_dataset(spec(n, size, channels), directory)
    return n / (time.perf_counter() - start)


def source_throughput(n: int, size: int, channels: int) -> float:
    """Rows/s of the synthetic source alone, so the writer's own cost can be told apart."""
    source = TiledMnist("train", n, size, channels)
    start = time.perf_counter()
    for lo in range(0, n, 20_000):
        source.read(lo, min(lo + 20_000, n))
    return n / (time.perf_counter() - start)


def baseline_child() -> None:
    """Peak RSS of TensorFlow plus a trivial tf.data pipeline: the floor under the reader."""
    import tensorflow as tf

    for _ in tf.data.Dataset.range(1000).batch(10).prefetch(2):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "now_mib": _rss_mib()}))


def read_throughput(directory: pathlib.Path, batches: int, batch_size: int = 256) -> float:
    dataset = open_dataset(directory).tf_dataset(batch_size, seed=0)
    iterator = iter(dataset)
    for _ in range(20):  # warm-up: tracing, first windows
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    batch.x.numpy()
    return batches * batch_size / (time.perf_counter() - start)


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_memory_child(directory: str) -> None:
    """Streams one shuffled epoch; prints, as JSON, peak RSS, the RSS after 50 batches (warm)
    and the largest RSS sampled every 50 batches after that, in MiB."""
    dataset = open_dataset(directory, verify="none")
    count, warm, highest = 0, None, 0.0
    for k, batch in enumerate(dataset.tf_dataset(256, seed=0, num_epochs=1)):
        count += int(batch.x.shape[0])
        if k == 50:
            warm = _rss_mib()
        if k >= 50 and k % 50 == 0:
            highest = max(highest, _rss_mib())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"peak_mib": peak, "warm_mib": warm, "streaming_max_mib": highest, "examples": count}
        )
    )


def peak_memory(directory: pathlib.Path | None) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--peak-memory-child",
            str(directory) if directory else "baseline",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1_000_000, help="size of the large dataset")
    parser.add_argument("--workdir", type=pathlib.Path, default=None)
    parser.add_argument("--peak-memory-child", default=None, help=argparse.SUPPRESS)
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.peak_memory_child == "baseline":
        baseline_child()
        return
    if args.peak_memory_child:
        peak_memory_child(args.peak_memory_child)
        return

    machine = measure_machine()
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="diffusion_bench_"))
    print(f"workdir: {workdir}")
    speed = Table(
        "data_throughput:speed",
        ["images", "count", "MiB on disk", "write images/s (end to end)", "shard writer alone /s"]
        + ["source alone /s", "read images/s"],
        n="1 run per row; reading times 400 batches after 20 warm-up batches",
        caption="writing: source rows into zstd Parquet shards and a manifest; reading: "
        "shuffled, normalised float32 batches of 256 out of tf.data, what training receives",
    )
    for size, channels, n in ((28, 1, 200_000), (32, 3, 100_000)):
        directory = workdir / f"tiled_{size}x{size}x{channels}_{n}"
        generated = source_throughput(n, size, channels)
        write = write_throughput(directory, n, size, channels)
        writer_only = 1 / (1 / write - 1 / generated)
        read = read_throughput(directory, batches=400)
        mib = sum(p.stat().st_size for p in directory.glob("*.parquet")) / 2**20
        speed.add(
            f"{size}x{size}x{channels}",
            f"{n:,}",
            f"{mib:.1f}",
            f"{write:,.0f}",
            f"{writer_only:,.0f}",
            f"{generated:,.0f}",
            f"{read:,.0f}",
        )

    memory = Table(
        "data_throughput:memory",
        ["reader over one epoch of", "peak RSS MiB", "RSS after 50 batches", "highest RSS after"]
        + ["growth MiB"],
        n="1 fresh process per row",
        caption="28x28 images, batches of 256; memory holds one shuffle window and a batch, "
        "whatever the dataset's size",
    )
    floor = peak_memory(None)
    memory.add(
        "nothing (TensorFlow and a trivial tf.data pipeline)",
        f"{floor['peak_mib']:.0f}",
        "-",
        f"{floor['now_mib']:.0f}",
        "-",
    )
    for n in (100_000, args.images):
        directory = workdir / f"tiled_28x28x1_{n}"
        write_throughput(directory, n, 28, 1)
        r = peak_memory(directory)
        memory.add(
            f"{n:,} images ({n * 784 / 2**20:,.0f} MiB of pixels)",
            f"{r['peak_mib']:.0f}",
            f"{r['warm_mib']:.0f}",
            f"{r['streaming_max_mib']:.0f}",
            f"{r['streaming_max_mib'] - r['warm_mib']:+.0f}",
        )
    publish(__file__, args, [speed, memory], machine)


if __name__ == "__main__":
    main()
