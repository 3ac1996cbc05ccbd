"""Helpers for tests that start servers of their own on loopback: a free port, a health probe."""

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
