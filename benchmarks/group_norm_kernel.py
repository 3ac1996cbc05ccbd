"""The compiled GroupNorm kernel (diffusion_lib.kernels) against the same GroupNorm in TensorFlow's ops.

    python benchmarks/group_norm_kernel.py [--networks unet-cpu unet-small] [--rounds 3]

Prints, in one run on one machine:
  - GroupNorm + SiLU alone, forward and backward, on each network's activation shapes at batch
    64, in float32 and bfloat16: milliseconds by TensorFlow's ops and by the kernel, alternated
    in one process, the best of --repeats timings of 20 calls each;
  - the real engine's training step (mnist-ddpm, batch 64: data pipeline, step, Adam, EMA) in
    images/s with DIFFUSION_LIB_KERNELS=off and with the kernel, each in a subprocess of its own,
    the order swapped every round, and the ratio within each round.

The machine's speed moves from one hour to the next: compare the ratios, each measured within a
round, not the rates across rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from diffusion_lib import kernels  # noqa: E402
from diffusion_lib.networks import layers, preset  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import Table, add_markdown_option, measure_machine, publish  # noqa: E402

BATCH = 64
PRECISIONS = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16}


def shapes(network: str) -> list[tuple[tuple[int, int, int, int], int]]:
    """(activation shape at BATCH, groups) at each resolution of the network's U-Net."""
    config = preset(network)
    size, out = config.data_shape[0], []
    for level, mult in enumerate(config.channel_mults):
        channels = config.base_channels * mult
        groups = layers._groups(channels, config.norm_groups)
        out.append(((BATCH, size >> level, size >> level, channels), groups))
    return out


def op_milliseconds(fn, x, groups: int, repeats: int) -> float:
    gamma, beta = tf.ones(x.shape[-1]), tf.zeros(x.shape[-1])

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x, gamma, beta, groups, 1e-5, True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32))
        return tape.gradient(loss, x)

    step(x).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(20):
            out = step(x)
        out.numpy()
        best = min(best, (time.perf_counter() - start) / 20)
    return best * 1e3


def measure_ops(networks: list[str], repeats: int, table: Table) -> None:
    ops = kernels.load()

    def compiled(*args):
        return layers.compiled_group_norm(ops, *args)

    seen = set()
    for network in networks:
        for shape, groups in shapes(network):
            if (shape, groups) in seen:
                continue
            seen.add((shape, groups))
            for name, dtype in PRECISIONS.items():
                x = tf.cast(tf.random.stateless_normal(shape, seed=[1, 2]), dtype)
                ours = op_milliseconds(layers.tensorflow_group_norm, x, groups, repeats)
                kernel = op_milliseconds(compiled, x, groups, repeats)
                table.add(
                    network,
                    "x".join(map(str, shape)) + f", {groups} groups",
                    name,
                    f"{ours:.2f}",
                    f"{kernel:.2f}",
                    f"{ours / kernel:.2f}x",
                )


def child(network: str, precision: str, steps: int) -> dict:
    from training_throughput import prepared_mnist, train_rate

    workdir, data_dir = prepared_mnist("kernel-bench-")
    rates = [
        train_rate(data_dir, network, BATCH, steps, False, workdir, precision=precision)
        for _ in range(2)
    ]
    return {"rate": max(rates), "kernel": kernels.group_norm_ops() is not None}


def run_child(network: str, precision: str, steps: int, mode: str) -> float:
    env = {**os.environ, kernels.ENV: mode}
    done = subprocess.run(
        [sys.executable, __file__, "--child", network, precision, str(steps)],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent,
    )
    if done.returncode != 0:
        sys.exit(f"{network} {precision} {kernels.ENV}={mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["kernel"] != (mode == "on"):
        sys.exit(f"{kernels.ENV}={mode}: the step {'did not use' if mode == 'on' else 'used'} it")
    return result["rate"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--networks", nargs="+", default=["unet-cpu", "unet-small"])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the step")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps a run")
    parser.add_argument("--repeats", type=int, default=5, help="timings of the op alone")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.child:
        network, precision, steps = args.child
        print(json.dumps(child(network, precision, int(steps))))
        return
    machine = measure_machine()
    ops = Table(
        "group_norm_kernel:op",
        ["network", "activation", "precision", "TensorFlow ops ms", "kernel ms", "speed-up"],
        n=f"best of {args.repeats} timings of 20 calls, forward + backward, alternated",
        caption="GroupNorm + SiLU alone, forward and backward",
    )
    measure_ops(args.networks, args.repeats, ops)
    step = Table(
        "group_norm_kernel:step",
        ["network", "precision", "round", "TensorFlow ops img/s", "kernel img/s", "speed-up"],
        n=f"{args.rounds} rounds, each side in its own process, order swapped each round; "
        f"best of 2 runs of {args.steps} steps a side",
        caption=f"the engine's training step at batch {BATCH}",
    )
    for network in args.networks:
        for precision in PRECISIONS:
            for round_ in range(args.rounds):
                order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
                rates = {mode: run_child(network, precision, args.steps, mode) for mode in order}
                step.add(
                    network,
                    precision,
                    round_ + 1,
                    f"{rates['off']:.0f}",
                    f"{rates['on']:.0f}",
                    f"{rates['on'] / rates['off']:.2f}x",
                )
    publish(__file__, args, [ops, step], machine)


if __name__ == "__main__":
    main()
