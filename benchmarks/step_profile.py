"""Where a training step's time goes: TensorFlow's profiler on the real engine's step, by kind of op.

    python benchmarks/step_profile.py [--presets unet-small unet-cpu] [--precisions float32 mixed_bfloat16]

Runs the mnist-ddpm training step (the engine's own: data pipeline, distributed step, Adam, EMA)
at batch 64, warms it up, then records --steps steps with tf.profiler and sums the time of every
TensorFlow op the trace shows, by kind:

  convolution     Conv2D forward and both backward products, fused bias and activation
  GroupNorm+SiLU  the fused normalisation of diffusion_lib.networks.layers.group_norm, both ways
  attention       the attention blocks' products, softmax and reshapes (not their GroupNorm)
  dense           the condition embedding's and projections' matrix products
  optimizer+EMA   Adam's and the EMA's updates of every weight
  layout          transposes, concatenations, slices, pads, repeats and dtype casts
  elementwise     the rest: adds, multiplies, the loss, the noise

An op's time is its wall time on the thread that ran it, including the intra-op threads it used;
ops on different threads can overlap, so "op time / wall" may exceed 1 on 2 cores. Shares are of
the summed op time. --top lists the op types that took longest.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from report import Table, add_markdown_option, measure_machine, publish  # noqa: E402
from training_throughput import engine_steps, prepared_mnist  # noqa: E402

KINDS = (
    "convolution",
    "GroupNorm+SiLU",
    "attention",
    "dense",
    "optimizer+EMA",
    "layout",
    "elementwise",
)
# Ops that only call or wait for other ops: their time is their children's.
CONTAINERS = re.compile(
    r"PartitionedCall|StatefulPartitionedCall|While|If|Identity|NoOp|_Recv|_Send|"
    r"IteratorGetNext|MultiDeviceIteratorGetNextFromShard|ReadVariableOp|VarHandleOp|Const"
)
LAYOUT = re.compile(
    r"Transpose|ConcatV2|Concat|Split|Slice|StridedSlice|StridedSliceGrad|Pad|Tile|Reshape|"
    r"Cast|BroadcastTo|Pack|Unpack|GatherV2|Squeeze|ExpandDims|Fill|ZerosLike|OnesLike"
)


def kind(name: str, op_type: str) -> str:
    """The kind (KINDS) of one op, by its type and the layer scope in its name."""
    lowered = name.lower()
    if "group_norm" in lowered:  # group_norm and group_norm_grad scopes
        return "GroupNorm+SiLU"
    if re.search(r"\badam|/adam|ema|assign", lowered) or op_type.startswith(
        ("ResourceApply", "Assign")
    ):
        return "optimizer+EMA"
    if "Conv2D" in op_type or op_type == "BiasAddGrad" and "conv" in lowered:
        return "convolution"
    if "attention_block" in lowered:
        return "attention"
    if "MatMul" in op_type:
        return "dense"
    if LAYOUT.fullmatch(op_type):
        return "layout"
    return "elementwise"


def op_events(logdir: pathlib.Path):
    """(name, type, microseconds) of every TensorFlow op event in the profile under logdir."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    for path in logdir.rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                for event in line.events:
                    label = plane.event_metadata[event.metadata_id].name
                    name, colon, op_type = label.rpartition(":")
                    # "ExecutorState::Process", "Iterator::...": the executor and tf.data.
                    if not colon or not op_type or " " in op_type or name.endswith(":"):
                        continue
                    yield name, op_type, event.duration_ps / 1e6


def profile(data_dir: str, network: str, precision: str, steps: int, workdir: pathlib.Path):
    step = engine_steps(data_dir, network, 64, workdir, precision=precision)
    for _ in range(3):
        float(step())
    logdir = workdir / f"profile-{network}-{precision}"
    tf.profiler.experimental.start(str(logdir))
    start = time.perf_counter()
    for _ in range(steps):
        float(step())
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    by_kind, by_type = collections.Counter(), collections.Counter()
    for name, op_type, micros in op_events(logdir):
        if CONTAINERS.fullmatch(op_type):
            continue
        by_kind[kind(name, op_type)] += micros
        by_type[op_type] += micros
    return wall / steps, by_kind, by_type


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["unet-small", "unet-cpu"])
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=0, help="also print the N slowest op types")
    add_markdown_option(parser)
    args = parser.parse_args()

    machine = measure_machine()
    workdir, data_dir = prepared_mnist("diffusion_step_profile_")
    table = Table(
        "step_profile",
        ["network", "precision", "step ms (profiled)", "op time / wall", *KINDS],
        n=f"{args.steps} profiled steps of batch 64 per row, after 6 unprofiled ones",
        caption="28x28x1 mnist-ddpm training step; each kind's share of the summed op time",
    )
    for network in args.presets:
        for precision in args.precisions:
            seconds, by_kind, by_type = profile(data_dir, network, precision, args.steps, workdir)
            total = sum(by_kind.values())
            table.add(
                network,
                precision,
                f"{seconds * 1e3:.0f}",
                f"{total / 1e6 / (seconds * args.steps):.2f}",
                *(f"{by_kind[k] / total:.0%}" for k in KINDS),
            )
            for op_type, micros in by_type.most_common(args.top):
                print(f"  {op_type:40s} {micros / total:6.1%}")
    publish(__file__, args, [table], machine)


if __name__ == "__main__":
    main()
