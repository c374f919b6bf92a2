"""The status page of a real `evsync sync`, rendered by a real headless Chromium.

Two instances share a directory bucket; the page of one must show the other as a peer
with its newest object, age and lag, and the health checks. Chromium (Debian's
``chromium``) dumps the DOM it rendered and takes a screenshot, whose path the test
prints so it is in the test output.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Instance, free_port, require_tool, wait_for

pytestmark = pytest.mark.integration

# Chromium's first start on a fresh profile takes a few seconds on 2 shared cores.
CHROMIUM_TIMEOUT_SECONDS = 90
WINDOW = "1200,900"
NARROW_WINDOW = "390,844"  # a phone held upright
# As this machine runs it headless as root: no sandbox, no GPU, and nothing that would
# try the network (it has none but loopback).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class Rows(HTMLParser):
    """The text of each ``<tr data-<kind>=key>`` row of a DOM dump, by (kind, key)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], str] = {}
        self._open: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "tr":
            return
        for name, value in attrs:
            if name.startswith("data-") and value is not None:
                self._open = (name[5:], value)
                self.rows[self._open] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.rows[self._open] += data + "|"


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium once with a fresh profile directory."""
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_SECONDS, check=False,
    )


def status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        result: dict[str, Any] = json.load(resp)
        return result


class TestStatusPageInChromium:
    """A browser shows what the daemon knows."""

    def test_the_page_shows_the_peer_its_lag_and_the_health_checks(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With b's object merged on a, a's page rendered by Chromium holds a row for
        peer b with its newest object, its age and the lag, a row per health check and
        the db; the screenshots (desktop and phone width) are written and their paths
        printed."""
        browser = require_tool("chromium")
        storage = {"type": "fs", "options": {"root_path": str(tmp_path / "bucket")}}
        port = free_port()
        a = Instance("a", tmp_path, storage, http={"address": f"127.0.0.1:{port}"})
        b = Instance("b", tmp_path, storage)
        try:
            a.start()
            b.start()
            b.writer.put("k1", "v1")
            wait_for(lambda: a.writer.get("k1") == "v1", what="k1 on a")
            wait_for(
                lambda: status(port)["dbs"]["main"]["instances"].get("b", {}).get("lag_seconds")
                is not None,
                what="a's status to show b's object merged with its lag",
            )
            newest = status(port)["dbs"]["main"]["instances"]["b"]["newest_seen"]
            url = f"http://127.0.0.1:{port}/"

            dom = chromium(browser, tmp_path / "profile-dom", "--dump-dom", url)
            assert dom.returncode == 0, dom.stderr
            rows = Rows()
            rows.feed(dom.stdout)
            peer = rows.rows.get(("peer", "b"))
            assert peer is not None, dom.stdout
            assert newest in peer
            _who, _newest, age, _merged, merged_age, lag = peer.rstrip("|").split("|")
            for shown in (age, merged_age, lag):
                assert shown.endswith("s") and shown != "-", peer
            checks = {key for kind, key in rows.rows if kind == "check"}
            assert {"main_storage_list", "main_storage_load", "main_storage_store"} <= checks
            assert "ok" in rows.rows[("check", "main_storage_list")]
            assert ("db", "main") in rows.rows

            shots = []
            for label, window in (("desktop", WINDOW), ("phone", NARROW_WINDOW)):
                shot = tmp_path / f"status-page-{label}.png"
                done = chromium(browser, tmp_path / f"profile-{label}",
                                f"--screenshot={shot}", f"--window-size={window}", url)
                assert done.returncode == 0, done.stderr
                assert shot.stat().st_size > 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                shots.append(shot)
            with capsys.disabled():
                for shot in shots:
                    print(f"\nstatus page screenshot: {shot}")
        finally:
            b.close()
            a.close()
