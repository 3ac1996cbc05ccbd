"""Connecting to a cluster through Ray Client when the head fails to start the server process
it starts for each connection: tried again, then reported with what to read. The failure
cannot be made to happen on demand on a real head (it was seen once in a few dozen connections
on a busy machine), so a stand-in for `ray.init` raises Ray's own message; the real connection
is covered by tests/flows/test_cluster.py."""

import pytest

from diffusion_lib import cluster

pytestmark = pytest.mark.cost(1)

FAILED = (
    "Initialization failure from server:\nTraceback (most recent call last):\n  File "
    '"proxier.py", line 772, in Datapath\nRuntimeError: Starting Ray client server failed. '
    "See ray_client_server_23001.err for detailed logs."
)

# The other way: the new process died before the proxier read its command line.
DIED = (
    "Initialization failure from server:\nTraceback (most recent call last):\n  File "
    '"proxier.py", line 765, in Datapath\n    if not self.proxy_manager.start_specific_server(\n'
    '  File "proxier.py", line 396, in start_specific_server\n    cmd = psutil_proc.cmdline()\n'
    "psutil.ZombieProcess: PID still exists but it's a zombie (pid=11083)"
)


class _Ray:
    def __init__(self, failures: list[str]):
        self.failures, self.calls = list(failures), 0

    def init(self, **kwargs):
        self.calls += 1
        if self.failures:
            raise ConnectionError(self.failures.pop(0))


def test_a_client_server_that_failed_to_start_is_tried_again(monkeypatch, caplog):
    monkeypatch.setattr(cluster, "CLIENT_RETRY_SECONDS", 0.0)
    ray = _Ray([FAILED, DIED])
    cluster._init_client(ray, "ray://head:10001")
    assert ray.calls == 3
    assert sum("could not start a client server" in r.message for r in caplog.records) == 2

    ray = _Ray([FAILED] * 3)
    with pytest.raises(cluster.ClusterUnreachable, match=r"in 3 attempts; its ray_client_server"):
        cluster._init_client(ray, "ray://head:10001")
    assert ray.calls == 3


def test_a_refusal_is_reported_at_once_with_the_token_settings():
    ray = _Ray(["Authentication failed"])
    with pytest.raises(cluster.ClusterUnreachable, match=r"refused .*RAY_AUTH_MODE=token"):
        cluster._init_client(ray, "ray://head:10001")
    assert ray.calls == 1
