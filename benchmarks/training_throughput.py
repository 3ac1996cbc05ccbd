"""Training and sampling throughput of the U-Net presets at 28x28, against the machine's matmul.

    python benchmarks/training_throughput.py [--presets unet-tiny unet-small] [--steps 20]

Prints, in one run on one machine:
  - the machine: cores, float32 and bfloat16 matrix-multiply GFLOP/s (2048x2048, best of 10);
  - per preset, fp32 with and without XLA, and mixed bfloat16: training images/s through the real engine (data
    pipeline, distributed step, EMA), achieved GFLOP/s and its fraction of the matmul figure;
  - forward-only model evaluations (images) per second at batch 256, as a sampler sees them.

FLOPs are counted, not guessed: TensorFlow's profiler counts the floating-point operations of
the forward graph at the benchmark's batch size; a training step is counted as 3x the forward
(backward = 2x forward, the usual estimate for conv nets), which leaves out the optimizer and
EMA updates (a few FLOPs per parameter).
The aim: the training step at >= 70% of the measured matmul throughput on CPU. --markdown writes
the table into the benchmarks page (benchmarks/report.py).
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from diffusion_lib.data import DatasetSpec, prepare_dataset  # noqa: E402
from diffusion_lib.networks import build_network, preset  # noqa: E402
from diffusion_lib.training import Trainer, config_preset  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from report import Table, add_markdown_option, matmul_gflops, measure_machine, publish  # noqa: E402

VARIANTS = {
    "fp32": ("float32", False),
    "fp32-xla": ("float32", True),
    "bf16": ("mixed_bfloat16", False),
}


def forward_flops(model, batch: int, shape) -> float:
    """Profiler-counted FLOPs of one forward pass at `batch`."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(lambda x, t: model(x, t))
    concrete = function.get_concrete_function(
        tf.TensorSpec([batch, *shape]), tf.TensorSpec([batch], tf.int32)
    )
    frozen = convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options)
    return float(profile.total_float_ops)


def prepared_mnist(prefix: str) -> tuple[pathlib.Path, str]:
    """A new temporary directory and, inside it, the embedded MNIST training digits prepared
    as a dataset: (the directory, the dataset's directory)."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    data_dir = str(workdir / "mnist")
    prepare_dataset(DatasetSpec.create("mnist_embedded", split="train"), data_dir)
    return workdir, data_dir


def engine_steps(
    data_dir: str,
    network: str,
    batch: int,
    workdir: pathlib.Path,
    *,
    xla: bool = False,
    precision: str = "float32",
):
    """The real engine's mnist-ddpm training step at `batch`, traced and warmed up: a function
    that runs the next step and returns its loss (a tensor, so steps are not synchronised)."""
    config = config_preset(
        "mnist-ddpm",
        data_dir=data_dir,
        network=network,
        batch_size=batch,
        num_steps=10**9,
        log_every=10**9,
        checkpoint_every=10**9,
        jit_compile=xla,
        precision=precision,
    )
    trainer = Trainer(config, workdir / f"run-{network}-{precision}-{'xla' if xla else 'plain'}")
    trainer.run(max_steps=3)  # trace and warm up; saves one checkpoint at the end
    iterator = iter(trainer._dataset(int(trainer.step.numpy())))
    numbers = itertools.count(int(trainer.step.numpy()))
    next(iterator)

    def step() -> tf.Tensor:
        examples = next(iterator)
        loss, _, _ = trainer._train_step(
            examples.x, examples.label, tf.constant(next(numbers), tf.int64)
        )
        return loss

    return step


def train_rate(
    data_dir: str,
    network: str,
    batch: int,
    steps: int,
    xla: bool,
    workdir: pathlib.Path,
    precision: str = "float32",
) -> float:
    step = engine_steps(data_dir, network, batch, workdir, xla=xla, precision=precision)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)
    return steps * batch / (time.perf_counter() - start)


def forward_rate(
    network: str, batch: int, xla: bool, repeats: int = 10, precision: str = "float32"
) -> float:
    model = build_network(preset(network, precision=precision))
    function = tf.function(lambda x, t: model(x, t), jit_compile=xla)
    x, t = tf.random.normal([batch, 28, 28, 1]), tf.fill([batch], 500)
    function(x, t).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        out = function(x, t)
    out.numpy()
    return repeats * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["unet-tiny", "unet-small"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="which precision/XLA combinations to run (unet-standard takes minutes per variant)",
    )
    add_markdown_option(parser)
    args = parser.parse_args()

    machine = measure_machine()
    workdir, data_dir = prepared_mnist("diffusion_train_bench_")
    table = Table(
        "training_throughput",
        ["network", "parameters", "MFLOP a training image", "precision", "XLA"]
        + ["train images/s", "train GFLOP/s", "share of matmul", "forward images/s"],
        n=f"{args.steps} timed steps of batch {args.batch} per row, after 3 warm-up steps",
        caption="28x28x1, the real training step (data pipeline, distributed step, EMA); "
        "the share is of the matmul of the row's precision, measured right before and after it",
    )
    for network in args.presets:
        model = build_network(preset(network))
        per_image = forward_flops(model, args.batch, (28, 28, 1)) / args.batch
        for variant in args.variants:
            precision, xla = VARIANTS[variant]
            # The matmul figure drifts by +-8% between minutes on a shared machine: measure it
            # right before and right after, and compare against the higher (the harsher test).
            dtype = "bfloat16" if "bfloat16" in precision else "float32"
            before = matmul_gflops(dtype)
            rate = train_rate(data_dir, network, args.batch, args.steps, xla, workdir, precision)
            reference = max(before, matmul_gflops(dtype))
            achieved = rate * 3 * per_image / 1e9
            forward = forward_rate(network, 256, xla, precision=precision)
            table.add(
                network,
                f"{model.count_params():,}",
                f"{3 * per_image / 1e6:.1f}",
                precision,
                "yes" if xla else "no",
                f"{rate:,.0f}",
                f"{achieved:.1f}",
                f"{achieved / reference:.0%} of {reference:.0f}",
                f"{forward:,.0f}",
            )
    publish(__file__, args, [table], machine)


if __name__ == "__main__":
    main()
