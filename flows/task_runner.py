"""Where the sample stage's shards and the evaluation's checkpoints run: on the Ray cluster that
`RAY_ADDRESS` names (prefect-ray's task runner, one Ray task per shard or checkpoint, each
worker process keeping the weights it loaded for its next shard), else on a thread pool in the
flow's own process. The choice is made when a flow run starts, from its environment, so a
deployment points its flows at a cluster by its `env` alone.

Without an address no local cluster is started for these stages: on one host a Ray worker
process would first import TensorFlow and load the weights that the flow's process may hold
already, for no gain in speed. Training starts one (diffusion_lib.cluster) because Ray Train's
restarts are worth it there.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from diffusion_lib.cluster import ADDRESS_ENV, connect


class ClusterTaskRunner(TaskRunner):
    """A RayTaskRunner on the cluster at RAY_ADDRESS when it is set, else a ThreadPoolTaskRunner."""

    def __init__(self) -> None:
        super().__init__()
        self._runner: TaskRunner | None = None

    def duplicate(self) -> ClusterTaskRunner:
        return type(self)()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    __hash__ = object.__hash__

    @property
    def runner(self) -> TaskRunner:
        if self._runner is None:
            raise RuntimeError("the task runner must be started before submitting work")
        return self._runner

    def __enter__(self) -> ClusterTaskRunner:
        super().__enter__()
        address = os.environ.get(ADDRESS_ENV)
        if address:
            from prefect_ray.task_runners import RayTaskRunner

            connect(address)  # the project's connection settings; the runner then reuses it
            self._runner = RayTaskRunner(address=address)
        else:
            self._runner = ThreadPoolTaskRunner()
        self._runner.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if self._runner is not None:
                self._runner.__exit__(*exc_info)
        finally:
            self._runner = None
            super().__exit__(*exc_info)

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        return self.runner.submit(task, parameters, wait_for, dependencies)

    def map(self, task, parameters, wait_for=None):
        return self.runner.map(task, parameters, wait_for)
