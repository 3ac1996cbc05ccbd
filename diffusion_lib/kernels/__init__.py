"""Compiled CPU kernels for the networks' GroupNorm (+ SiLU), built at first use.

On a CPU, GroupNorm written as TensorFlow ops is a chain of some twenty elementwise passes
forward and backward; `group_norm.cc` does the same math in one C++ op each way (three reads
and a write forward, two reads and a write backward). It is compiled with the machine's C++
compiler (`CXX`, default g++) against the installed TensorFlow's headers the first time a
network is built in a process that runs on the CPU, into a cache directory shared by later
processes:

    $DIFFUSION_LIB_CACHE (default ~/.cache/diffusion_lib)/kernels/group_norm-<key>.so

keyed by the source, TensorFlow's version and build flags, the compiler and the CPU (it is
built for the host's instruction set). Processes building it at once wait for one another.

    DIFFUSION_LIB_KERNELS=auto  (default) use it where no GPU is visible; when it cannot be
                                built (no compiler, no headers, a read-only cache) warn once
                                and compute with TensorFlow's ops
    DIFFUSION_LIB_KERNELS=off   TensorFlow's ops only
    DIFFUSION_LIB_KERNELS=on    as auto, but fail when it cannot be built

`python -m diffusion_lib.kernels` builds it ahead (a container image, a shared cache)
and prints where it is. With a GPU visible, and inside functions XLA compiles, GroupNorm stays
in TensorFlow's ops (the kernel is CPU-only and has no XLA form).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile

import tensorflow as tf

ENV = "DIFFUSION_LIB_KERNELS"
CACHE_ENV = "DIFFUSION_LIB_CACHE"
MODES = ("auto", "on", "off")
SOURCE = pathlib.Path(__file__).with_name("group_norm.cc")
BUILD_SECONDS = 600  # a compile that takes longer is taken as failed

log = logging.getLogger(__name__)


class KernelBuildError(RuntimeError):
    """The kernel could not be compiled or loaded; the message says why and what was run."""


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV} must be one of {', '.join(MODES)}, got {value!r}")
    return value


def cache_dir() -> pathlib.Path:
    root = os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "diffusion_lib"
    return pathlib.Path(root) / "kernels"


def _compiler() -> str:
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise KernelBuildError(f"no C++ compiler {name!r} on PATH (set CXX to one)")
    return path


def _cpu_flags() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return os.uname().machine


@functools.cache
def _native_flags(compiler: str) -> tuple[str, ...]:
    """-march=native, without AVX512-FP16 where it would turn that on: the kernel has no
    half-precision code, and on CPUs with it (Intel Sapphire Rapids and later) TensorFlow's
    bundled Eigen does not compile its FP16 packet math with g++ 12."""
    probe = subprocess.run(
        [compiler, "-march=native", "-dM", "-E", "-x", "c++", os.devnull],
        capture_output=True,
        text=True,
        check=False,
    )
    fp16 = "__AVX512FP16__" in probe.stdout
    return ("-march=native", "-mno-avx512fp16") if fp16 else ("-march=native",)


def _command(compiler: str, target: pathlib.Path) -> list[str]:
    return [
        compiler,
        "-shared",
        "-fPIC",
        "-O3",
        *_native_flags(compiler),
        "-w",  # TensorFlow's headers warn by the hundred
        *tf.sysconfig.get_compile_flags(),
        str(SOURCE),
        "-o",
        str(target),
        *tf.sysconfig.get_link_flags(),
    ]


def library_path(compiler: str | None = None) -> pathlib.Path:
    """Where the built kernel of this source, TensorFlow, compiler (default: `CXX`'s) and CPU
    lives."""
    compiler = compiler or _compiler()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        tf.__version__.encode(),
        " ".join(_command(compiler, pathlib.Path("x"))).replace(str(SOURCE), "").encode(),
        "".join(version).encode(),
        _cpu_flags().encode(),
    ):
        key.update(part + b"\0")
    return cache_dir() / f"group_norm-{key.hexdigest()[:16]}.so"


def build() -> pathlib.Path:
    """The kernel's shared library, compiled first if the cache does not hold it. Raises
    KernelBuildError naming the cause."""
    try:
        compiler = _compiler()
        target = library_path(compiler)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process compiles, the others wait
            if target.is_file():
                return target
            log.warning("compiling the GroupNorm kernel into %s (once)", target)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                built = pathlib.Path(scratch) / target.name
                command = _command(compiler, built)
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=BUILD_SECONDS, check=False
                )
                if done.returncode != 0:
                    errors = [line for line in done.stderr.splitlines() if "error" in line]
                    raise KernelBuildError(
                        f"{' '.join(command[:1] + [str(SOURCE)])} failed: "
                        + ("; ".join(errors[:3]) or done.stderr[-500:])
                    )
                os.replace(built, target)
            return target
    except (OSError, subprocess.SubprocessError) as err:
        raise KernelBuildError(f"cannot build the GroupNorm kernel: {err}") from None


def load():
    """The kernel's ops (`diffusion_group_norm`, `diffusion_group_norm_grad`), built first if
    need be, whatever DIFFUSION_LIB_KERNELS says. Raises KernelBuildError."""
    return tf.load_op_library(str(build()))


def inside_xla() -> bool:
    """True while tracing a function XLA compiles (`jit_compile=True`): the kernel has no XLA
    form, so GroupNorm stays in TensorFlow's ops there."""
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


@functools.cache
def group_norm_ops():
    """The loaded ops (`diffusion_group_norm`, `diffusion_group_norm_grad`), or None where
    GroupNorm stays in TensorFlow's ops: DIFFUSION_LIB_KERNELS=off, a GPU visible, or (in auto
    mode, warned once) a kernel that cannot be built."""
    chosen = mode()
    if chosen == "off" or tf.config.list_physical_devices("GPU"):
        return None
    try:
        return load()
    except (KernelBuildError, tf.errors.OpError) as err:
        if chosen == "on":
            raise KernelBuildError(f"{ENV}=on: {err}") from None
        log.warning("GroupNorm computes with TensorFlow's ops: %s", err)
        return None
