"""The operator's HTTP endpoints (DESIGN §10): /metrics, /healthz, /status and the page at /.

A small stdlib server on its own threads: it only reads state the syncers publish,
so a slow scraper can never stall a sync. There is no pprof or bucket listing
here on purpose (LS exposes both); bind it to loopback or a private network.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from evsync.errors import ConfigError, HttpError
from evsync.statuspage import HTML_TYPE, read_or_error, render_page

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
HealthReader = Callable[[], tuple[bool, dict[str, Any]]]
StatusReader = Callable[[], dict[str, Any]]


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as a bind address; an empty host means all interfaces."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"http.address: expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
            elif path == "/healthz":
                healthy, body = self.server.read_health()
                self._send_json(200 if healthy else 503, body)
            elif path == "/status":
                self._send_json(200, self.server.read_status())
            elif path == "/":
                self._send(200, HTML_TYPE, self._page().encode())
            else:
                self._send_json(404, {"error": f"no such endpoint: {path}"})
        except Exception as exc:  # a broken page must not take the server down
            log.error("http: %s failed: %s", path, exc)
            log.debug("http failure", exc_info=True)
            self._send_json(500, {"error": str(exc)})

    def _page(self) -> str:
        """The status page; a reader that raises leaves a note, not a 500."""
        status = read_or_error("the status", self.server.read_status)
        health = read_or_error("the health checks", lambda: self.server.read_health()[1])
        return render_page(status, health)

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body, indent=2, sort_keys=True, default=str).encode()
        self._send(code, JSON_TYPE, data + b"\n")

    def _send(self, code: int, content_type: str, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        read_health: HealthReader,
        read_status: StatusReader,
    ) -> None:
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.registry = registry
        self.read_health = read_health
        self.read_status = read_status


class HttpServer:
    """Serves the endpoints on a background thread until :meth:`stop`."""

    def __init__(
        self,
        address: str,
        registry: CollectorRegistry,
        read_health: HealthReader,
        read_status: StatusReader,
    ) -> None:
        host, port = parse_address(address)
        try:
            self._server = _Server((host, port), registry, read_health, read_status)
        except OSError as exc:
            err = HttpError(f"http.address: cannot listen on {address}: {exc.strerror}")
            err.errno = exc.errno
            raise err from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when 0 was asked for)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()
        host, port = self.address
        log.info("http: serving /, /metrics, /healthz and /status on %s:%d", host, port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
