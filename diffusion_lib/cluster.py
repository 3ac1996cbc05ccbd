"""The Ray cluster the project's distributed work runs on.

    cluster = connect(address=None)   # Cluster(local, cpus, gpus)

With no `address` (and none in RAY_ADDRESS), a local cluster is started on first use and kept
for the process's later work (Ray stops it when the process exits): one node on this host,
every process bound to and talking over 127.0.0.1, no dashboard, a small object store (the
project passes paths through it, never arrays). With an address (`ray://host:10001` for Ray
Client, `host:6379` or `auto` on a node of the cluster) the process connects to that cluster.
A process already connected (`ray.init` done by its caller) keeps its connection. An address on
this host's loopback (`127.0.0.1:6379`, a cluster started with `ray start --head
--node-ip-address=127.0.0.1`) is reached over loopback only, as the local cluster is. An address
nothing answers at is reported at once (ClusterUnreachable), not retried for ever.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import urllib.parse

# A local cluster on Linux would advertise this host's network address and reach its own
# processes over it; with Ray's single-host mode its node address is the loopback one. It must
# be in the environment before Ray's constants are read, and its processes inherit it.
# Ray starts its workers at niceness 15, so the training worker yielded the CPU to every other
# process of the job (the flow's own Prefect server among them): its steps were 10% slower
# here than in a plain process (6.2 against 7.0 steps/s on the main job's network, n = 3,
# alternated), and as fast at niceness 0 (6.9 against 7.1, n = 2).
# Ray Train checks on its workers every 2 s by default: a finished or failed worker went
# unnoticed for up to that long after every launch.
_LOCAL = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_worker_niceness": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
OBJECT_STORE_BYTES = 256 * 2**20
ADDRESS_ENV = "RAY_ADDRESS"
_started_local = False  # this process started the local cluster it is connected to
LOOPBACK = ("127.0.0.1", "localhost")
REACH_SECONDS = 10.0
# Ray Client starts a server process on the head for each connection; on a busy head that
# start can fail, and a new connection gets a new one. The head says so in one of two ways:
# "Starting Ray client server failed" (seen once in a few dozen connections here while other
# jobs shared the 2 cores), or a traceback out of the proxier's start_specific_server when the
# new process died before the proxier read it (psutil.ZombieProcess, seen once in a CI run).
CLIENT_START_FAILURES = ("Starting Ray client server failed", "in start_specific_server")
CLIENT_ATTEMPTS = 3
CLIENT_RETRY_SECONDS = 2.0


class ClusterUnreachable(ConnectionError):
    """Nothing answers at the cluster address given (or RAY_ADDRESS)."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The cluster connected to: a local one this process started or not, its CPUs and GPUs."""

    local: bool
    cpus: int
    gpus: int


def local_settings() -> None:
    """The environment (and constants) of a local cluster, set before it starts."""
    os.environ.update(_LOCAL)
    import ray._private.ray_constants as constants

    constants.ENABLE_RAY_CLUSTER = False  # read at call time; set even if Ray was imported first


def connect(address: str | None = None) -> Cluster:
    """Connects to the Ray cluster at `address`, or starts a local one (module docstring)."""
    global _started_local
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get(ADDRESS_ENV) or None
        if address is None:
            local_settings()
            ray.init(
                address="local",  # a new cluster, even where `ray start` left one running
                num_cpus=os.cpu_count(),
                object_store_memory=OBJECT_STORE_BYTES,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            _started_local = True
        else:
            where = _host_port(address)
            if where is not None:
                if where[0] in LOOPBACK:
                    local_settings()
                _check_reachable(address, *where)
            _init_client(ray, address)
    resources = ray.cluster_resources()
    return Cluster(_started_local, int(resources.get("CPU", 0)), int(resources.get("GPU", 0)))


def _init_client(ray, address: str) -> None:
    """`ray.init(address)`, once more (up to CLIENT_ATTEMPTS) when the cluster's Ray Client
    server failed to start the server process it starts for each connection, which happens on
    a busy head and passes; ClusterUnreachable when it does not, or the cluster refuses."""
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            return
        except ConnectionError as err:
            if not any(sign in str(err) for sign in CLIENT_START_FAILURES):
                raise ClusterUnreachable(
                    f"the Ray cluster at {address} refused this process ({err}); if it uses "
                    "token authentication, set RAY_AUTH_MODE=token and its token in "
                    "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)"
                ) from None
            if attempt == CLIENT_ATTEMPTS:
                raise ClusterUnreachable(
                    f"the Ray cluster at {address} could not start a client server for this "
                    f"process in {CLIENT_ATTEMPTS} attempts; its ray_client_server_*.err logs "
                    f"on the head say why ({' '.join(str(err).split())[-300:]})"
                ) from None
            logging.getLogger(__name__).warning(
                "the Ray cluster at %s could not start a client server for this process "
                "(attempt %d of %d); connecting again",
                address,
                attempt,
                CLIENT_ATTEMPTS,
            )
            time.sleep(CLIENT_RETRY_SECONDS * attempt)


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `host:port` or `ray://host:port`; None for `auto` and the like."""
    parsed = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    return (parsed.hostname, port) if parsed.hostname and port else None


def _check_reachable(address: str, host: str, port: int) -> None:
    """Raises ClusterUnreachable unless something accepts a connection at host:port within
    REACH_SECONDS (Ray itself would retry for ever)."""
    try:
        socket.create_connection((host, port), timeout=REACH_SECONDS).close()
    except OSError as err:
        raise ClusterUnreachable(
            f"no Ray cluster answers at {address} (from the address given or {ADDRESS_ENV}): "
            f"{err}; start the cluster or correct the address"
        ) from None
