"""The project's U-Net against diffusers' UNet2DModel of the same architecture, per FLOP.

    pip install -e '.[compare]'      # torch and diffusers: for this script only
    python benchmarks/versus_diffusers.py [--networks small cpu standard] [--rounds 2]

Both sides run the same bare DDPM training step (timesteps and noise drawn, x_t formed, the
network's eps prediction, mean squared error, backward, Adam) and the same sampling forward (one
network evaluation of a batch), in float32 and in bfloat16 (Keras's mixed_bfloat16 policy here;
torch.autocast on the CPU there: float32 weights, bfloat16 arithmetic on both sides). Each side
runs in a subprocess of its own, one side after the other and the order swapped every round, so
the two meet the machine in the same state.

FLOPs are each side's own count of its convolutions and matrix products (attention included) in
one forward pass: here from the traced graph's Conv2D / MatMul / BatchMatMul ops and their
static shapes, there from torch.utils.flop_counter. A training step is counted as 3x its
forward. "Per FLOP" compares achieved GFLOP/s, so a side that does more arithmetic for the same
architecture is not rewarded for it. The share is of the machine's matmul ceiling for the
dtype: the fastest of TensorFlow's and torch's 2048x2048 products, each measured right before
and right after its side's timing in the same round (the figure drifts by several percent
from minute to minute on a shared machine; the highest is the harshest test).

Networks (28x28x1 MNIST-shaped unless said):
  small     the unet-small preset: 32/64/64 channels, attention at 7x7, 1.1M parameters
  cpu       the unet-cpu preset: 16/32/32 channels, the main job's network
  standard  the unet-standard preset at 32x32x3: DDPM's CIFAR-10 network, 35.7M parameters
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Network:
    preset: str
    shape: tuple[int, int, int]  # H, W, C
    train_batch: int
    sample_batch: int
    steps: int  # timed steps per measurement


NETWORKS = {
    "small": Network("unet-small", (28, 28, 1), 64, 256, 10),
    "cpu": Network("unet-cpu", (28, 28, 1), 64, 256, 10),
    "standard": Network("unet-standard", (32, 32, 3), 8, 16, 4),
}
DTYPES = ("float32", "bfloat16")
WARMUP = 3
TIMESTEPS = 1000


def _median_seconds(run, steps: int) -> float:
    """Median wall time of `run()` over `steps` calls, after WARMUP untimed ones."""
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- this project (TensorFlow / Keras) -------------------------------------------------------


def _graph_flops(graph) -> int:
    """2 x multiply-adds of the Conv2D, MatMul and BatchMatMul ops of a graph with static shapes."""
    total = 0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            out = op.outputs[0].shape.as_list()
            kernel = op.inputs[1].shape.as_list()  # kh, kw, cin, cout
            total += 2 * out[0] * out[1] * out[2] * out[3] * kernel[0] * kernel[1] * kernel[2]
        elif op.type == "MatMul":
            a = op.inputs[0].shape.as_list()
            k = a[0] if op.get_attr("transpose_a") else a[1]
            out = op.outputs[0].shape.as_list()
            total += 2 * out[0] * out[1] * k
        elif op.type.startswith("BatchMatMul"):
            a = op.inputs[0].shape.as_list()
            adjoint = op.get_attr("adj_x")
            k = a[-2] if adjoint else a[-1]
            out = op.outputs[0].shape.as_list()
            count = 1
            for size in out:
                count *= size
            total += 2 * count * k
        elif op.type in ("Einsum", "DepthwiseConv2dNative", "Conv2DBackpropInput", "Conv3D"):
            raise NotImplementedError(f"no FLOP count for {op.type} ({op.name})")
    return total


def measure_ours(name: str, dtype: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    from diffusion_lib.diffusion import GaussianDiffusion
    from diffusion_lib.networks import build_network, preset
    from diffusion_lib.schedules import beta_schedule

    sys.path.insert(0, str(HERE))
    from report import matmul_gflops

    spec = NETWORKS[name]
    precision = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
    model = build_network(preset(spec.preset, data_shape=spec.shape, precision=precision))
    optimizer = keras.optimizers.Adam(2e-4)
    optimizer.build(model.trainable_variables)
    diffusion = GaussianDiffusion(beta_schedule("linear", TIMESTEPS))

    def flops(batch: int) -> int:
        function = tf.function(lambda x, t: model(x, t))
        concrete = function.get_concrete_function(
            tf.TensorSpec([batch, *spec.shape]), tf.TensorSpec([batch], tf.int32)
        )
        return _graph_flops(convert_variables_to_constants_v2(concrete).graph)

    x0 = tf.random.stateless_normal([spec.train_batch, *spec.shape], seed=[0, 1])

    @tf.function
    def train_step(seed):
        t = tf.random.stateless_uniform([spec.train_batch], seed, 0, TIMESTEPS, dtype=tf.int32)
        noise = tf.random.stateless_normal(x0.shape, seed + 1)
        with tf.GradientTape() as tape:
            prediction = model(diffusion.q_sample(x0, t, noise), t, training=True, seed=seed)
            loss = tf.reduce_mean(tf.square(noise - tf.cast(prediction, tf.float32)))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    forward = tf.function(lambda x, t: model(x, t))
    x = tf.random.stateless_normal([spec.sample_batch, *spec.shape], seed=[2, 3])
    t = tf.fill([spec.sample_batch], 500)
    counter = iter(range(10**9))
    before = matmul_gflops(dtype)
    train = _median_seconds(lambda: float(train_step(tf.constant([next(counter), 7]))), spec.steps)
    sample = _median_seconds(lambda: forward(x, t).numpy(), spec.steps)
    return {
        "parameters": int(model.count_params()),
        "train_flops": 3 * flops(spec.train_batch),
        "sample_flops": flops(spec.sample_batch),
        "train_seconds": train,
        "sample_seconds": sample,
        "matmul": max(before, matmul_gflops(dtype)),
    }


# --- diffusers (PyTorch) ---------------------------------------------------------------------


def _diffusers_unet(spec: Network):
    """diffusers' UNet2DModel with the preset's architecture (levels, blocks, attention
    resolutions, groups, dropout; one attention head per block, as the project's)."""
    from diffusers import UNet2DModel

    from diffusion_lib.networks import preset

    config = preset(spec.preset, data_shape=spec.shape)
    height, down, up = spec.shape[0], [], []
    heights = []
    for level in range(len(config.channel_mults)):
        heights.append(height)
        attention = height in config.attn_resolutions
        down.append("AttnDownBlock2D" if attention else "DownBlock2D")
        if level != len(config.channel_mults) - 1:
            height = (height + 1) // 2
    for level in reversed(range(len(config.channel_mults))):
        up.append("AttnUpBlock2D" if heights[level] in config.attn_resolutions else "UpBlock2D")
    return UNet2DModel(
        sample_size=spec.shape[0],
        in_channels=spec.shape[2],
        out_channels=spec.shape[2],
        block_out_channels=tuple(config.base_channels * m for m in config.channel_mults),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        layers_per_block=config.num_res_blocks,
        norm_num_groups=config.norm_groups,
        attention_head_dim=None,
        dropout=config.dropout,
    )


def measure_diffusers(name: str, dtype: str) -> dict:
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    spec = NETWORKS[name]
    model = _diffusers_unet(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    betas = torch.linspace(1e-4, 0.02, TIMESTEPS, dtype=torch.float64)
    abar = torch.cumprod(1.0 - betas, 0).float()
    h, w, c = spec.shape

    def autocast():
        if dtype == "bfloat16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def flops(batch: int) -> int:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), autocast():
            model(torch.zeros(batch, c, h, w), torch.zeros(batch, dtype=torch.long))
        return int(counter.get_total_flops())

    x0 = torch.randn(spec.train_batch, c, h, w)
    model.train()

    def train_step():
        t = torch.randint(0, TIMESTEPS, (spec.train_batch,))
        noise = torch.randn_like(x0)
        a = abar[t][:, None, None, None]
        x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
        with autocast():
            prediction = model(x_t, t).sample
        loss = torch.mean(torch.square(noise - prediction.float()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    x = torch.randn(spec.sample_batch, c, h, w)
    t = torch.full((spec.sample_batch,), 500)

    def forward():
        with torch.no_grad(), autocast():
            model(x, t).sample.float()

    before = _torch_matmul(dtype)
    train = _median_seconds(train_step, spec.steps)
    model.eval()
    sample = _median_seconds(forward, spec.steps)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_flops": 3 * flops(spec.train_batch),
        "sample_flops": flops(spec.sample_batch),
        "train_seconds": train,
        "sample_seconds": sample,
        "matmul": max(before, _torch_matmul(dtype)),
    }


def _torch_matmul(dtype: str, n: int = 2048, repeats: int = 10) -> float:
    import torch

    kind = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a, b = torch.randn(n, n).to(kind), torch.randn(n, n).to(kind)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


SIDES = {"ours": measure_ours, "diffusers": measure_diffusers}


# --- the comparison --------------------------------------------------------------------------


def _child(side: str, name: str, dtype: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", side, name, dtype],
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    if result.returncode != 0:
        sys.exit(f"{side} {name} {dtype} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _gflops(flops: int, seconds: float) -> float:
    return flops / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    sys.path.insert(0, str(HERE))
    from report import Table, add_markdown_option, measure_machine, publish

    add_markdown_option(parser)
    args = parser.parse_args()
    if args.child:
        side, name, dtype = args.child
        print(json.dumps(SIDES[side](name, dtype)))
        return
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError as error:
        sys.exit(f"this benchmark needs torch and diffusers: pip install -e '.[compare]' ({error})")

    table = Table(
        "versus_diffusers",
        ["network", "dtype", "round", "parameters ours / theirs"]
        + ["train GFLOP/s ours / theirs", "train per FLOP", "train share of matmul ours / theirs"]
        + ["sample GFLOP/s ours / theirs", "sample per FLOP", "matmul ceiling"],
        n=f"{args.rounds} alternating round(s); each cell the median of a network's timed steps "
        "(small and cpu: 10 steps of batch 64, forwards of 256; standard: 4 of 8 and of 16) "
        f"after {WARMUP} warm-up steps",
        caption="per FLOP = our achieved GFLOP/s over diffusers'; each side counts its own "
        "convolution and matmul FLOPs; the ceiling is the fastest 2048x2048 matmul of either "
        "framework, measured before and after each side",
    )
    for round_ in range(args.rounds):
        for name in args.networks:
            for dtype in args.dtypes:
                order = ["ours", "diffusers"] if round_ % 2 == 0 else ["diffusers", "ours"]
                result = {side: _child(side, name, dtype) for side in order}
                ours, theirs = result["ours"], result["diffusers"]
                ceiling = max(ours["matmul"], theirs["matmul"])
                train = [_gflops(r["train_flops"], r["train_seconds"]) for r in (ours, theirs)]
                sample = [_gflops(r["sample_flops"], r["sample_seconds"]) for r in (ours, theirs)]
                table.add(
                    name,
                    dtype,
                    round_ + 1,
                    f"{ours['parameters']:,} / {theirs['parameters']:,}",
                    f"{train[0]:.1f} / {train[1]:.1f}",
                    f"{train[0] / train[1]:.2f}x",
                    f"{train[0] / ceiling:.0%} / {train[1] / ceiling:.0%}",
                    f"{sample[0]:.1f} / {sample[1]:.1f}",
                    f"{sample[0] / sample[1]:.2f}x",
                    f"{ceiling:.0f} GFLOP/s",
                )
    publish(__file__, args, [table], measure_machine())


if __name__ == "__main__":
    main()
