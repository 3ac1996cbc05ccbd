"""Projected multi-GPU step time and scaling efficiency of the training step, per preset.

    python benchmarks/scaling_model.py [--presets unet-cpu unet-small unet-standard]
        [--peak-tflops 989] [--utilization 0.4] [--nvlink-gbs 370] [--inter-gbs 12.5 50]

What is measured here, on the real step (not assumed):
  - forward FLOPs per example: TensorFlow's profiler on the network's forward graph (the
    training step counted as 3x the forward: the backward pass is the other 2x);
  - gradient bytes: the trainable parameters x 4 (fp32 gradients; x 2 with --bf16-allreduce);
  - when the backward pass completes each gradient: the forward graph's convolutions and
    matrix products in execution order, each variable at its first use; the backward pass
    runs them in reverse at 2x their forward FLOPs, so a variable's gradient is complete once
    every product from its first use onwards has been differentiated;
  - how the engine packs its all-reduce: its step traced on 2 logical CPU devices under
    TensorFlow's collective all-reduce (MultiWorkerMirroredStrategy's), counting the elements
    of each pack (the gradient packs and the loss; they must sum to parameters + 1).
What is assumed (flags, printed with the table): the GPU's dense bf16 throughput and the share of
it a U-Net step reaches, the all-reduce bus bandwidth within a host (NVLink) and between hosts
(per GPU, one NIC each), a ring all-reduce moving 2 (N - 1) / N of a pack's bytes plus a fixed
latency per all-reduce, and packs all-reduced one after another, each once its gradients are
complete.

Efficiency = compute time / step time at a fixed per-GPU batch (weak scaling). The table gives
the smallest per-GPU batch at which it reaches 90%: with one all-reduce after the backward
pass (`allreduce_buckets=1`), with the engine's packs (`allreduce_buckets`, default 8) started
as the backward pass completes them, and the bound of an all-reduce hidden entirely.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Two logical CPU devices for the traced step (before TensorFlow initialises its devices).
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from report import Table, add_markdown_option, measure_machine, publish  # noqa: E402
from tensorflow.python.distribute import cross_device_utils  # noqa: E402
from training_throughput import forward_flops  # noqa: E402

from diffusion_lib.networks import build_network, preset  # noqa: E402
from diffusion_lib.training import TrainConfig  # noqa: E402
from diffusion_lib.training.engine import allreduce_options  # noqa: E402
from diffusion_lib.training.strategy import counting_collective  # noqa: E402

SHAPES = {  # the data each preset is sized for
    "unet-cpu": (28, 28, 1),
    "unet-small": (28, 28, 1),
    "unet-standard": (32, 32, 3),
}
GPU_COUNTS = (1, 8, 16, 32, 64)
PER_GPU_BATCHES = (16, 32, 64, 128)


def traced_packs(
    network: str, shape: tuple[int, ...], workdir: pathlib.Path, buckets: int, dtype: str
) -> list[int]:
    """Elements of each pack the engine's step all-reduces, traced on 2 logical devices under
    TensorFlow's collective all-reduce (one step run)."""
    from diffusion_lib.training import config_preset, train

    data = workdir / f"data-{'x'.join(map(str, shape))}"
    if not (data / "manifest.json").exists():
        # 64 random images of the preset's shape: the step's reductions do not depend on them.
        import numpy as np

        from diffusion_lib.data import DatasetSpec, prepare_dataset

        images = np.random.default_rng(0).integers(0, 256, (64, *shape), dtype=np.uint8)
        np.savez(workdir / "images.npz", images=images)
        spec = DatasetSpec.create("npz", path=str(workdir / "images.npz"), labels_key=None)
        prepare_dataset(spec, data)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    collective, packs = counting_collective(devices)
    config = config_preset(
        "mnist-ddpm",
        data_dir=str(data),
        network=network,
        batch_size=4,
        num_steps=1,
        log_every=1,
        checkpoint_every=1,
        allreduce_buckets=buckets,
        allreduce_dtype=dtype,
    )
    train(
        config,
        workdir / f"run-{network}-{buckets}-{dtype}",
        strategy=tf.distribute.MirroredStrategy(devices, cross_device_ops=collective),
    )
    return packs


_PRODUCTS = ("Conv2D", "MatMul", "BatchMatMulV2")


def _op_flops(op) -> float:
    """Forward FLOPs of a convolution or matrix product, from its graph's static shapes."""
    out = op.outputs[0].shape
    if op.type == "Conv2D":
        kh, kw, cin, _ = op.inputs[1].shape
        return 2.0 * out.num_elements() * kh * kw * cin
    transpose = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr("adj_x")
    inner = op.inputs[0].shape[-2 if transpose else -1]
    return 2.0 * out.num_elements() * inner


def gradient_ready(model, shape: tuple[int, ...]) -> list[float]:
    """For each trainable variable (the model's order): the share of the backward pass done
    when its gradient is complete, from the forward graph's products (module docstring)."""
    function = tf.function(lambda x, t: model(x, t))
    graph = function.get_concrete_function(
        tf.TensorSpec([8, *shape]), tf.TensorSpec([8], tf.int32)
    ).graph
    index = {id(v._value.handle): i for i, v in enumerate(model.trainable_variables)}
    handles = {
        inner.name: index[id(outer)] for outer, inner in graph.captures if id(outer) in index
    }
    first_use: dict[int, int] = {}
    flops: list[float] = []
    for position, op in enumerate(graph.get_operations()):
        flops.append(_op_flops(op) if op.type in _PRODUCTS else 0.0)
        for tensor in op.inputs:
            variable = handles.get(tensor.name)
            if variable is not None:
                first_use.setdefault(variable, position)
    if len(first_use) != len(model.trainable_variables):
        raise RuntimeError("a trainable variable is not read by the forward graph")
    total = sum(flops)
    after = [0.0] * (len(flops) + 1)  # FLOPs from position i to the end
    for i in range(len(flops) - 1, -1, -1):
        after[i] = after[i + 1] + flops[i]
    return [after[first_use[i]] / total for i in range(len(model.trainable_variables))]


def engine_packs(model, buckets: int, dtype: str) -> list[list[int]]:
    """The variables (indices) of each pack, as TensorFlow's collective all-reduce packs the
    engine's gradient list (sent as `dtype`) under the engine's options: its own grouping of the
    reversed list."""
    variables = model.trainable_variables
    options = allreduce_options(variables, buckets, dtype)
    specs = [tf.TensorSpec(v.shape, dtype, name=str(i)) for i, v in enumerate(variables)]
    packs = cross_device_utils.group_by_size(list(reversed(specs)), options.bytes_per_pack)
    return [[int(spec.name) for spec in pack] for pack in packs]


def step_seconds(compute: float, ready, sizes, packs, seconds_per_byte: float, latency: float):
    """One step's time: the forward pass (a third of `compute`), the backward pass (the rest),
    and each pack's all-reduce on one link, in pack order, from when its gradients are done."""
    forward, backward = compute / 3, 2 * compute / 3
    link = 0.0
    for pack in packs:
        start = max(link, forward + backward * max(ready[i] for i in pack))
        link = start + latency + seconds_per_byte * sum(sizes[i] for i in pack)
    return max(compute, link)


def smallest_batch(per_example: float, flops_rate: float, step, target: float = 0.9) -> int:
    """The smallest per-GPU batch whose efficiency (compute / step(compute)) reaches `target`."""
    for batch in range(1, 1 << 16):
        compute = batch * per_example / flops_rate
        if compute / step(compute) >= target:
            return batch
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=list(SHAPES))
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    parser.add_argument("--utilization", type=float, default=0.4, help="share of peak reached")
    parser.add_argument("--nvlink-gbs", type=float, default=370.0, help="all-reduce bus GB/s")
    parser.add_argument(
        "--inter-gbs",
        type=float,
        nargs="+",
        default=[12.5, 50.0],
        help="between hosts, GB/s per GPU (12.5 = 100 Gb/s, 50 = 400 Gb/s)",
    )
    parser.add_argument("--gpus-per-host", type=int, default=8)
    parser.add_argument(
        "--buckets",
        type=int,
        default=TrainConfig().execution.allreduce_buckets,
        help="the engine's allreduce_buckets (its default)",
    )
    parser.add_argument("--latency-us", type=float, default=30.0, help="per all-reduce")
    parser.add_argument("--no-trace", action="store_true", help="skip the traced-step check")
    add_markdown_option(parser)
    args = parser.parse_args()
    machine = measure_machine()

    import tempfile

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="scaling_model_"))
    flops_rate = args.peak_tflops * 1e12 * args.utilization
    # (label, allreduce_buckets, allreduce_dtype): the engine's settings compared.
    schemes = [
        ("one all-reduce after the backward pass", 1, "float32"),
        (
            f"packs (allreduce_buckets={args.buckets}) as the backward pass completes them",
            args.buckets,
            "float32",
        ),
        ("the same, sent as bfloat16 (allreduce_dtype)", args.buckets, "bfloat16"),
    ]
    print(
        f"assumed: {args.peak_tflops:.0f} TFLOP/s peak x {args.utilization:.0%} = "
        f"{flops_rate / 1e12:.0f} TFLOP/s per GPU; all-reduce bus bandwidth {args.nvlink_gbs:.0f} "
        f"GB/s within a host of {args.gpus_per_host}, {', '.join(f'{b:g}' for b in args.inter_gbs)} "
        "GB/s per GPU between hosts; a ring all-reduce moving 2(N-1)/N of a pack's bytes plus "
        f"{args.latency_us:g} us per all-reduce\n"
    )
    summary = Table(
        "scaling_model",
        ["network", "parameters", "GFLOP a training example", "gradient packs (traced)"]
        + ["GPUs", "link"]
        + [f"90% from a per-GPU batch of: {label}" for label, _, _ in schemes]
        + ["all of it hidden (float32)"],
        n="a model: FLOPs counted by the profiler, packs counted on a traced step",
        caption=f"assumed: {args.peak_tflops:.0f} TFLOP/s x {args.utilization:.0%} per GPU, "
        f"{args.nvlink_gbs:.0f} GB/s all-reduce bus within a host of {args.gpus_per_host}, the "
        "link's GB/s per GPU between hosts, a ring all-reduce and "
        f"{args.latency_us:g} us per all-reduce",
        stream=False,
    )
    latency = args.latency_us * 1e-6
    for network in args.presets:
        shape = SHAPES[network]
        model = build_network(preset(network, data_shape=shape))
        params = model.count_params()
        per_example = 3 * forward_flops(model, 8, shape) / 8
        ready = gradient_ready(model, shape)
        elements = [math.prod(v.shape) for v in model.trainable_variables]
        planned, traced = [], []
        for _, buckets, dtype in schemes:
            packs = engine_packs(model, buckets, dtype)
            width = tf.as_dtype(dtype).size
            planned.append((packs, [n * width for n in elements]))
            if args.no_trace or buckets == 1:
                continue
            counted = traced_packs(network, shape, workdir, buckets, dtype)
            wanted = [sum(elements[i] for i in pack) for pack in packs]
            # The gradient packs, then the loss's own all-reduce of one element.
            if counted != [*wanted, 1]:
                raise RuntimeError(f"{network}: traced packs {counted} != planned {wanted} + loss")
            traced.append(f"{len(packs)} {dtype}")
        packs = planned[1][0]
        print(
            f"## {network} at {'x'.join(map(str, shape))}: {params:,} parameters, "
            f"{per_example / 1e9:.2f} GFLOP per training example, {4 * params / 1e6:.1f} MB of "
            f"float32 gradients in {len(packs)} packs of "
            + ", ".join(f"{sum(elements[i] for i in pack):,}" for pack in packs)
            + f" elements (traced: {', '.join(traced) or 'not traced'}); backward pass done when "
            "each pack is complete: "
            + ", ".join(f"{max(ready[i] for i in pack):.0%}" for pack in packs)
        )
        print(
            "| GPUs | links | per-GPU batch | compute ms | step ms, one all-reduce | efficiency: "
            + " | ".join(label for label, _, _ in schemes)
            + " |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
        )
        links = [("NVLink", args.nvlink_gbs)]
        links += [(f"{b:g} GB/s", b) for b in args.inter_gbs]
        for gpus in GPU_COUNTS:
            for link, bandwidth in links:
                if (gpus <= args.gpus_per_host) != (link == "NVLink"):
                    continue
                per_byte = 0.0 if gpus == 1 else 2 * (gpus - 1) / gpus / (bandwidth * 1e9)
                wait = 0.0 if gpus == 1 else latency
                steps = [
                    functools.partial(
                        step_seconds,
                        ready=ready,
                        sizes=sizes,
                        packs=scheme_packs,
                        seconds_per_byte=per_byte,
                        latency=wait,
                    )
                    for scheme_packs, sizes in planned
                ]
                for batch in PER_GPU_BATCHES:
                    compute = batch * per_example / flops_rate
                    times = [step(compute) for step in steps]
                    print(
                        f"| {gpus} | {link if gpus > 1 else '-'} | {batch} | {compute * 1e3:.2f} "
                        f"| {times[0] * 1e3:.2f} | "
                        + " | ".join(f"{compute / t:.0%}" for t in times)
                        + " |"
                    )
                if gpus == 1:
                    continue
                found = [smallest_batch(per_example, flops_rate, step) for step in steps]
                comm = wait + per_byte * 4 * params
                hidden = math.ceil(0.9 * comm * flops_rate / per_example)
                print(
                    f"- {gpus} GPUs over {link}: >= 90% efficiency from a per-GPU batch of "
                    + ", ".join(
                        f"{b} ({label})" for b, (label, _, _) in zip(found, schemes, strict=True)
                    )
                    + f"; all of it hidden {hidden}"
                )
                summary.add(
                    network,
                    f"{params:,}",
                    f"{per_example / 1e9:.2f}",
                    ", ".join(traced) or "not traced",
                    gpus,
                    link,
                    *found,
                    hidden,
                )
        print()
    publish(__file__, args, [summary], machine)


if __name__ == "__main__":
    main()
