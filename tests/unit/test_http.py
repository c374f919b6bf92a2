"""The HTTP endpoints' plumbing: routes, status codes, content types, address parsing."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from evsync.errors import ConfigError, HttpError
from evsync.http import HttpServer, parse_address
from evsync.metrics import Metrics


def fetch(server: HttpServer, path: str) -> tuple[int, str, str]:
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


class State:
    """What the fake daemon reports."""

    healthy = True
    fail_status = False

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self.healthy, {"status": "ok" if self.healthy else "error"}

    def status(self) -> dict[str, Any]:
        if self.fail_status:
            raise RuntimeError("boom")
        return {"instance": "a"}


@pytest.fixture
def state() -> State:
    return State()


@pytest.fixture
def server(state: State) -> Iterator[HttpServer]:
    m = Metrics()
    m.objects_stored.labels("main").inc(3)
    srv = HttpServer("127.0.0.1:0", m.registry, state.health, state.status)
    srv.start()
    yield srv
    srv.stop()


class TestRoutes:
    """Each endpoint answers with the right code and type."""

    def test_metrics_is_prometheus_text(self, server: HttpServer) -> None:
        """/metrics serves the exposition format with the registry's samples."""
        code, ctype, body = fetch(server, "/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        assert 'evsync_objects_stored_total{db="main"} 3.0' in body

    def test_healthz_follows_the_verdict(self, server: HttpServer, state: State) -> None:
        """/healthz is 200 when healthy and 503 with the JSON body when not."""
        assert fetch(server, "/healthz")[0] == 200
        state.healthy = False
        code, ctype, body = fetch(server, "/healthz")
        assert code == 503 and ctype == "application/json"
        assert json.loads(body)["status"] == "error"

    def test_status_is_json(self, server: HttpServer) -> None:
        """/status (with or without a trailing slash or query) is the status JSON."""
        for path in ("/status", "/status/", "/status?x=1"):
            code, _ctype, body = fetch(server, path)
            assert code == 200 and json.loads(body) == {"instance": "a"}

    def test_root_is_the_html_status_page(self, server: HttpServer) -> None:
        """/ serves the status page as UTF-8 HTML drawn from the status reader."""
        code, ctype, body = fetch(server, "/")
        assert code == 200 and ctype == "text/html; charset=utf-8"
        assert body.startswith("<!DOCTYPE html>") and "<h1>evsync a</h1>" in body

    def test_root_survives_a_failing_status_reader(
        self, server: HttpServer, state: State
    ) -> None:
        """A status reader that raises leaves the page up (200) with a note naming it."""
        state.fail_status = True
        code, _ctype, body = fetch(server, "/")
        assert code == 200 and "cannot read the status: boom" in body

    def test_unknown_path_is_404(self, server: HttpServer) -> None:
        """Anything else is a 404 naming the path."""
        code, _ctype, body = fetch(server, "/debug/pprof")
        assert code == 404 and "/debug/pprof" in body

    def test_a_failing_page_is_500_and_the_server_lives(
        self, server: HttpServer, state: State
    ) -> None:
        """An exception while building a page answers 500; the next request is served."""
        state.fail_status = True
        code, _ctype, body = fetch(server, "/status")
        assert code == 500 and "boom" in body
        state.fail_status = False
        assert fetch(server, "/status")[0] == 200


class TestAddress:
    """http.address parsing and binding errors."""

    def test_forms(self) -> None:
        """host:port, [v6]:port and :port (all interfaces) parse."""
        assert parse_address("127.0.0.1:8500") == ("127.0.0.1", 8500)
        assert parse_address("[::1]:8500") == ("::1", 8500)
        assert parse_address(":8500") == ("", 8500)

    def test_bad_address_names_the_key(self) -> None:
        """A missing or bad port is a config error naming http.address."""
        with pytest.raises(ConfigError, match=r"^http\.address"):
            parse_address("localhost")

    def test_port_in_use_is_a_runtime_error(self, server: HttpServer) -> None:
        """Binding a port that is taken fails with one line naming the address; it is an
        HttpError (the config is fine, the port is busy), not a ConfigError."""
        host, port = server.address
        with pytest.raises(HttpError, match=r"http\.address: cannot listen on") as info:
            HttpServer(f"{host}:{port}", Metrics().registry, State().health, State().status)
        assert not isinstance(info.value, ConfigError)
