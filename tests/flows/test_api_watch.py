"""The API watch against real local HTTP servers: an API that answers (even with an error
status) is kept; one that stops answering is reported once, after the window, with the
seconds it has been silent."""

import http.server
import threading
import time

import pytest

from flows.api_watch import answers, watching_api
from tests.local_servers import free_port

pytestmark = pytest.mark.cost(3)


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - the standard library's name
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(status: int):
    handler = type("Handler", (_Handler,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/api"


def test_an_api_that_answers_is_kept_and_one_that_stops_is_reported_once():
    server, url = _serve(404)  # a hosted API may answer /health with an error: it answered
    assert answers(url)
    lost = []
    with watching_api(
        lambda u, quiet: f"{u} {quiet:.1f}",
        url=url,
        probe_seconds=0.1,
        lost_seconds=0.5,
        on_lost=lost.append,
    ):
        time.sleep(1.0)
        assert lost == []
        server.shutdown()
        server.server_close()
        assert not answers(url, timeout=0.5)
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    assert len(lost) == 1 and lost[0].startswith(f"{url} ")
    assert 0.5 <= float(lost[0].split()[-1]) < 2.0


def _watching() -> bool:
    return any(thread.name == "prefect-api-watch" for thread in threading.enumerate())


def test_a_stage_flow_watches_the_api_on_its_own_and_not_as_a_subflow(prefect_server):
    """Run alone (`python -m flows.train`), a stage watches the API itself; as a stage of
    train-and-sample it leaves that to its parent."""
    from prefect import flow

    from flows.api_watch import watching_stage

    seen = []

    @flow(name="a-stage")
    def stage(run_name: str = "r"):
        with watching_stage(stage, "python -m flows.a_stage", {"run_name": run_name}):
            seen.append(_watching())

    @flow(name="a-parent")
    def parent():
        stage()

    stage()
    deadline = time.monotonic() + 10  # the stopped watch ends within its probe
    while _watching() and time.monotonic() < deadline:
        time.sleep(0.05)
    parent()
    assert seen == [True, False]
