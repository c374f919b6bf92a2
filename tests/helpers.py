"""Shared test helpers: free ports, waiting, real servers and evsync subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WRITER = REPO / "tests" / "fixtures" / "writer.py"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM a process, SIGKILL it if it lingers."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def require_tool(name: str) -> str:
    """Path of an executable; a missing tool fails under CI and skips (loudly) elsewhere."""
    candidates = [Path(sys.executable).parent / name]
    found = next((str(c) for c in candidates if c.exists()), None) or shutil.which(name)
    if found:
        return found
    message = f"{name} not found; `make test` installs it"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError("unreachable")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


EXTERNAL_ENDPOINT_VAR = "EVSYNC_TEST_AWS_ENDPOINT"
STOP_TIMEOUT = 20  # seconds a daemon has to stop after SIGTERM
ABORT_TIMEOUT = 10  # then SIGABRT, for the stacks of its threads


class AwsServer:
    """An S3/SQS/SNS endpoint the tests talk to over HTTP."""

    endpoint: str

    def client(self) -> Any:
        return self.boto("s3")

    def boto(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")


class ExternalAws(AwsServer):
    """A server someone else started (LocalStack on the host)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint


class MotoServer(AwsServer):
    """moto's S3 server as a subprocess on a free loopback port."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_tool("moto_server")
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        self.proc = subprocess.Popen(
            [self.binary, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, timeout=20, what="moto server to answer")
        return self

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

class Writer:
    """The application: a separate process writing the LMDB through py-lmdb."""

    def __init__(self, path: Path, *, writemap: bool = False) -> None:
        path.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, str(WRITER), str(path)] + (["--writemap"] if writemap else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=REPO, text=True)

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("writer process died")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def put(self, key: str, value: str, *, dbi: str = "records", ts: int | None = None) -> int:
        return int(self.call(op="put", dbi=dbi, key=key, value=value, ts=ts)["ts"])

    def delete(self, key: str, *, dbi: str = "records", ts: int | None = None) -> int:
        return int(self.call(op="delete", dbi=dbi, key=key, ts=ts)["ts"])

    def get(self, key: str, *, dbi: str = "records") -> str | None:
        """The live value, ``"<deleted>"`` for a tombstone, None when missing."""
        reply = self.call(op="get", dbi=dbi, key=key)
        if not reply["found"]:
            return None
        return "<deleted>" if reply["deleted"] else str(reply["value"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Instance:
    """One `evsync sync` process with its own LMDB, config and log file."""

    def __init__(self, name: str, root: Path, storage: dict[str, Any], **overrides: Any) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lmdb_path = self.dir / "lmdb"
        self.lmdb_path.mkdir(exist_ok=True)
        self.config_path = self.dir / "evsync.yaml"
        self.log_path = self.dir / "evsync.log"
        config: dict[str, Any] = {
            "instance": name,
            "lmdbs": {"main": {"path": str(self.lmdb_path), "schema_tracks_changes": True,
                               "options": {"create": True, "map_size": "64MB"}}},
            "storage": storage,
            "lmdb_poll_interval": "1s",
            "storage_retry_interval": "200ms",
            "storage_retry_count": 3,
            "notify": {"listing_interval": "200ms"},
            "log": {"level": "debug"},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self._writer: Writer | None = None

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            self._writer = Writer(self.lmdb_path)
        return self._writer

    def command(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run one evsync command to completion against this instance's config."""
        return subprocess.run(
            [sys.executable, "-m", "evsync", "-c", str(self.config_path), *args],
            cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
        )

    def start(self, *args: str, wait: bool = True) -> Instance:
        """Start `evsync sync`; ``wait``: until its startup listing (or its death)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evsync", "-c", str(self.config_path), "sync", *args],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        if not wait:
            return self
        wait_for(lambda: b"startup listing" in self.log_path.read_bytes() or self._died(),
                 timeout=30, what=f"{self.name} to start")
        assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()}"
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Send ``sig`` (SIGTERM) and wait; returns the exit code."""
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # SIGABRT: the daemon's faulthandler prints its threads' stacks to its log
            self.proc.send_signal(signal.SIGABRT)
            try:
                code = self.proc.wait(timeout=ABORT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
            print(f"{self.name} did not stop in {STOP_TIMEOUT}s; its log:\n{self.log()[-8000:]}")
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        self.stop()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Mosquitto:
    """A Mosquitto broker on a free loopback port, with persistence in a temp dir."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = _find_mosquitto()
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            "log_dest stdout",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto' and cannot write the dir
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        log = (self.dir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_for(self._listening, timeout=10, what="mosquitto to listen")
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish one QoS 1 message and wait for the broker's ack."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        try:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
        finally:
            client.disconnect()
            client.loop_stop()


    def retained(self, topic: str, timeout: float = 5.0) -> bytes | None:
        """The retained message on ``topic`` (None when none arrives in ``timeout``)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        got: list[bytes] = []
        arrived = threading.Event()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            got.append(bytes(msg.payload))
            arrived.set()

        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.on_message = on_message
        client.connect("127.0.0.1", self.port)
        client.subscribe(topic, qos=1)
        client.loop_start()
        try:
            arrived.wait(timeout)
        finally:
            client.disconnect()
            client.loop_stop()
        return got[0] if got else None


def _find_mosquitto() -> str:
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if Path(candidate).exists():
            return candidate
    return require_tool("mosquitto")


PDNS_CONF = """\
launch=lmdb
lmdb-filename={lmdb}
lmdb-shards=1
lmdb-random-ids=yes
lmdb-map-size=256
local-address=127.0.0.1
local-port={port}
daemon=no
guardian=no
write-pid=no
socket-dir={dir}
disable-syslog=yes
security-poll-suffix=
cache-ttl=0
query-cache-ttl=0
negquery-cache-ttl=0
zone-cache-refresh-interval=0
"""


class PowerDns:
    """A real PowerDNS Authoritative (Debian's pdns-server + pdns-backend-lmdb) on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.server = require_tool("pdns_server")
        self.pdnsutil = require_tool("pdnsutil")
        self.dig = require_tool("dig")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lmdb = self.dir / "pdns.lmdb"
        self.port = free_port()
        (self.dir / "pdns.conf").write_text(
            PDNS_CONF.format(lmdb=self.lmdb, port=self.port, dir=self.dir))
        self.log_path = self.dir / "pdns.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PowerDns:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([self.server, f"--config-dir={self.dir}"],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.status("version.test") is not None, timeout=20,
                 what=f"pdns_server on port {self.port}")
        return self

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    def util(self, *args: str) -> str:
        """Run pdnsutil against this server's LMDB; fails the test when it fails."""
        done = subprocess.run([self.pdnsutil, f"--config-dir={self.dir}", *args],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, f"pdnsutil {' '.join(args)}: {done.stderr}{done.stdout}"
        return done.stdout

    def _dig(self, *args: str) -> str | None:
        done = subprocess.run([self.dig, "@127.0.0.1", "-p", str(self.port), "+time=1",
                               "+tries=1", *args], capture_output=True, text=True, timeout=10,
                              check=False)
        return done.stdout if done.returncode == 0 else None

    def answer(self, name: str, rtype: str = "A") -> list[str]:
        """The sorted answers to a query (empty for NXDOMAIN, REFUSED or no answer)."""
        out = self._dig(name, rtype, "+short")
        return sorted(line for line in (out or "").splitlines() if line)

    def status(self, name: str, rtype: str = "A") -> str | None:
        """The response status (NOERROR, NXDOMAIN, REFUSED...), None if the server is silent."""
        out = self._dig(name, rtype)
        if out is None:
            return None
        for line in out.splitlines():
            if "status:" in line:
                return line.split("status:")[1].split(",")[0].strip()
        return None
