"""Shared test setup: quiet TensorFlow, CPU only, two logical CPU devices.

Two logical devices let MirroredStrategy tests run as they would on a 2-GPU host; they must be
configured before TensorFlow initialises its devices, hence here, at import time.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
