"""Helpers for tests that start servers and processes of their own: a free loopback port, a
health probe, and the processes still running."""

import socket
import urllib.request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(api: str) -> bool:
    """Whether the Prefect API at `api` answers its health check."""
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def processes(where) -> list[str]:
    """The command lines of the processes for which `where(proc)` holds: `proc` a psutil.Process
    with `cmdline` and `status` in `proc.info`. Processes that end while being read are left out."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if where(proc):
                found.append(" ".join(proc.info["cmdline"] or ())[:160])
        except (psutil.Error, ProcessLookupError):
            continue
    return found
