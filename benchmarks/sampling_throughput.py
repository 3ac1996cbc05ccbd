"""Sampling throughput of the small U-Net, and sample-set memory against n.

    python benchmarks/sampling_throughput.py [--ddim-n 256] [--ddpm-n 32]

Prints samples/s for DDIM with 20 and 50 steps and for DDPM with all 1,000 steps on the
unet-small preset at 28x28 (random weights: the cost of a step does not depend on them), and the
peak RSS of generating sample sets of 1,000 and 10,000 images (unet-tiny, DDIM with 5 steps,
chunks of 1,000), each in a fresh process. On a CPU, DDPM's 1,000 steps make large n slow,
hence the small default n for it; on a GPU raise both.
The aim: memory for n = 10,000 about equal to n = 1,000.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from report import Table, add_markdown_option, measure_machine, publish  # noqa: E402


def make_run(root: pathlib.Path, network: str) -> pathlib.Path:
    from diffusion_lib.data import DatasetSpec, prepare_dataset
    from diffusion_lib.training import config_preset, train

    data = root / "mnist"
    prepare_dataset(DatasetSpec.create("mnist_embedded", split="test"), data)
    run = root / f"run-{network}"
    train(
        config_preset(
            "mnist-ddpm",
            data_dir=str(data),
            network=network,
            batch_size=8,
            num_steps=1,
            checkpoint_every=1,
            log_every=1,
        ),
        run,
    )
    return run


def memory_child(run: str, out: str, n: int) -> None:
    from diffusion_lib.sample_sets import generate_samples
    from diffusion_lib.samplers import SamplerSpec

    start = time.perf_counter()
    spec = SamplerSpec.of("ddim", num_steps=5)
    generate_samples(run, out, n=n, sampler=spec, chunk_rows=1000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "seconds": time.perf_counter() - start}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ddim-n", type=int, default=256)
    parser.add_argument("--ddpm-n", type=int, default=32)
    parser.add_argument("--memory-child", nargs=3, default=None, help=argparse.SUPPRESS)
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], int(args.memory_child[2]))
        return

    from diffusion_lib.run import Run
    from diffusion_lib.samplers import ddim_sample, ddpm_sample

    machine = measure_machine()
    root = pathlib.Path(tempfile.mkdtemp(prefix="diffusion_sampling_bench_"))
    restored = Run(make_run(root, "unet-small")).restore()
    model, diffusion = restored.model, restored.objective.diffusion
    speed = Table(
        "sampling_throughput:speed",
        ["sampler", "network calls a sample", "samples", "seconds", "samples/s"],
        n="1 run per row, after a traced warm-up",
        caption="unet-small at 28x28x1 (random weights: a step's cost does not depend on them), "
        "the whole batch at once",
    )
    ddim_sample(model, diffusion, (8, 28, 28, 1), seed=0, num_steps=2)  # trace
    for steps in (20, 50):
        start = time.perf_counter()
        ddim_sample(
            model, diffusion, (args.ddim_n, 28, 28, 1), seed=0, num_steps=steps
        ).samples.numpy()
        elapsed = time.perf_counter() - start
        speed.add("DDIM", steps, args.ddim_n, f"{elapsed:.1f}", f"{args.ddim_n / elapsed:.2f}")
    start = time.perf_counter()
    ddpm_sample(model, diffusion, (args.ddpm_n, 28, 28, 1), seed=0).samples.numpy()
    elapsed = time.perf_counter() - start
    speed.add("DDPM", 1000, args.ddpm_n, f"{elapsed:.1f}", f"{args.ddpm_n / elapsed:.2f}")

    memory = Table(
        "sampling_throughput:memory",
        ["sample set", "peak RSS MiB", "seconds"],
        n="1 fresh process per row",
        caption="unet-tiny, DDIM with 5 steps, chunks of 1,000: memory holds one chunk",
    )
    tiny = make_run(root, "unet-tiny")
    for n in (1_000, 10_000):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(tiny), str(root / f"set-{n}"), str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        memory.add(f"{n:,} images", f"{result['peak_mib']:.0f}", f"{result['seconds']:.0f}")
    publish(__file__, args, [speed, memory], machine)


if __name__ == "__main__":
    main()
