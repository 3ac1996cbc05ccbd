"""Choosing the distribution strategy from the environment, and this worker's role.

    TF_CONFIG naming several workers   MultiWorkerMirroredStrategy (create it first thing in
                                       the process, before other TensorFlow work)
    several local GPUs                 MirroredStrategy over all of them
    one GPU                            OneDeviceStrategy on it
    otherwise (CPU)                    the default strategy

`mode` forces one ("default", "mirrored" with an optional device list, "multi_worker").
"""

from __future__ import annotations

import json
import os

import tensorflow as tf


def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from None


def choose_strategy(mode: str = "auto", devices: tuple[str, ...] = ()) -> tf.distribute.Strategy:
    workers = len(_tf_config().get("cluster", {}).get("worker", []))
    if mode == "multi_worker" or (mode == "auto" and workers > 1):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if mode == "mirrored":
        return tf.distribute.MirroredStrategy(list(devices) or None)
    if mode == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        if len(gpus) == 1:
            return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, worker index). The chief writes config, logs and kept checkpoints."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return is_chief, task_id


class CountingReduce(tf.distribute.ReductionToOneDevice):
    """A cross-device reduction that records the element count of every value it reduces: hand
    it to MirroredStrategy(cross_device_ops=...) to see what a training step communicates."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    @property
    def elements(self) -> int:
        return sum(self.sizes)

    def reduce_implementation(self, reduce_op, per_replica_value, destinations, options):
        first = getattr(per_replica_value, "values", (per_replica_value,))[0]
        self.sizes.append(int(first.shape.num_elements()))
        return super().reduce_implementation(reduce_op, per_replica_value, destinations, options)


_collective_keys = []  # one key sequence for every counting_collective of the process


def counting_collective(devices: list[str]):
    """TensorFlow's collective all-reduce (the one MultiWorkerMirroredStrategy runs between
    workers) over local `devices`, recording the element count of each pack it all-reduces:
    hand it to MirroredStrategy(devices, cross_device_ops=...) to see how a training step
    packs its gradients. Returns (cross_device_ops, packs), `packs` the list it appends to."""
    from tensorflow.python.distribute import cross_device_ops, cross_device_utils

    if not _collective_keys:  # keys restarted by a second one would name the first's ops
        _collective_keys.append(cross_device_utils.CollectiveKeys())
    packs: list[int] = []
    ops = cross_device_ops.CollectiveAllReduce(
        devices=devices,
        group_size=len(devices),
        options=tf.distribute.experimental.CommunicationOptions(),
        collective_keys=_collective_keys[0],
    )
    first = ops._launchers[0]  # each replica launches the same packs: count the first's
    launch = first.batch_all_reduce

    def counted(input_tensor_packs, options=None):
        for pack in input_tensor_packs:
            packs.append(sum(int(t.shape.num_elements()) for t in pack))
        return launch(input_tensor_packs, options)

    first.batch_all_reduce = counted
    if not isinstance(first, cross_device_utils.CollectiveReplicaLauncher):
        raise RuntimeError("this TensorFlow launches collectives differently")
    return ops, packs
