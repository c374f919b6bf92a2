"""Many instances: how latency, CPU and S3 requests grow with the number of evsync daemons.

What is measured
----------------
For each N in ``--instances`` (default 2, 8, 16), N evsync daemons run as real
subprocesses (``python -m evsync -c CFG sync``) on this machine, each on its own LMDB
preloaded with the same ``--records`` native-header records (10,000), sharing one
bucket on a moto server and one Mosquitto broker, both on 127.0.0.1 free ports. Every
daemon announces its uploads over MQTT (``notify.mqtt.publish: true``) and subscribes
to the others'; ``notify.listing_interval`` is 1 h, so only the announcements can
explain the latency. The benchmark process plays the applications: it writes into the
instances' LMDBs through py-lmdb and reads them back through the same environments
(py-lmdb opens a path once per process).

(a) **one write per second on a random instance**: for ``--seconds`` seconds, one
    record is committed on a seeded random instance about once a second (1 s + U(0,
    0.2 s) after the previous one, or at once if it took longer); its latency is the
    time from the commit until ALL N-1 other instances hold it (p50/p90/p99/max).
(b) **a burst**: 20 writes on each instance, one record per txn, round-robin over the
    instances as fast as the benchmark can commit; the time from the first commit (and
    from the last) until every instance holds all N x 20 values.
(c) **CPU per received delta**: instance 0 alone writes ``--receive-writes`` records,
    one per txn, each after the last one reached every receiver (plus 0.1 s), while
    instances 1..N-1 only receive. The receivers' utime + stime (``/proc/<pid>/stat``)
    over each write's interval, less their idle rate measured in a quiet window just
    before, is booked to the kind of object the writer stored (its ``/metrics``): the
    sender writes a full object every ``deltas.max_chain`` (20) changes, and a full
    object costs a receiver ten times a delta, so the two are kept apart. The merges
    are checked against evsync's ``evsync_objects_loaded_total``. ``--perf`` adds the
    first receiver's CPU thread by thread (``perf stat --per-thread``), and
    ``--stage-timers`` the receivers' syncer-thread CPU per receive-path stage
    (``stage_timers.py``).
(d) **S3 requests per write**: moto's own access log (werkzeug prints one line per
    request) is counted over phase (a), by method and kind (object PUT, object GET,
    LIST, other), and divided by the writes; the burst's are printed too.

Every figure is printed for each N and as a ratio against the first N (the baseline,
measured in the same process, with the same build).

Run: ``.venv/bin/python benchmarks/scale.py [--quick] [--instances 2,8,16]``. Helpers
(moto, Mosquitto, the daemons, LMDB access, the build copy) come from
``propagation.py``. Everything binds 127.0.0.1; every process and temp dir is removed
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from evsync.lmdb.header import encode_value, parse_header

sys.path.insert(0, str(Path(__file__).resolve().parent))
import propagation as prop  # the sibling script, found through the path above

SCENARIO = prop.Scenario("watcher", "s3", "1h", push="mqtt")
DEFAULT_INSTANCES = (2, 8, 16)
DEFAULT_SECONDS, QUICK_SECONDS = 60, 10
DEFAULT_RECORDS, QUICK_RECORDS = 10_000, 1000
DEFAULT_RECEIVE_WRITES, QUICK_RECEIVE_WRITES = 60, 20
WRITE_PERIOD = 1.0  # phase (a): one write per second ...
WRITE_JITTER = 0.2  # ... plus U(0, this), so writes do not lock to a 1 s poller
BURST_WRITES = 20  # phase (b): writes per instance
RECEIVE_SETTLE = 0.1  # phase (c): after all hold a write, for the merge's bookkeeping
IDLE_SECONDS = 3.0  # phase (c): quiet window that measures each receiver's idle CPU
SETTLE_SECONDS = 2.0  # quiet time after startup and between phases
POLL_SLEEP = 0.0005  # how often the benchmark looks at the LMDBs while waiting
STARTUP_TIMEOUT = 180.0  # all daemons started and every instance holds a probe write
SEED = 20261204
CLK_TCK = os.sysconf("SC_CLK_TCK")
PERF = "perf"  # linux-tools: per-thread CPU of a receiver with --perf
STAGE_WRAPPER = Path(__file__).resolve().parent / "stage_timers.py"
STAGES_DIR = "stages"  # under the cluster's temp dir
STAGES_ENV = "EVSYNC_STAGE_TIMERS"  # stage_timers.OUT_ENV
PY_SPY = "py-spy"  # --py-spy: a sampling profiler from PyPI, found on PATH
PY_SPY_RATE = 1000  # samples per second
PERF_START_SECONDS = 0.5  # perf attaches to every thread before phase (c) starts
# one werkzeug access-log line: "METHOD /bucket/key?query HTTP/1.1" (ANSI colours for errors)
MOTO_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/')
LOADED_METRIC = re.compile(r'^evsync_objects_loaded_total\{db="[^"]*",instance="([^"]*)"\} (\S+)$')


# ------------------------------------------------------------------ results


@dataclass
class Result:
    """Every figure of one cluster size."""

    n: int
    latencies_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    burst_from_first_ms: float = float("nan")
    burst_from_last_ms: float = float("nan")
    burst_timeout: bool = False
    burst_commit_ms: list[float] = field(default_factory=list)  # each burst commit's wall time
    burst_requests: Counter[str] = field(default_factory=Counter)  # S3 requests of phase (b)
    #: phase (c): CPU ms per merged delta and per merged full object, over all receivers
    cpu_ms_per_delta: float = float("nan")
    cpu_ms_per_full: float = float("nan")
    cpu_idle_ms_per_s: float = float("nan")  # a receiver's idle CPU, ms per second
    received_deltas: int = 0  # objects the single writer stored in phase (c)
    received_fulls: int = 0
    merges_missing: int = 0  # merges the receivers' counters lack against writes x receivers
    #: with --stage-timers: per receive-path stage, (calls per receiver, CPU ms per call)
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: with --perf: phase (c) CPU ms per merged object of each thread of the first receiver
    thread_ms: list[float] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)  # phase (a)
    writes: int = 0
    moto_cpu_s: float = 0.0  # the servers' CPU over phase (a)
    mosquitto_cpu_s: float = 0.0
    #: CPU seconds over the burst (first commit until all hold all): daemons, moto,
    #: Mosquitto, this process
    burst_cpu_s: dict[str, float] = field(default_factory=dict)
    load_before: float = 0.0
    load_after: float = 0.0

    def pct(self, q: float) -> float:
        """The q-quantile of the phase (a) latencies."""
        return prop.percentile(self.latencies_ms, q)

    def per_write(self, kind: str) -> float:
        """S3 requests of ``kind`` per phase (a) write."""
        return self.requests[kind] / self.writes if self.writes else float("nan")

    def gets_per_write(self) -> float:
        """Object GETs (deltas and full objects) per phase (a) write."""
        return self.per_write("get-delta") + self.per_write("get-full")

    def puts_per_write(self) -> float:
        """Object PUTs per phase (a) write."""
        return self.per_write("put-delta") + self.per_write("put-full")


# ------------------------------------------------------------------ one instance


@dataclass
class Node:
    """One daemon: its name, LMDB (written and read by the benchmark) and HTTP port."""

    name: str
    path: Path
    http_port: int
    #: one environment for writing and reading (py-lmdb opens a path once per process)
    env: lmdb.Environment
    daemon: prop.Daemon | None = None

    def write(self, key: bytes, value: bytes) -> float:
        """Commit one record here; perf_counter() right after the commit."""
        return prop.write_one(self.env, self.env.open_db(prop.DBI), key, value)

    def holds(self, key: bytes, value: bytes) -> bool:
        """The daemon's LMDB holds ``value`` under ``key``."""
        try:
            txn = self.env.begin(db=self.env.open_db(prop.DBI))
        except lmdb.MapResizedError:  # the daemon grew the map
            self.env.set_mapsize(0)
            txn = self.env.begin(db=self.env.open_db(prop.DBI))
        with txn:
            raw = txn.get(key)
            return raw is not None and raw[parse_header(raw).offset :] == value

    def lacks_from(self, items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``items`` from the first one this LMDB does not hold (empty: holds them all),
        read in one txn."""
        try:
            txn = self.env.begin(db=self.env.open_db(prop.DBI))
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            txn = self.env.begin(db=self.env.open_db(prop.DBI))
        with txn:
            for i, (key, value) in enumerate(items):
                raw = txn.get(key)
                if raw is None or raw[parse_header(raw).offset :] != value:
                    return items[i:]
        return []

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon process so far."""
        assert self.daemon is not None
        return process_cpu_seconds(self.daemon.proc.pid)

    def metrics(self) -> dict[str, float]:
        """This daemon's counters that the benchmark reads, from its /metrics: objects
        merged from other instances, objects and deltas stored."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        out = {"loaded": 0.0, "stored": 0.0, "deltas": 0.0}
        for line in text.splitlines():
            m = LOADED_METRIC.match(line)
            if m and m.group(1) != self.name:
                out["loaded"] += float(m.group(2))
            elif line.startswith("evsync_objects_stored_total{"):
                out["stored"] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("evsync_deltas_stored_total{"):
                out["deltas"] += float(line.rsplit(" ", 1)[1])
        return out

    def close(self) -> None:
        """Stop the daemon, close both environments."""
        if self.daemon is not None:
            prop.stop_process(self.daemon.proc)
        self.env.close()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from /proc (10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of stat(5)


def burst_cpu(nodes: list[Node], servers: tuple[int, int]) -> dict[str, float]:
    """CPU seconds so far of the daemons (all), moto, Mosquitto and this process: where
    a burst's time goes on a machine they share."""
    own = os.times()
    return {
        "daemons": sum(n.cpu_seconds() for n in nodes),
        "moto": process_cpu_seconds(servers[0]),
        "mosquitto": process_cpu_seconds(servers[1]),
        "benchmark": own.user + own.system,
    }


def preload(env: lmdb.Environment, count: int, stamp_ns: int) -> None:
    """``count`` records, stamped alike on every instance: startup merges change nothing."""
    db = env.open_db(prop.DBI)
    with env.begin(write=True) as txn:
        txn_id = txn.id()
        for i in range(count):
            value = encode_value(stamp_ns, txn_id, 0, f"value-{i}".encode())
            txn.put(prop.record_key(i), value, db=db)


def config_text(
    node: Node, endpoint: str, bucket: str, mqtt_url: str, topic: str, log: str, max_chain: int
) -> str:
    """The daemon's YAML: propagation's config plus MQTT, the HTTP port for /metrics and,
    when ``max_chain`` is set (not 0), ``deltas.max_chain``."""
    storage = prop.storage_section(SCENARIO, node.path, endpoint, bucket)
    mqtt = json.dumps({"url": mqtt_url, "topic": topic, "publish": True})
    cfg = node.path.with_suffix(".yaml")
    prop.write_config(cfg, node.name, node.path, SCENARIO, (storage, f"  mqtt: {mqtt}\n", log))
    text = cfg.read_text(encoding="utf-8") + f"http: {{address: '127.0.0.1:{node.http_port}'}}\n"
    if max_chain:
        text = text.replace(
            "deltas: {enabled: true}", f"deltas: {{enabled: true, max_chain: {max_chain}}}"
        )
    cfg.write_text(text, encoding="utf-8")
    return str(cfg)


# ------------------------------------------------------------------ waiting


def wait_all(nodes: list[Node], key: bytes, value: bytes, deadline: float) -> float | None:
    """perf_counter() once every node holds ``value``; None on timeout."""
    pending = list(nodes)
    while pending:
        pending = [n for n in pending if not n.holds(key, value)]
        if not pending:
            break
        if time.perf_counter() > deadline:
            return None
        time.sleep(POLL_SLEEP)
    return time.perf_counter()


def wait_many(nodes: list[Node], items: list[tuple[bytes, bytes]], deadline: float) -> float | None:
    """perf_counter() once every node holds every (key, value); None on timeout.

    A pass reads each node's remaining items in one read txn and stops at the first one
    it lacks: the time all are held is the same, and a pass costs about a get per node
    instead of one per item (a pass over every item of a 16-instance burst, a txn per
    get, kept a core busy while the daemons converged, and slowed what it measured)."""
    pending = {n.name: list(items) for n in nodes}
    by_name = {n.name: n for n in nodes}
    while pending:
        for name in list(pending):
            left = by_name[name].lacks_from(pending[name])
            if left:
                pending[name] = left
            else:
                del pending[name]
        if not pending:
            break
        if time.perf_counter() > deadline:
            return None
        time.sleep(POLL_SLEEP)
    return time.perf_counter()


class MotoLog:
    """Counts moto's requests from its access log, between two marks."""

    def __init__(self, path: Path, bucket: str) -> None:
        self.path = path
        self.bucket = bucket
        self.offset = 0

    def mark(self) -> None:
        """Start counting from here."""
        self.offset = self.path.stat().st_size

    def counts(self) -> Counter[str]:
        """Requests on this bucket since the mark, by kind."""
        out: Counter[str] = Counter()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        for m in MOTO_REQUEST.finditer(text):
            method, target = m.groups()
            path, _, query = target.partition("?")
            parts = path.lstrip("/").split("/", 1)
            if parts[0] != self.bucket:
                continue
            if len(parts) == 1 or not parts[1]:
                out["list" if method == "GET" and "list-type" in query else "other"] += 1
            elif method in ("GET", "PUT"):
                kind = "delta" if "__D" in parts[1] else "full"
                out[f"{method.lower()}-{kind}"] += 1
            else:
                out["other"] += 1
        return out


# ------------------------------------------------------------------ one cluster size


@dataclass(frozen=True)
class Options:
    """Command-line settings that every cluster size shares."""

    seconds: float
    records: int
    receive_writes: int
    timeout: float
    max_chain: int  # 0: evsync's default
    perf: bool  # per-thread CPU of the first receiver in phase (c)
    stage_timers: bool  # daemons run under stage_timers.py
    py_spy: Path | None  # collapsed stacks of the first receiver in phase (c)
    prop: prop.Options


def run_size(n: int, opts: Options, services: prop.Services, moto_log_path: Path) -> Result:
    """Start N daemons, run the four measurements, tear everything down."""
    assert services.moto is not None and services.mosquitto is not None
    workdir = Path(tempfile.mkdtemp(prefix=f"evsync-scale-{n}-"))
    bucket = f"evsync-scale-{n}"
    services.moto.create_bucket(bucket)
    result = Result(n)
    nodes: list[Node] = []
    log = json.dumps({"level": opts.prop.log_level, "format": "json"})
    stamp = time.time_ns()
    try:
        for i in range(n):
            path = workdir / f"n{i:02d}"
            node = Node(f"n{i:02d}", path, prop.free_port(), prop.open_writer(path))
            nodes.append(node)
            preload(node.env, opts.records, stamp)
        for node in nodes:
            cfg = config_text(
                node,
                services.moto.endpoint,
                bucket,
                services.mosquitto.url,
                bucket,
                log,
                opts.max_chain,
            )
            node.daemon = start_daemon(node.name, Path(cfg), workdir, opts)
        started = time.monotonic()
        warm_up(nodes, started)
        print(f"  N={n}: started and synced in {time.monotonic() - started:.1f}s", flush=True)
        time.sleep(SETTLE_SECONDS)
        result.load_before = os.getloadavg()[0]
        moto_log = MotoLog(moto_log_path, bucket)
        servers = (services.moto.proc.pid, services.mosquitto.proc.pid)
        server_cpu0 = [process_cpu_seconds(pid) for pid in servers]
        one_per_second(nodes, result, opts, moto_log)
        result.moto_cpu_s, result.mosquitto_cpu_s = (
            process_cpu_seconds(pid) - c for pid, c in zip(servers, server_cpu0, strict=True)
        )
        time.sleep(SETTLE_SECONDS)
        moto_log.mark()
        cpu0 = burst_cpu(nodes, servers)
        burst(nodes, result, opts)
        result.burst_cpu_s = {k: v - cpu0[k] for k, v in burst_cpu(nodes, servers).items()}
        result.burst_requests = moto_log.counts()
        time.sleep(SETTLE_SECONDS)
        receive_cost(nodes, result, opts)
        result.load_after = os.getloadavg()[0]
        for node in nodes:
            assert node.daemon is not None
            node.daemon.check_alive()
    finally:
        for node in nodes:
            node.close()
        keep_or_remove(workdir, n, opts.prop.keep_dir)
    return result


def start_daemon(name: str, config: Path, workdir: Path, opts: Options) -> prop.Daemon:
    """propagation's daemon, or with --stage-timers the same under stage_timers.py."""
    log_path = workdir / f"{name}.log"
    if not opts.stage_timers:
        return prop.start_daemon(name, config, log_path, opts.prop, SCENARIO)
    stages = workdir / STAGES_DIR
    stages.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(opts.prop.build_dir), env.get("PYTHONPATH", "")) if p
    )
    env[STAGES_ENV] = str(stages)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [opts.prop.python, str(STAGE_WRAPPER), "-c", str(config), "sync"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
            env=env,
        )
    return prop.Daemon(name, proc, log_path)


def signal_all(nodes: list[Node], signum: int) -> None:
    """Send ``signum`` to every node's daemon."""
    for node in nodes:
        assert node.daemon is not None
        node.daemon.proc.send_signal(signum)


def receiver_stages(receivers: list[Node], stages: Path) -> dict[str, tuple[float, float]]:
    """Per stage, (calls per receiver, syncer-thread CPU ms per call) in phase (c)."""
    seconds: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for node in receivers:
        assert node.daemon is not None
        path = stages / f"{node.daemon.proc.pid}.json"
        if not path.exists():
            continue  # a daemon that did not exit cleanly wrote nothing
        data = json.loads(path.read_text())
        seconds.update(data["seconds"])
        calls.update(data["calls"])
    return {
        label: (calls[label] / len(receivers), seconds[label] * 1000 / calls[label])
        for label in calls
        if calls[label]
    }


def warm_up(nodes: list[Node], started: float) -> None:
    """One probe write per instance, seen by all: the daemons are up and subscribed."""
    for node in nodes:
        key, value = b"warm-up-" + node.name.encode(), b"probe"
        deadline = time.perf_counter() + STARTUP_TIMEOUT - (time.monotonic() - started)
        node.write(key, value)
        while wait_all(nodes, key, value, min(deadline, time.perf_counter() + 1.0)) is None:
            for other in nodes:
                assert other.daemon is not None
                other.daemon.check_alive()
            if time.perf_counter() > deadline:
                raise RuntimeError(f"a probe write on {node.name} did not reach every instance")


def one_per_second(nodes: list[Node], result: Result, opts: Options, moto_log: MotoLog) -> None:
    """Phase (a) and (d): a write about once a second on a random instance."""
    rng = random.Random(SEED + len(nodes))
    moto_log.mark()
    end = time.monotonic() + opts.seconds
    i = 0
    while time.monotonic() < end:
        next_at = time.monotonic() + WRITE_PERIOD + rng.uniform(0.0, WRITE_JITTER)
        writer = rng.choice(nodes)
        others = [n for n in nodes if n is not writer]
        key = prop.record_key(rng.randrange(opts.records))
        value = f"a-{writer.name}-{i}".encode()
        t_commit = writer.write(key, value)
        t_seen = wait_all(others, key, value, t_commit + opts.timeout)
        if t_seen is None:
            result.timeouts += 1
        else:
            result.latencies_ms.append((t_seen - t_commit) * 1000)
        i += 1
        time.sleep(max(0.0, next_at - time.monotonic()))
    result.writes = i
    time.sleep(SETTLE_SECONDS)  # requests of the last write (other receivers' GETs)
    result.requests = moto_log.counts()


def burst(nodes: list[Node], result: Result, opts: Options) -> None:
    """Phase (b): BURST_WRITES writes on every instance, round-robin, then wait for all."""
    items: list[tuple[bytes, bytes]] = []
    t_first = time.perf_counter()
    t_last = t_first
    for j in range(BURST_WRITES):
        for k, node in enumerate(nodes):
            key = prop.record_key((k * BURST_WRITES + j) % opts.records)
            value = f"b-{node.name}-{j}".encode()
            t0 = time.perf_counter()
            t_last = node.write(key, value)
            result.burst_commit_ms.append((t_last - t0) * 1000)
            items.append((key, value))
    # a key written twice (records < N x 20) keeps the later value everywhere
    final = list(dict(items).items())
    t_done = wait_many(nodes, final, t_last + opts.timeout * 3)
    if t_done is None:
        result.burst_timeout = True
        return
    result.burst_from_first_ms = (t_done - t_first) * 1000
    result.burst_from_last_ms = (t_done - t_last) * 1000


def receive_cost(nodes: list[Node], result: Result, opts: Options) -> None:
    """Phase (c): CPU per merged delta and per merged full object on pure receivers.

    Instance 0 writes alone, one record at a time; each write's interval runs from just
    before its commit until every receiver holds it plus RECEIVE_SETTLE, and its CPU
    (all receivers' utime + stime, less their idle rate) is booked to the kind of object
    the writer stored for it. /proc counts in clock ticks (10 ms): each interval's
    figure is off by up to a tick per receiver, which averages out over the intervals
    and receivers. No receiver's /metrics is read inside an interval (that costs CPU).
    """
    writer, receivers = nodes[0], nodes[1:]
    idle0 = sum(r.cpu_seconds() for r in receivers)
    time.sleep(IDLE_SECONDS)
    idle_rate = (sum(r.cpu_seconds() for r in receivers) - idle0) / IDLE_SECONDS
    loaded0 = sum(r.metrics()["loaded"] for r in receivers)
    perf = ThreadClock(receivers[0]) if opts.perf else None
    spy = StackSampler(receivers[0], opts.py_spy) if opts.py_spy is not None else None
    if opts.stage_timers:
        signal_all(receivers, signal.SIGUSR1)  # stage_timers.py: zero the timers
    cpu = {"delta": 0.0, "full": 0.0}
    count = {"delta": 0, "full": 0}
    for i in range(opts.receive_writes):
        before = writer.metrics()
        key = prop.record_key(i % opts.records)
        value = f"c-{i}".encode()
        c0 = sum(r.cpu_seconds() for r in receivers)
        t0 = time.monotonic()
        t_commit = writer.write(key, value)
        if wait_all(receivers, key, value, t_commit + opts.timeout) is None:
            print(f"  N={len(nodes)}: phase (c) write {i} timed out", flush=True)
            continue
        time.sleep(RECEIVE_SETTLE)
        spent = sum(r.cpu_seconds() for r in receivers) - c0
        elapsed = time.monotonic() - t0
        after = writer.metrics()
        kind = "delta" if after["deltas"] > before["deltas"] else "full"
        cpu[kind] += spent - idle_rate * elapsed
        count[kind] += len(receivers)
    if opts.stage_timers:
        stages = Path(str(receivers[0].path.parent)) / STAGES_DIR
        for r in receivers:  # an old file must not pass for the new one
            assert r.daemon is not None
            (stages / f"{r.daemon.proc.pid}.json").unlink(missing_ok=True)
        signal_all(receivers, signal.SIGUSR2)  # ... and write them
        time.sleep(SETTLE_SECONDS)
        result.stages = receiver_stages(receivers, stages)
    if spy is not None:
        spy.stop()
    if perf is not None:
        objects = (count["delta"] + count["full"]) // len(receivers)
        result.thread_ms = [ms / objects for ms in perf.stop()] if objects else []
    merged = sum(r.metrics()["loaded"] for r in receivers) - loaded0
    result.merges_missing = int(count["delta"] + count["full"] - merged)
    result.cpu_idle_ms_per_s = idle_rate / len(receivers) * 1000
    if count["delta"]:
        result.cpu_ms_per_delta = cpu["delta"] / count["delta"] * 1000
    if count["full"]:
        result.cpu_ms_per_full = cpu["full"] / count["full"] * 1000
    result.received_deltas = count["delta"] // len(receivers)
    result.received_fulls = count["full"] // len(receivers)


class ThreadClock:
    """``perf stat -e task-clock --per-thread`` on one daemon: CPU time of each thread
    to the nanosecond (``/proc`` counts in 10 ms ticks, too coarse per thread)."""

    def __init__(self, node: Node) -> None:
        assert node.daemon is not None
        fd, name = tempfile.mkstemp(prefix="evsync-scale-perf-", suffix=".txt")
        os.close(fd)
        self.out = Path(name)
        command = [PERF, "stat", "-e", "task-clock", "--per-thread", "-x", ",", "-o", name]
        self.proc = subprocess.Popen(
            [*command, "-p", str(node.daemon.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(PERF_START_SECONDS)

    def stop(self) -> list[float]:
        """End the count; each thread's CPU ms, most first."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(prop.STOP_TIMEOUT)
        try:
            rows = [line.split(",") for line in self.out.read_text().splitlines()]
        finally:
            self.out.unlink(missing_ok=True)
        # CSV rows: thread, value (ms), unit, event, ...; "<not counted>" for idle threads
        ms = [float(r[1]) for r in rows if len(r) > 1 and r[1].replace(".", "", 1).isdigit()]
        return sorted(ms, reverse=True)


class StackSampler:
    """``py-spy record`` on one daemon: the Python stack of whichever thread holds the
    GIL, sampled through phase (c) without pausing the process (``--gil``: without it a
    thread in a system call, an fsync or a select, is sampled as busy), written as
    collapsed stacks (one "frame;frame;... count" line per stack) for
    ``benchmarks/stacks.py`` to sum per function. Sampling this way yields few samples
    (a few hundred over phase c): a rough map, not a measurement."""

    def __init__(self, node: Node, out: Path) -> None:
        assert node.daemon is not None
        spy = shutil.which(PY_SPY)
        if spy is None:
            raise SystemExit(f"--py-spy: {PY_SPY} not found (pip install py-spy)")
        command = [spy, "record", "--format", "raw", "--threads", "--nonblocking", "--gil"]
        self.proc = subprocess.Popen(
            [*command, "--rate", str(PY_SPY_RATE), "-o", str(out), "-p", str(node.daemon.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(PERF_START_SECONDS)

    def stop(self) -> None:
        """End the sampling; py-spy writes the file as it exits."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(prop.STOP_TIMEOUT)


def keep_or_remove(workdir: Path, n: int, keep_dir: Path | None) -> None:
    """Copy the daemons' logs and configs to ``keep_dir`` (if set), then delete the temp dir."""
    if keep_dir is not None:
        target = keep_dir / f"n{n}"
        target.mkdir(parents=True, exist_ok=True)
        for path in [*workdir.glob("*.log"), *workdir.glob("*.yaml")]:
            shutil.copy(path, target / path.name)
    shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ reporting

THREAD_SHOWN_MS = 0.01  # threads below this per object are left out of the line
REQUEST_KINDS = ("put-delta", "put-full", "get-delta", "get-full", "list", "other")


def print_table(results: list[Result]) -> None:
    """One row per cluster size, then each figure against the first size's."""
    header = (
        f"{'N':>3} {'writes':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'t/o':>3} "
        f"{'burst':>7} {'b-last':>7} {'cpu/D':>7} {'cpu/F':>6} {'D/F':>7} "
        + " ".join(f"{k:>9}" for k in REQUEST_KINDS)
        + f" {'load':>9}"
    )
    print(header + "\n" + "-" * len(header))
    for r in results:
        burst = "timeout" if r.burst_timeout else f"{r.burst_from_first_ms:7.0f}"
        last = "-" if r.burst_timeout else f"{r.burst_from_last_ms:7.0f}"
        print(
            f"{r.n:3d} {r.writes:6d} {r.pct(0.5):7.1f} {r.pct(0.9):7.1f} {r.pct(0.99):7.1f} "
            f"{r.pct(1.0):7.1f} {r.timeouts:3d} {burst:>7} {last:>7} "
            f"{r.cpu_ms_per_delta:7.2f} {r.cpu_ms_per_full:6.1f} "
            f"{f'{r.received_deltas}/{r.received_fulls}':>7} "
            + " ".join(f"{r.per_write(k):9.2f}" for k in REQUEST_KINDS)
            + f" {r.load_before:4.2f}/{r.load_after:4.2f}"
        )
    print(
        "(p50..max: ms from a commit until ALL other instances hold it, phase a; burst: ms "
        "from the first commit of the burst until every instance holds every value, b-last: "
        "from its last commit; cpu/D, cpu/F: CPU ms of a receiver per merged delta and per "
        "merged full object, phase c, with D/F how many of each the writer stored; S3 "
        "requests per write of phase a, by kind; load: 1-min load average before/"
        f"after, on {len(os.sched_getaffinity(0))} CPUs)\n"
    )
    for r in results:
        requests = sum(r.requests.values())
        print(
            f"N={r.n}: phase a: moto used {r.moto_cpu_s * 1000 / max(requests, 1):.1f} ms CPU "
            f"per request ({r.moto_cpu_s * 1000 / max(r.writes, 1):.0f} ms per write), "
            f"Mosquitto {r.mosquitto_cpu_s * 1000 / max(r.writes, 1):.2f} ms per write"
        )
        b = r.burst_requests
        if r.burst_cpu_s and not r.burst_timeout:
            span = r.burst_from_first_ms / 1000
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in r.burst_cpu_s.items())
            total = sum(r.burst_cpu_s.values())
            print(
                f"N={r.n}: CPU over the burst ({span:.2f} s, {os.cpu_count()} CPUs): {parts}; "
                f"{total:.2f} s in all, {total / span:.2f} CPUs busy"
            )
        if r.burst_commit_ms:
            commits = sorted(r.burst_commit_ms)
            print(
                f"N={r.n}: the burst's {len(commits)} commits took "
                f"{sum(commits):.0f} ms in all (p50 {prop.percentile(commits, 0.5):.2f} ms, "
                f"max {commits[-1]:.1f} ms each)"
            )
        print(
            f"N={r.n}: the burst stored {b['put-delta']} deltas and {b['put-full']} full "
            f"objects and fetched {b['get-delta']} deltas and {b['get-full']} full objects"
        )
        print(
            f"N={r.n}: a receiver idles at {r.cpu_idle_ms_per_s:.1f} ms CPU per s (subtracted); "
            f"phase c merges the counters lack: {r.merges_missing}"
        )
        for label, (calls, ms) in r.stages.items():
            print(f"N={r.n}: receivers' {label}: {calls:.0f} calls each, {ms:.3f} ms CPU per call")
        if r.thread_ms:
            threads = ", ".join(f"{ms:.2f}" for ms in r.thread_ms if ms >= THREAD_SHOWN_MS)
            print(f"N={r.n}: first receiver's threads, CPU ms per merged object: {threads}")
    base = results[0]
    for r in results[1:]:
        print(
            f"N={r.n} / N={base.n}: p50 {ratio(r.pct(0.5), base.pct(0.5))}, "
            f"p99 {ratio(r.pct(0.99), base.pct(0.99))}, "
            f"burst {ratio(r.burst_from_first_ms, base.burst_from_first_ms)}, "
            f"cpu/delta {ratio(r.cpu_ms_per_delta, base.cpu_ms_per_delta)}, "
            f"GETs/write {ratio(r.gets_per_write(), base.gets_per_write())}, "
            f"PUTs/write {ratio(r.puts_per_write(), base.puts_per_write())}"
        )


def ratio(value: float, baseline: float) -> str:
    """``value / baseline`` as ``2.3x``, ``-`` when undefined."""
    if not baseline or baseline != baseline or value != value:
        return "-"
    return f"{value / baseline:.2f}x"


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument(
        "--instances",
        default=None,
        help="comma-separated cluster sizes, the first is the baseline (2,8,16)",
    )
    p.add_argument("--seconds", type=float, default=None, help="length of phase a (60)")
    p.add_argument("--records", type=int, default=None, help="records per LMDB (10000)")
    p.add_argument(
        "--receive-writes", type=int, default=None, help="single-writer commits of phase c (60)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per write (10)")
    p.add_argument(
        "--max-chain",
        type=int,
        default=0,
        help="deltas.max_chain of every daemon (default: evsync's, 20); a large one keeps "
        "full objects out of the measurements",
    )
    p.add_argument(
        "--perf",
        action="store_true",
        help="phase c: CPU of each thread of the first receiver per merged object (needs perf)",
    )
    p.add_argument(
        "--stage-timers",
        action="store_true",
        help="run the daemons under benchmarks/stage_timers.py and print the receivers' "
        "syncer-thread CPU per receive-path stage in phase c",
    )
    p.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="FILE",
        help="phase c: sample the first receiver's Python stacks with py-spy into FILE "
        "(collapsed stacks; benchmarks/stacks.py sums them per function)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: sizes 2,4, 10 s, 1000 records, 20 phase-c writes (unless given)",
    )
    p.add_argument(
        "--daemon-log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    p.add_argument("--keep-logs", type=Path, default=None, metavar="DIR")
    p.add_argument("--python", default=str(prop.VENV_BIN / "python"))
    args = p.parse_args(argv)
    quick = args.quick
    if args.instances is None:
        args.instances = "2,4" if quick else ",".join(map(str, DEFAULT_INSTANCES))
    args.instances = [int(x) for x in args.instances.split(",") if x.strip()]
    if not args.instances or min(args.instances) < 2:
        p.error("--instances: every size must be at least 2")
    args.seconds = args.seconds or (QUICK_SECONDS if quick else DEFAULT_SECONDS)
    args.records = args.records or (QUICK_RECORDS if quick else DEFAULT_RECORDS)
    args.receive_writes = args.receive_writes or (
        QUICK_RECEIVE_WRITES if quick else DEFAULT_RECEIVE_WRITES
    )
    if args.records < BURST_WRITES * max(args.instances):
        p.error(f"--records: at least {BURST_WRITES * max(args.instances)} for the burst")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every cluster size and print the machine, the table and the ratios."""
    args = parse_args(argv)
    build_dir = Path(tempfile.mkdtemp(prefix="evsync-scale-build-"))
    services_dir = Path(tempfile.mkdtemp(prefix="evsync-scale-services-"))
    services = prop.Services()
    results: list[Result] = []
    try:
        source_hash = prop.snapshot_build(build_dir)
        popts = prop.Options(
            writes=0,
            records=args.records,
            sizes=(args.records,),
            timeout=args.timeout,
            phase_jitter=0.0,
            python=args.python,
            build_dir=build_dir,
            log_level=args.daemon_log_level,
            keep_dir=args.keep_logs,
            samples=None,
        )
        opts = Options(
            args.seconds,
            args.records,
            args.receive_writes,
            args.timeout,
            args.max_chain,
            args.perf,
            args.stage_timers,
            args.py_spy,
            popts,
        )
        prop.print_machine(source_hash)
        print(
            f"sizes {args.instances}, {opts.records} records per LMDB, phase a {opts.seconds:g}s, "
            f"burst {BURST_WRITES} per instance, phase c {opts.receive_writes} writes "
            f"one at a time; load average {os.getloadavg()[0]:.2f} at start\n",
            flush=True,
        )
        services.start([SCENARIO], services_dir)
        for n in args.instances:
            results.append(run_size(n, opts, services, services_dir / "moto.log"))
    finally:
        try:
            services.stop()
        finally:
            shutil.rmtree(services_dir, ignore_errors=True)
            shutil.rmtree(build_dir, ignore_errors=True)
    print()
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
