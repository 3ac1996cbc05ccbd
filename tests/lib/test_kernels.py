"""diffusion_lib.kernels: when the compiled GroupNorm is used, how a build that cannot happen is
reported, and that the kernel's results do not depend on how the batch is split over threads.
Its values and gradients are checked against the float64 definition in
tests/lib/networks/test_layers.py."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib import kernels


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no remembered choice; the choice is forgotten again after."""
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path / "cache"))
    kernels.group_norm_ops.cache_clear()
    yield tmp_path
    kernels.group_norm_ops.cache_clear()


def test_off_computes_with_tensorflow_ops(fresh, monkeypatch):
    monkeypatch.setenv(kernels.ENV, "off")
    assert kernels.group_norm_ops() is None
    assert not (fresh / "cache").exists()  # nothing built


def test_an_unknown_mode_is_refused_by_name(fresh, monkeypatch):
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(ValueError, match="DIFFUSION_LIB_KERNELS must be one of auto, on, off"):
        kernels.group_norm_ops()


def test_a_visible_gpu_keeps_tensorflow_ops(fresh, monkeypatch):
    # No GPU exists here: the device list is the one stand-in, for the branch a GPU host takes.
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    assert kernels.group_norm_ops() is None
    assert not (fresh / "cache").exists()


def test_without_a_compiler_auto_warns_once_and_on_fails(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "no-such-compiler")
    with caplog.at_level(logging.WARNING, logger="diffusion_lib.kernels"):
        assert kernels.group_norm_ops() is None
        assert kernels.group_norm_ops() is None
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "no C++ compiler 'no-such-compiler'" in warned[0], warned
    kernels.group_norm_ops.cache_clear()
    monkeypatch.setenv(kernels.ENV, "on")
    with pytest.raises(kernels.KernelBuildError, match="DIFFUSION_LIB_KERNELS=on: no C"):
        kernels.group_norm_ops()


def test_a_failed_compile_names_the_error_and_leaves_nothing(fresh, monkeypatch):
    broken = fresh / "broken.cc"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(kernels, "SOURCE", broken)
    with pytest.raises(kernels.KernelBuildError, match=r"broken.cc failed: .*error"):
        kernels.build()
    assert [p.suffix for p in (fresh / "cache" / "kernels").iterdir()] == [".lock"]


def test_the_cache_is_keyed_by_the_source(fresh, monkeypatch):
    first = kernels.library_path()
    other = fresh / "other.cc"
    other.write_text(kernels.SOURCE.read_text() + "\n// another version\n")
    monkeypatch.setattr(kernels, "SOURCE", other)
    assert kernels.library_path() != first
    assert first.parent == fresh / "cache" / "kernels"


def _compiler_defining(tmp_path, macros: str) -> str:
    """A stand-in compiler whose -march=native defines `macros` (and compiles nothing)."""
    script = tmp_path / f"cxx-{abs(hash(macros))}"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{macros}'\n")
    script.chmod(0o755)
    return str(script)


def test_avx512_fp16_is_left_out_where_native_turns_it_on(fresh):
    # On CPUs with AVX512-FP16 (Intel Sapphire Rapids and later), -march=native made g++ 12
    # compile TensorFlow's bundled Eigen FP16 code, which fails: the kernel was never built.
    with_fp16 = _compiler_defining(fresh, "#define __AVX512F__ 1 #define __AVX512FP16__ 1")
    without = _compiler_defining(fresh, "#define __AVX512F__ 1")
    assert kernels._native_flags(with_fp16) == ("-march=native", "-mno-avx512fp16")
    assert kernels._native_flags(without) == ("-march=native",)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_each_example_is_the_same_bits_whatever_the_batch(dtype):
    """Examples are split over threads: an example's output and its gradient must not depend on
    which others share its call."""
    ops = kernels.load()
    rng = np.random.default_rng(3)
    x = tf.cast(rng.normal(1.0, 2.0, size=(9, 6, 5, 12)), dtype)
    dy = tf.cast(rng.normal(size=x.shape), dtype)
    gamma = tf.constant(rng.normal(size=12), tf.float32)
    beta = tf.constant(rng.normal(size=12), tf.float32)
    y, mean, inv = ops.diffusion_group_norm(x, gamma, beta, groups=3, epsilon=1e-5, silu=True)
    dx, _, _ = ops.diffusion_group_norm_grad(dy, x, gamma, beta, mean, inv, groups=3, silu=True)
    for i in range(9):
        one = slice(i, i + 1)
        alone, mean_i, inv_i = ops.diffusion_group_norm(
            x[one], gamma, beta, groups=3, epsilon=1e-5, silu=True
        )
        dx_alone = ops.diffusion_group_norm_grad(
            dy[one], x[one], gamma, beta, mean_i, inv_i, groups=3, silu=True
        )[0]
        assert _bits(alone) == _bits(y[one]) and _bits(dx_alone) == _bits(dx[one]), i


def _bits(tensor) -> bytes:
    return tensor.numpy().tobytes()


def test_a_function_xla_compiles_keeps_tensorflow_ops():
    from diffusion_lib.networks import layers

    x = tf.random.stateless_normal([2, 4, 4, 8], seed=[4, 5])
    gamma, beta = tf.ones([8]), tf.zeros([8])
    compiled = tf.function(
        lambda x: layers.group_norm(x, gamma, beta, 4, 1e-5, True), jit_compile=True
    )
    assert not kernels.inside_xla()
    reference = layers.tensorflow_group_norm(x, gamma, beta, 4, 1e-5, True)
    np.testing.assert_allclose(compiled(x).numpy(), reference.numpy(), atol=1e-5)


def test_wrong_shapes_are_refused_by_the_op():
    ops = kernels.load()
    x = tf.zeros([2, 3, 3, 6])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="do not split into 4"):
        ops.diffusion_group_norm(x, tf.ones([6]), tf.zeros([6]), groups=4, epsilon=1e-5)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="C elements"):
        ops.diffusion_group_norm(x, tf.ones([5]), tf.zeros([6]), groups=3, epsilon=1e-5)
