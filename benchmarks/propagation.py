"""Propagation latency: from a commit on instance A until the record is readable on B.

What is measured
----------------
Two evsync daemons, ``a`` and ``b``, run as real subprocesses
(``python -m evsync -c CFG sync``), each on its own LMDB, sharing one bucket. The
benchmark process itself plays the application: it writes one native-header record
per write transaction into A's LMDB through py-lmdb, takes ``t_commit``
(``time.perf_counter()`` right after ``commit()`` returns), then polls B's LMDB from
a read-only environment every 0.2 ms until the new value is visible (``t_seen``).
The latency of one write is ``t_seen - t_commit``: local change detection on A, the
dump and upload of a full object, remote discovery on B, fetch, verify and merge.
After a write became visible the benchmark pauses 50 ms plus a seeded uniform
random 0-1 s before the next one, so that no two writes are in flight at once and
each commit lands at a random phase of the 1 s pollers, as an application's commits
do. (With a fixed 50-100 ms pause the loop phase-locks to the poller: every write
would come right after a tick and wait almost a full period, about 920 ms instead
of the ~500 ms an application sees on average.)

Why
---
evsync's reason to exist is reacting to events instead of polling the LMDB and
LISTing the bucket once a second like Lightning Stream. The rows compare, in one
run and with the same build:

* ``watcher``: the default, ``notify.watch_lmdb: true`` (inotify on A's data file),
  with ``lmdb_poll_interval: 1s`` as the fallback;
* ``poll-only``: ``notify.watch_lmdb: false``; only the 1 s txn-id poll notices commits;

on two backends:

* ``fs``: a directory is the bucket; B watches it with inotify (push discovery);
* ``s3``: moto server on 127.0.0.1, started here. Without MQTT or SQS nothing pushes,
  so B discovers objects by LIST every ``notify.listing_interval`` (set explicitly:
  1 s, the design's default without push sources, plus a 100 ms row).

and, with the watcher on s3, two push sources, each with ``listing_interval: 1h`` so
that only the events can explain the latency (``watcher-s3-list1s`` is their
listing-only baseline):

* ``mqtt``: both daemons use ``notify.mqtt`` with ``publish: true`` (a topic of their
  own per row) against a Mosquitto started here on 127.0.0.1 without persistence:
  after every upload A publishes a retained announcement and B, subscribed to
  ``<topic>/#``, fetches the object it names;
* ``sqs``: one moto SQS queue per instance, the bucket configured to send
  ``s3:ObjectCreated:*`` events to both (``QueueConfigurations``), and each daemon
  long-polling its own queue through ``notify.sqs``.

and, on the mqtt row's set-up, what the latest changes buy (issue 18), each row
differing from ``watcher-s3-mqtt-list1h`` in one thing:

* ``...-get``: ``notify.mqtt.inline_max_bytes: 0``, so B fetches every delta by GET
  after A's announcement, instead of merging it from the inline companion that A
  publishes before its PUT;
* ``...-scan``: both daemons run with ``EVSYNC_BENCH_FORCE_SCAN=1`` (a switch for
  benchmarks only, evsync/lmdb/pagewalk.py), so A finds each delta's changes by
  reading every value header instead of the page-level change finder.

``watcher-s3-mqtt-list1h-nofull`` is that mqtt row with one delta chain and no periodic
full object at all (chain bounds no run reaches): the floor that the row with its
periodic full objects (checkpoints, DESIGN §7, in an LMDB of 1000 entries or more) is
compared to, in the same run.

The database holds ``--records`` entries (10,000 by default; a comma-separated list
runs every row at each size, in one run), written into A and synced to B before
measuring: a full object's size, and so its dump and merge time, scales with it.

Run: ``make bench`` or ``.venv/bin/python benchmarks/propagation.py [--quick]``.
The ``evsync`` package is copied once at start and every daemon runs that copy, so
all rows run the same build even while the working tree is being edited; its source
hash is printed. Everything binds 127.0.0.1, and every process and temp dir is
removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import lmdb

from evsync.lmdb.header import encode_value, parse_header

REPO = Path(__file__).resolve().parents[1]
# a git worktree has no .venv of its own: then the tools beside the running interpreter
VENV_BIN = REPO / ".venv" / "bin" if (REPO / ".venv").is_dir() else Path(sys.executable).parent
DB_NAME = "main"
DBI = b"records"
MAP_SIZE = 1 << 30
MAX_DBS = 64
POLL_SLEEP = 0.0002  # how often the benchmark looks at B's LMDB while waiting
MIN_GAP = 0.050  # pause after a write became visible, before the next one ...
PHASE_JITTER = 1.0  # ... plus uniform(0, this): the longest poll period in any row
# for the initial sync of the preloaded records to B: at least this, plus this per record
STARTUP_TIMEOUT = 60.0
STARTUP_SECONDS_PER_RECORD = 1e-4
SETTLE_SECONDS = 1.5  # quiet time after the initial sync, before measuring
STOP_TIMEOUT = 10.0
S3_KEYS = {"access_key": "test", "secret_key": "test"}
REGION = "us-east-1"
INSTANCES = ("a", "b")
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
SEED = 20240601
DEFAULT_WRITES, DEFAULT_RECORDS = 200, 10_000
QUICK_WRITES, QUICK_RECORDS = 30, 1000


# ------------------------------------------------------------------ scenarios and results


@dataclass(frozen=True)
class Scenario:
    """One row of the table: how A detects commits and how B discovers objects."""

    mode: str  # "watcher" or "poll-only"
    backend: str  # "fs" or "s3"
    listing_interval: str  # notify.listing_interval, always set explicitly
    push: str = ""  # "", "mqtt" or "sqs": the push source both daemons use (s3 only)
    lmdb_poll_interval: str = "1s"
    deltas: bool = True  # False: every change uploads a full object, as Lightning Stream
    inline: bool = True  # False: notify.mqtt.inline_max_bytes 0 (deltas come by GET)
    finder: bool = True  # False: $EVSYNC_BENCH_FORCE_SCAN=1 (deltas scan every header)
    #: False: one delta chain from the first full object on, no periodic full object or
    #: checkpoint (the floor a row with them is compared to)
    fulls: bool = True

    @property
    def watch_lmdb(self) -> bool:
        """notify.watch_lmdb for this mode."""
        return self.mode == "watcher"

    @property
    def label(self) -> str:
        """Short name for logs and file names."""
        push = f"-{self.push}" if self.push else ""
        full = "" if self.deltas else "-full"
        get = "" if self.inline or self.push != "mqtt" else "-get"
        scan = "" if self.finder else "-scan"
        nofull = "" if self.fulls else "-nofull"
        return (
            f"{self.mode}-{self.backend}{push}-list{self.listing_interval}{full}{nofull}{get}{scan}"
        )


SCENARIOS = (
    Scenario("watcher", "fs", "1s"),
    Scenario("poll-only", "fs", "1s"),
    Scenario("watcher", "s3", "1s"),
    Scenario("poll-only", "s3", "1s"),
    Scenario("watcher", "s3", "100ms"),
    Scenario("watcher", "s3", "1h", push="mqtt"),
    Scenario("watcher", "s3", "1h", push="sqs"),
    Scenario("watcher", "s3", "1h", push="mqtt", deltas=False),
    Scenario("watcher", "s3", "1h", push="mqtt", inline=False),
    Scenario("watcher", "s3", "1h", push="mqtt", finder=False),
    Scenario("watcher", "s3", "1h", push="mqtt", fulls=False),
)
# deltas settings of a row without periodic full objects: bounds no run reaches
NO_FULLS_DELTAS = "max_chain: 1000000000, max_chain_ratio: 1000000000, full_interval: 100000h"


@dataclass(frozen=True)
class Options:
    """Command-line settings that every scenario shares."""

    writes: int
    records: int  # of the row being run: one of ``sizes``
    sizes: tuple[int, ...]
    timeout: float
    phase_jitter: float
    python: str
    build_dir: Path
    log_level: str
    keep_dir: Path | None
    samples: Path | None


@dataclass
class Result:
    """Latencies of one scenario, in milliseconds, plus the writes that never arrived."""

    scenario: Scenario
    records: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    #: highest 1-minute load average seen around the row (other work on the machine)
    load: float = 0.0
    #: sizes of A's objects in the bucket after the row (s3 rows): full objects, deltas
    full_sizes: list[int] = field(default_factory=list)
    delta_sizes: list[int] = field(default_factory=list)

    def pct(self, q: float) -> float:
        """The q-quantile (0..1), linear interpolation between closest ranks."""
        return percentile(self.latencies_ms, q)


def percentile(values: list[float], q: float) -> float:
    """Quantile with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# ------------------------------------------------------------------ machine description


def machine_info(source_hash: str) -> list[tuple[str, str]]:
    """CPU, cores, kernel, Python and library versions, and the evsync build."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [
        ("cpu", cpu),
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("py-lmdb", f"{lmdb.__version__} (liblmdb {'.'.join(map(str, lmdb.version()))})"),
        ("evsync", f"{evsync_build()}, source sha256 {source_hash}"),
        ("servers", server_versions()),
    ]


def server_versions() -> str:
    """Versions of moto, boto3 and paho-mqtt, and of the mosquitto binary if installed."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for package in ("moto", "boto3", "paho-mqtt"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} missing")
    try:
        out = subprocess.run(
            [mosquitto_binary(), "-h"], capture_output=True, text=True, check=False
        ).stdout
        parts.append(out.splitlines()[0] if out else "mosquitto ?")
    except (OSError, RuntimeError):
        parts.append("mosquitto missing")
    return ", ".join(parts)


def evsync_build() -> str:
    """evsync's version and the git commit of the working tree (``+dirty`` if modified)."""
    from evsync import __version__

    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "evsync"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return __version__
    return f"{__version__} (git {rev}{'+dirty' if dirty else ''})"


def snapshot_build(dest: Path) -> str:
    """Copy ``evsync/`` as it is now into ``dest``; returns a hash of its sources."""
    shutil.copytree(
        REPO / "evsync", dest / "evsync", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    digest = hashlib.sha256()
    for path in sorted((dest / "evsync").rglob("*.py")):
        digest.update(path.relative_to(dest).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


# ------------------------------------------------------------------ processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class MotoServer:
    """moto_server on 127.0.0.1 and a free port, for the s3 rows."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log: TextIO = open(log_path, "w", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server answers HTTP."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.endpoint, timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is up
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("moto_server did not answer in time")

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` on this server (close it when done)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=S3_KEYS["access_key"],
            aws_secret_access_key=S3_KEYS["secret_key"],
        )

    def create_bucket(self, bucket: str) -> None:
        """Create an empty bucket for one scenario."""
        client = self.client("s3")
        client.create_bucket(Bucket=bucket)
        client.close()

    def create_queue(self, name: str) -> tuple[str, str]:
        """Create an SQS queue; returns its URL and ARN."""
        client = self.client("sqs")
        url: str = client.create_queue(QueueName=name)["QueueUrl"]
        attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        client.close()
        return url, attrs["Attributes"]["QueueArn"]

    def notify_queues(self, bucket: str, queue_arns: list[str]) -> None:
        """Have moto's S3 send every ``s3:ObjectCreated:*`` event of ``bucket`` to each queue."""
        client = self.client("s3")
        client.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]} for arn in queue_arns
                ]
            },
        )
        client.close()

    def stop(self) -> None:
        """Terminate the server."""
        stop_process(self.proc)
        self._log.close()


class Mosquitto:
    """Debian's mosquitto on 127.0.0.1 and a free port, without persistence, for mqtt rows."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it switches to the 'mosquitto' user
        conf = workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._log: TextIO = open(workdir / "mosquitto.log", "w", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the broker accepts TCP connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen in time")

    def stop(self) -> None:
        """Terminate the broker."""
        stop_process(self.proc)
        self._log.close()


def mosquitto_binary() -> str:
    """Path of the mosquitto broker (Debian installs it in /usr/sbin, often not on PATH)."""
    for candidate in MOSQUITTO_PATHS:
        if Path(candidate).exists():
            return candidate
    found = shutil.which("mosquitto")
    if found is None:
        raise RuntimeError("mosquitto not found (apt-get install mosquitto)")
    return found


@dataclass
class Services:
    """The servers that rows share, started once for the whole run when a row needs them."""

    moto: MotoServer | None = None
    mosquitto: Mosquitto | None = None

    def start(self, scenarios: list[Scenario], workdir: Path) -> None:
        """Start moto if any row uses s3 and Mosquitto if any row uses mqtt."""
        if any(s.backend == "s3" for s in scenarios):
            self.moto = MotoServer(workdir / "moto.log")
            self.moto.wait_ready()
        if any(s.push == "mqtt" for s in scenarios):
            self.mosquitto = Mosquitto(workdir)
            self.mosquitto.wait_ready()

    def stop(self) -> None:
        """Stop whatever was started; each one even if stopping another failed."""
        try:
            if self.mosquitto is not None:
                self.mosquitto.stop()
        finally:
            if self.moto is not None:
                self.moto.stop()


@dataclass
class Daemon:
    """One ``evsync sync`` subprocess and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        """Raise with the log's tail if the daemon died."""
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"evsync {self.name} exited ({self.proc.returncode}):\n{tail}")


def start_daemon(
    name: str, config: Path, log_path: Path, opts: Options, scenario: Scenario
) -> Daemon:
    """Start ``python -m evsync -c CONFIG sync`` from the build copy, logging to ``log_path``."""
    env = dict(os.environ)
    if not scenario.finder:
        env["EVSYNC_BENCH_FORCE_SCAN"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(opts.build_dir), env.get("PYTHONPATH", "")) if p
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [opts.python, "-m", "evsync", "-c", str(config), "sync"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
            env=env,
        )
    return Daemon(name, proc, log_path)


# ------------------------------------------------------------------ configs


def storage_section(scenario: Scenario, root: Path, endpoint: str | None, bucket: str) -> str:
    """The YAML ``storage`` section for the scenario's backend."""
    if scenario.backend == "fs":
        return f"storage:\n  type: fs\n  options:\n    root_path: {json.dumps(str(root))}\n"
    return (
        "storage:\n  type: s3\n  options:\n"
        f"    bucket: {bucket}\n    endpoint_url: {endpoint}\n    region: {REGION}\n"
        f"    access_key: {S3_KEYS['access_key']}\n    secret_key: {S3_KEYS['secret_key']}\n"
    )


def push_sections(
    scenario: Scenario, index: int, services: Services, bucket: str
) -> dict[str, str]:
    """Each instance's push source: YAML lines under ``notify`` (empty without one).

    For sqs this creates the row's queues and points the bucket's notifications at
    them, so it must run before the daemons start.
    """
    if scenario.push == "mqtt":
        assert services.mosquitto is not None
        return mqtt_sections(services.mosquitto.url, f"evsync-bench-{index}", scenario.inline)
    if scenario.push == "sqs":
        assert services.moto is not None
        return sqs_sections(services.moto, bucket, f"evsync-bench-{index}")
    return dict.fromkeys(INSTANCES, "")


def mqtt_sections(url: str, topic: str, inline: bool) -> dict[str, str]:
    """Both instances announce on, and subscribe to, ``topic`` on the broker at ``url``;
    small deltas travel inline unless ``inline`` is False."""
    settings: dict[str, Any] = {"url": url, "topic": topic, "publish": True}
    if not inline:
        settings["inline_max_bytes"] = 0
    mqtt = json.dumps(settings)
    return {name: f"  mqtt: {mqtt}\n" for name in INSTANCES}


def sqs_sections(moto: MotoServer, bucket: str, queue_prefix: str) -> dict[str, str]:
    """One queue per instance, each sent every object-created event of ``bucket``."""
    queues = {name: moto.create_queue(f"{queue_prefix}-{name}") for name in INSTANCES}
    moto.notify_queues(bucket, [arn for _url, arn in queues.values()])
    sections = {}
    for name, (url, _arn) in queues.items():
        sqs = json.dumps({"queue_url": url, "endpoint_url": moto.endpoint, "region": REGION})
        sections[name] = f"  sqs: {sqs}\n"
    return sections


def write_config(
    path: Path,
    instance: str,
    lmdb_path: Path,
    scenario: Scenario,
    sections: tuple[str, str, str],
) -> Path:
    """Write one instance's YAML config (JSON strings are valid YAML scalars).

    ``sections`` holds the storage section, the push lines under ``notify`` and the
    log setting.
    """
    storage, push, log = sections
    path.write_text(
        f"instance: {instance}\n"
        "lmdbs:\n"
        f"  {DB_NAME}:\n"
        f"    path: {json.dumps(str(lmdb_path))}\n"
        "    schema_tracks_changes: true\n"
        "    options: {create: true, map_size: 1GB}\n"
        f"lmdb_poll_interval: {scenario.lmdb_poll_interval}\n"
        f"deltas: {{enabled: {'true' if scenario.deltas else 'false'}"
        f"{'' if scenario.fulls else ', ' + NO_FULLS_DELTAS}}}\n"
        f"{storage}"
        "notify:\n"
        f"  watch_lmdb: {'true' if scenario.watch_lmdb else 'false'}\n"
        f"  listing_interval: {scenario.listing_interval}\n"
        f"{push}"
        f"log: {log}\n",
        encoding="utf-8",
    )
    return path


# ------------------------------------------------------------------ LMDB access


def record_key(index: int) -> bytes:
    """Key of preloaded record ``index``."""
    return f"rec{index:08d}".encode()


def open_writer(path: Path) -> lmdb.Environment:
    """A's LMDB, opened as an application would (see evsync.tools.lmdb_write)."""
    path.mkdir(parents=True, exist_ok=True)
    return lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=MAX_DBS)


def preload(env: lmdb.Environment, count: int) -> None:
    """Write ``count`` native-header records in one transaction."""
    db = env.open_db(DBI)
    now = time.time_ns()
    with env.begin(write=True) as txn:
        txn_id = txn.id()
        for i in range(count):
            txn.put(record_key(i), encode_value(now, txn_id, 0, f"value-{i}".encode()), db=db)


def write_one(env: lmdb.Environment, db: Any, key: bytes, value: bytes) -> float:
    """Commit one record; returns perf_counter() taken right after the commit returned."""
    with env.begin(write=True, db=db) as txn:
        txn.put(key, encode_value(time.time_ns(), txn.id(), 0, value))
    return time.perf_counter()


class Reader:
    """B's LMDB, opened read-only once, tolerant of the map growing under it."""

    def __init__(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (path / "data.mdb").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} was never created")
            time.sleep(0.05)
        self.env = lmdb.open(
            str(path), readonly=True, lock=True, max_dbs=MAX_DBS, map_size=MAP_SIZE
        )
        self.db: Any = None

    def _begin(self) -> Any:
        try:
            return self.env.begin()
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.env.begin()

    def open_dbi(self) -> bool:
        """Open the records DBI once it exists; False while it does not."""
        if self.db is None:
            with self._begin() as txn:
                if txn.get(DBI) is None:
                    return False
            self.db = self.env.open_db(DBI, create=False)
        return True

    def count(self) -> int:
        """Entries in the records DBI (0 before it exists)."""
        if not self.open_dbi():
            return 0
        with self._begin() as txn:
            return int(txn.stat(self.db)["entries"])

    def value(self, key: bytes) -> bytes | None:
        """The application value of ``key`` (header stripped), or None."""
        with self._begin() as txn:
            raw = txn.get(key, db=self.db)
            if raw is None:
                return None
            return bytes(raw[parse_header(raw).offset :])

    def wait_for(self, key: bytes, expected: bytes, deadline: float) -> float | None:
        """Poll until ``key`` holds ``expected``; perf_counter() when seen, None on timeout."""
        while True:
            if self.value(key) == expected:
                return time.perf_counter()
            if time.perf_counter() > deadline:
                return None
            time.sleep(POLL_SLEEP)

    def close(self) -> None:
        """Close the environment."""
        self.env.close()


def wait_initial_sync(reader: Reader, count: int, daemons: list[Daemon]) -> float:
    """Wait until B holds every preloaded record; returns the seconds it took."""
    t0 = time.monotonic()
    while reader.count() < count:
        if time.monotonic() - t0 > STARTUP_TIMEOUT + count * STARTUP_SECONDS_PER_RECORD:
            raise RuntimeError(f"B holds {reader.count()} of {count} records after startup")
        for daemon in daemons:
            daemon.check_alive()
        time.sleep(0.05)
    return time.monotonic() - t0


# ------------------------------------------------------------------ one scenario


def measure(
    writer: lmdb.Environment, reader: Reader, result: Result, opts: Options, samples: Any
) -> None:
    """The measured loop: one write at a time, wait until B sees it, pause."""
    db = writer.open_db(DBI)
    rng = random.Random(SEED)
    for i in range(opts.writes):
        key = record_key((i * 7919) % opts.records)
        value = f"bench-{result.scenario.label}-{i}".encode()
        wall = time.time()
        t_commit = write_one(writer, db, key, value)
        t_seen = reader.wait_for(key, value, t_commit + opts.timeout)
        latency = None if t_seen is None else (t_seen - t_commit) * 1000
        if latency is None:
            result.timeouts += 1
        else:
            result.latencies_ms.append(latency)
        if samples is not None:
            samples.writerow([result.scenario.label, i, f"{wall:.6f}", latency])
        time.sleep(MIN_GAP + rng.uniform(0.0, opts.phase_jitter))


def run_scenario(
    scenario: Scenario, opts: Options, services: Services, index: int, samples: Any
) -> Result:
    """Set up A and B for one scenario, preload, measure, tear everything down."""
    workdir = Path(tempfile.mkdtemp(prefix=f"evsync-bench-{scenario.label}-"))
    bucket = f"evsync-bench-{index}"
    daemons: list[Daemon] = []
    writer: lmdb.Environment | None = None
    reader: Reader | None = None
    result = Result(scenario, opts.records)
    try:
        endpoint = None
        if scenario.backend == "s3":
            assert services.moto is not None
            services.moto.create_bucket(bucket)
            endpoint = services.moto.endpoint
        storage = storage_section(scenario, workdir / "bucket", endpoint, bucket)
        push = push_sections(scenario, index, services, bucket)
        log = json.dumps({"level": opts.log_level, "format": "json"})
        writer = open_writer(workdir / "a")
        preload(writer, opts.records)
        for name in INSTANCES:
            sections = (storage, push[name], log)
            cfg = write_config(workdir / f"{name}.yaml", name, workdir / name, scenario, sections)
            daemons.append(start_daemon(name, cfg, workdir / f"{name}.log", opts, scenario))
        reader = Reader(workdir / "b", STARTUP_TIMEOUT)
        took = wait_initial_sync(reader, opts.records, daemons)
        print(f"  {scenario.label}: {opts.records} records on B after {took:.1f}s", flush=True)
        time.sleep(SETTLE_SECONDS)
        load_before = os.getloadavg()[0]
        measure(writer, reader, result, opts, samples)
        result.load = max(load_before, os.getloadavg()[0])
        if services.moto is not None and scenario.backend == "s3":
            result.full_sizes, result.delta_sizes = object_sizes(services.moto, bucket, "a")
        for daemon in daemons:
            daemon.check_alive()
    finally:
        teardown(daemons, writer, reader)
        keep_or_remove(workdir, scenario, opts.keep_dir)
    return result


def object_sizes(moto: MotoServer, bucket: str, instance: str) -> tuple[list[int], list[int]]:
    """Sizes of ``instance``'s full objects and deltas in the bucket."""
    client = moto.client("s3")
    full: list[int] = []
    deltas: list[int] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            for obj in page.get("Contents", []):
                if f"__{instance}__" in obj["Key"]:
                    (deltas if "__D" in obj["Key"] else full).append(int(obj["Size"]))
    finally:
        client.close()
    return full, deltas


def teardown(daemons: list[Daemon], writer: lmdb.Environment | None, reader: Reader | None) -> None:
    """Stop the daemons and close the LMDBs, whatever state they are in."""
    for daemon in daemons:
        stop_process(daemon.proc)
    if reader is not None:
        reader.close()
    if writer is not None:
        writer.close()


def keep_or_remove(workdir: Path, scenario: Scenario, keep_dir: Path | None) -> None:
    """Copy the daemons' logs and configs to ``keep_dir`` (if set), then delete the temp dir."""
    if keep_dir is not None:
        target = keep_dir / scenario.label
        target.mkdir(parents=True, exist_ok=True)
        for path in workdir.glob("*.log"):
            shutil.copy(path, target / path.name)
        for path in workdir.glob("*.yaml"):
            shutil.copy(path, target / path.name)
    shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ reporting


def print_machine(source_hash: str) -> None:
    """The machine the figures were taken on."""
    for key, value in machine_info(source_hash):
        print(f"{key:8} {value}")
    print()


def print_table(results: list[Result]) -> None:
    """The results table, then the ratios of p50: poll-only/watcher and listing/push."""
    header = (
        f"{'records':>8} {'mode':10} {'backend':7} {'push':5} {'listing':>7} {'upload':6} "
        f"{'path':11} {'n':>4} {'p50':>8} "
        f"{'p90':>8} "
        f"{'p99':>8} {'max':>8} {'timeouts':>8} {'load':>5}"
    )
    print(header + "\n" + "-" * len(header))
    for r in results:
        s = r.scenario
        path = ("inline" if s.inline and s.deltas and s.push == "mqtt" else "get") + (
            "+finder" if s.finder else "+scan"
        )
        print(
            f"{r.records:8d} {s.mode:10} {s.backend:7} {s.push or '-':5} {s.listing_interval:>7} "
            f"{('delta' if s.fulls else 'chain') if s.deltas else 'full':6} {path:11} "
            f"{len(r.latencies_ms):4d} "
            f"{r.pct(0.5):8.1f} {r.pct(0.9):8.1f} {r.pct(0.99):8.1f} {r.pct(1.0):8.1f} "
            f"{r.timeouts:8d} {r.load:5.2f}"
        )
    print(
        "(latencies in ms; lmdb_poll_interval 1s in every row; load = highest 1-min load "
        f"average around the row, on {len(os.sched_getaffinity(0))} CPUs)\n"
    )
    for backend, watcher, poll in ratio_pairs(results):
        ratio = poll.pct(0.5) / watcher.pct(0.5)
        print(f"{backend}: poll-only p50 / watcher p50 = {ratio:.1f}x")
    for r in results:
        if r.full_sizes or r.delta_sizes:
            print(
                f"{r.scenario.label}: A stored {len(r.full_sizes)} full objects (median "
                f"{median_or_zero(r.full_sizes):.0f} bytes) and {len(r.delta_sizes)} deltas "
                f"(median {median_or_zero(r.delta_sizes):.0f} bytes)"
            )
    for full, delta in delta_pairs(results):
        print(
            f"{delta.scenario.label}: full-object p50 / delta p50 = "
            f"{full.pct(0.5) / delta.pct(0.5):.1f}x (p99 {full.pct(0.99) / delta.pct(0.99):.1f}x)"
        )
    for off, on in variant_pairs(results, "inline"):
        print(
            f"{on.records} records: GET path p50 / inline p50 = {off.pct(0.5) / on.pct(0.5):.1f}x "
            f"(p99 {off.pct(0.99) / on.pct(0.99):.1f}x; inline p50 {on.pct(0.5):.1f} ms, "
            f"p99 {on.pct(0.99):.1f} ms)"
        )
    for off, on in variant_pairs(results, "finder"):
        print(
            f"{on.records} records: scan p50 / change finder p50 = "
            f"{off.pct(0.5) / on.pct(0.5):.1f}x (p99 {off.pct(0.99) / on.pct(0.99):.1f}x)"
        )
    for listing, push in push_pairs(results):
        ls, ps = listing.scenario, push.scenario
        ratio = listing.pct(0.5) / push.pct(0.5)
        print(
            f"{ps.mode} {ps.backend}: listing-only ({ls.listing_interval}) p50 / {ps.push} p50 "
            f"= {ratio:.1f}x ({ps.push} p50 {push.pct(0.5):.1f} ms)"
        )


def ratio_pairs(results: list[Result]) -> Iterator[tuple[str, Result, Result]]:
    """(backend, watcher row, poll-only row) with the same listing interval, no push."""
    for w in results:
        if w.scenario.mode != "watcher" or w.scenario.push or not w.latencies_ms:
            continue
        for p in results:
            ps = p.scenario
            if (
                ps.mode == "poll-only"
                and p.records == w.records
                and not ps.push
                and (ps.backend, ps.listing_interval)
                == (w.scenario.backend, w.scenario.listing_interval)
                and p.latencies_ms
            ):
                yield f"{ps.backend} (listing {ps.listing_interval})", w, p


def median_or_zero(values: list[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


def delta_pairs(results: list[Result]) -> Iterator[tuple[Result, Result]]:
    """(full-object row, delta row) that differ only in deltas."""
    for full in results:
        if full.scenario.deltas or not full.latencies_ms:
            continue
        for delta in results:
            if (
                delta.scenario == dataclasses.replace(full.scenario, deltas=True)
                and delta.records == full.records
                and delta.latencies_ms
            ):
                yield full, delta


def variant_pairs(results: list[Result], what: str) -> Iterator[tuple[Result, Result]]:
    """(row with ``what`` off, the same row with it on) at the same size; ``what`` is
    ``inline`` or ``finder``."""
    for off in results:
        if getattr(off.scenario, what) or not off.latencies_ms:
            continue
        for on in results:
            if (
                on.scenario == dataclasses.replace(off.scenario, **{what: True})
                and on.records == off.records
                and on.latencies_ms
            ):
                yield off, on


def push_pairs(results: list[Result]) -> Iterator[tuple[Result, Result]]:
    """(listing-only 1 s row, push row) with the same mode and backend."""
    for push in results:
        ps = push.scenario
        if not ps.push or not (ps.deltas and ps.inline and ps.finder) or not push.latencies_ms:
            continue
        for listing in results:
            ls = listing.scenario
            if (
                not ls.push
                and listing.records == push.records
                and ls.listing_interval == "1s"
                and (ls.mode, ls.backend) == (push.scenario.mode, push.scenario.backend)
                and listing.latencies_ms
            ):
                yield listing, push


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--writes", type=int, default=None, help="measured writes per row (200)")
    p.add_argument(
        "--records",
        type=record_counts,
        default=None,
        help="records before measuring (10000); a comma-separated list runs each row at "
        "each size, e.g. 10000,1000000",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per write (10)")
    p.add_argument(
        "--phase-jitter",
        type=float,
        default=PHASE_JITTER,
        help="random extra pause after each write, 0..this seconds (1.0)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 30 writes, 1000 records (unless given)"
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="LABEL",
        help="run only rows whose label contains LABEL, or is LABEL given as =LABEL "
        "(repeatable), e.g. watcher-fs or =watcher-s3-mqtt-list1h",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=None,
        metavar="LABEL",
        help="leave out rows whose label contains LABEL (repeatable), e.g. full",
    )
    p.add_argument(
        "--daemon-log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="evsync log level (info for a diagnostic run, with --keep-logs)",
    )
    p.add_argument(
        "--keep-logs",
        type=Path,
        default=None,
        metavar="DIR",
        help="copy the daemons' JSON logs and configs here",
    )
    p.add_argument(
        "--samples",
        type=Path,
        default=None,
        metavar="CSV",
        help="write every write's wall-clock commit time and latency here",
    )
    p.add_argument(
        "--python",
        default=str(VENV_BIN / "python"),
        help="interpreter that runs the evsync daemons",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.writes = args.writes or (QUICK_WRITES if quick else DEFAULT_WRITES)
    args.records = args.records or [QUICK_RECORDS if quick else DEFAULT_RECORDS]
    return args


def record_counts(text: str) -> list[int]:
    """``--records``: one count or several, comma-separated, each at least 1."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        msg = f"expected counts like 10000,1000000, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be at least 1, got {text!r}")
    return counts


def selected(only: list[str] | None, skip: list[str] | None = None) -> list[Scenario]:
    """The scenarios to run: labels containing one of ``only`` (or equal to one given as
    ``=LABEL``), less those containing one of ``skip``."""
    return [
        s
        for s in SCENARIOS
        if (not only or any(_matches(o, s.label) for o in only))
        and not any(k in s.label for k in skip or ())
    ]


def _matches(pattern: str, label: str) -> bool:
    return pattern[1:] == label if pattern.startswith("=") else pattern in label


def run_all(scenarios: list[Scenario], opts: Options, samples: Any) -> list[Result]:
    """Run every scenario; moto and Mosquitto run for the whole set if any row needs them."""
    results: list[Result] = []
    services = Services()
    services_dir = Path(tempfile.mkdtemp(prefix="evsync-bench-services-"))
    try:
        services.start(scenarios, services_dir)
        index = 0
        for records in opts.sizes:
            sized = dataclasses.replace(opts, records=records)
            for scenario in scenarios:
                results.append(run_scenario(scenario, sized, services, index, samples))
                index += 1
    finally:
        try:
            services.stop()
        finally:
            shutil.rmtree(services_dir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the selected rows and print the machine and the table."""
    args = parse_args(argv)
    build_dir = Path(tempfile.mkdtemp(prefix="evsync-bench-build-"))
    try:
        source_hash = snapshot_build(build_dir)
        opts = Options(
            writes=args.writes,
            records=args.records[0],
            sizes=tuple(args.records),
            timeout=args.timeout,
            phase_jitter=args.phase_jitter,
            python=args.python,
            build_dir=build_dir,
            log_level=args.daemon_log_level,
            keep_dir=args.keep_logs,
            samples=args.samples,
        )
        print_machine(source_hash)
        print(
            f"{', '.join(map(str, opts.sizes))} records, {opts.writes} writes per row, "
            f"timeout {opts.timeout:g}s, "
            f"pause {MIN_GAP * 1000:.0f} ms + U(0, {opts.phase_jitter:g} s) between writes\n"
        )
        results = run_with_samples(selected(args.only, args.skip), opts)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    print()
    print_table(results)
    return 0


def run_with_samples(scenarios: list[Scenario], opts: Options) -> list[Result]:
    """run_all, with the per-write CSV open when ``--samples`` is given."""
    if opts.samples is None:
        return run_all(scenarios, opts, None)
    opts.samples.parent.mkdir(parents=True, exist_ok=True)
    with open(opts.samples, "w", newline="", encoding="utf-8") as f:
        samples = csv.writer(f)
        samples.writerow(["row", "i", "commit_wall", "latency_ms"])
        return run_all(scenarios, opts, samples)


if __name__ == "__main__":
    sys.exit(main())
