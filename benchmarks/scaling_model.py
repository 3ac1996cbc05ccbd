"""Projected multi-GPU step time and scaling efficiency of the training step, per preset.

    python benchmarks/scaling_model.py [--presets unet-cpu unet-small unet-standard]
        [--peak-tflops 989] [--utilization 0.4] [--nvlink-gbs 370] [--inter-gbs 12.5 50]

What is measured here, on the real step (not assumed):
  - forward FLOPs per example: TensorFlow's profiler on the network's forward graph (the
    training step counted as 3x the forward, the usual estimate for conv nets);
  - gradient bytes: the trainable parameters x 4 (fp32 gradients; x 2 with --bf16-allreduce);
  - what the step reduces: the engine's step traced on 2 logical CPU devices under a counting
    cross-device reduction (elements reduced per step; it must equal parameters + 1, one
    gradient all-reduce and the loss).
What is assumed (flags, printed with the table): the GPU's dense bf16 throughput and the share of
it a U-Net step reaches, the all-reduce bus bandwidth within a host (NVLink) and between hosts
(per GPU, one NIC each), and a ring all-reduce moving 2 (N - 1) / N of the gradient bytes. The
engine reduces after the whole backward pass (no overlap), so `no overlap` is its figure;
`overlap` is the bound a bucketed, overlapped all-reduce could reach.

Efficiency = compute time / step time at a fixed per-GPU batch (weak scaling). "Stops scaling"
is the smallest per-GPU batch at which efficiency stays >= 90% (no overlap): below it,
communication is more than 10% of the step.
"""

from __future__ import annotations

import argparse
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
from training_throughput import forward_flops  # noqa: E402

from diffusion_lib.networks import build_network, preset  # noqa: E402
from diffusion_lib.training.strategy import CountingReduce  # noqa: E402

SHAPES = {  # the data each preset is sized for
    "unet-cpu": (28, 28, 1),
    "unet-small": (28, 28, 1),
    "unet-standard": (32, 32, 3),
}
GPU_COUNTS = (1, 8, 16, 32, 64)
PER_GPU_BATCHES = (16, 32, 64, 128)


def reduced_elements(network: str, shape: tuple[int, ...], workdir: pathlib.Path) -> int:
    """Elements the engine's step all-reduces, traced on 2 logical devices (one step run)."""
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
    counting = CountingReduce()
    config = config_preset(
        "mnist-ddpm",
        data_dir=str(data),
        network=network,
        batch_size=4,
        num_steps=1,
        log_every=1,
        checkpoint_every=1,
    )
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    train(
        config,
        workdir / f"run-{network}",
        strategy=tf.distribute.MirroredStrategy(devices, cross_device_ops=counting),
    )
    return counting.elements


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
    parser.add_argument("--bf16-allreduce", action="store_true", help="2-byte gradients")
    parser.add_argument("--no-trace", action="store_true", help="skip the traced-step check")
    add_markdown_option(parser)
    args = parser.parse_args()
    machine = measure_machine()

    import tempfile

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="scaling_model_"))
    flops_rate = args.peak_tflops * 1e12 * args.utilization
    grad_bytes_per_param = 2 if args.bf16_allreduce else 4
    print(
        f"assumed: {args.peak_tflops:.0f} TFLOP/s peak x {args.utilization:.0%} = "
        f"{flops_rate / 1e12:.0f} TFLOP/s per GPU; all-reduce bus bandwidth {args.nvlink_gbs:.0f} "
        f"GB/s within a host of {args.gpus_per_host}, {', '.join(f'{b:g}' for b in args.inter_gbs)} "
        f"GB/s per GPU between hosts; ring all-reduce 2(N-1)/N x {grad_bytes_per_param}-byte "
        "gradients, after the backward pass (no overlap) or hidden under it (overlap)\n"
    )
    summary = Table(
        "scaling_model",
        ["network", "parameters", "GFLOP a training example", "all-reduced per step", "GPUs"]
        + ["link", "90% from a per-GPU batch of", "with the all-reduce overlapped"],
        n="a model: FLOPs counted by the profiler, reductions counted on a traced step",
        caption=f"assumed: {args.peak_tflops:.0f} TFLOP/s x {args.utilization:.0%} per GPU, "
        f"{args.nvlink_gbs:.0f} GB/s all-reduce bus within a host of {args.gpus_per_host}, the "
        "link's GB/s per GPU between hosts, a ring all-reduce of "
        f"{grad_bytes_per_param}-byte gradients",
        stream=False,
    )
    for network in args.presets:
        shape = SHAPES[network]
        model = build_network(preset(network, data_shape=shape))
        params = model.count_params()
        per_example = 3 * forward_flops(model, 8, shape) / 8
        grad_bytes = params * grad_bytes_per_param
        traced = "not traced" if args.no_trace else reduced_elements(network, shape, workdir)
        print(
            f"## {network} at {'x'.join(map(str, shape))}: {params:,} parameters, "
            f"{per_example / 1e9:.2f} GFLOP per training example, {grad_bytes / 1e6:.1f} MB of "
            f"gradients; elements reduced per traced step: {traced} (parameters + 1 = {params + 1:,})"
        )
        print(
            "| GPUs | links | per-GPU batch | compute ms | all-reduce ms | step ms (no overlap) "
            "| efficiency no overlap | efficiency overlap |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
        )
        links = [("NVLink", args.nvlink_gbs)]
        links += [(f"{b:g} GB/s", b) for b in args.inter_gbs]
        for gpus in GPU_COUNTS:
            for name, bandwidth in links:
                if (gpus <= args.gpus_per_host) != (name == "NVLink"):
                    continue
                comm = 0.0 if gpus == 1 else 2 * (gpus - 1) / gpus * grad_bytes / (bandwidth * 1e9)
                for batch in PER_GPU_BATCHES:
                    compute = batch * per_example / flops_rate
                    step = compute + comm
                    print(
                        f"| {gpus} | {name if gpus > 1 else '-'} | {batch} | {compute * 1e3:.2f} "
                        f"| {comm * 1e3:.2f} | {step * 1e3:.2f} | {compute / step:.0%} "
                        f"| {compute / max(compute, comm):.0%} |"
                    )
        for gpus in GPU_COUNTS[1:]:
            for name, bandwidth in links:
                if (gpus <= args.gpus_per_host) != (name == "NVLink"):
                    continue
                comm = 2 * (gpus - 1) / gpus * grad_bytes / (bandwidth * 1e9)
                smallest = math.ceil(9 * comm * flops_rate / per_example)
                hidden = math.ceil(0.9 * comm * flops_rate / per_example)
                print(
                    f"- {gpus} GPUs over {name}: >= 90% efficiency (no overlap) from a per-GPU "
                    f"batch of {smallest} (global {smallest * gpus}); overlapped {hidden}"
                )
                summary.add(
                    network,
                    f"{params:,}",
                    f"{per_example / 1e9:.2f}",
                    f"{traced:,} elements" if isinstance(traced, int) else traced,
                    gpus,
                    name,
                    smallest,
                    hidden,
                )
        print()
    publish(__file__, args, [summary], machine)


if __name__ == "__main__":
    main()
