"""The convergence harness: instances with writers under load, a fault scheduler, and the checks.

Drivers, faults and checks, as the trusted replicators test themselves:

- **load**: one writer process per instance (:mod:`tests.reliability.writer`) doing
  random puts, overwrites and deletes on keys shared by all writers;
- **faults**: SIGKILL of a syncer at a random moment, inside an upload and inside a
  merge txn and after a delta went out inline before its store (the crash points of
  :mod:`evsync.faults`), the S3 server taken down and
  brought back (:class:`~tests.reliability.proxy.ChaosProxy`), slowed down, the MQTT
  broker stopped and restarted; and all along, the bucket's object-created events
  reach the instances through a notifier that drops, duplicates and reorders them;
- **checks**: *at any time* every LMDB value has a valid header and no key's
  timestamp goes back (no write undone); *eventually* all instances hold identical
  records; *finally* those equal the last-writer-wins model of the writers' logs.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import REPO, Instance, Mosquitto, MotoServer
from tests.reliability.model import (
    Records,
    differences,
    last_writer_wins,
    read_ops,
    read_records,
)
from tests.reliability.proxy import ChaosProxy

FAULT_LINE = "evsync fault: SIGKILL at "
CHECK_INTERVAL = 0.5
NOTIFIER_POLL = 0.1
MONITOR_POLL = 0.05


@dataclass(frozen=True)
class ChaosSettings:
    """One run's knobs; the defaults are the short run of `make test`."""

    seed: int = 1
    seconds: float = 25.0  # of load and faults, before the convergence phase
    instances: int = 3
    keys: int = 40
    write_rate: float = 25.0  # write txns per second per writer
    fault_every: tuple[float, float] = (1.0, 2.5)
    # background crash points on every syncer, besides the scheduled faults
    crash_rates: str = "upload=0.002,stored=0.005,merge=0.01,published=0.005"
    drop: float = 0.3  # share of notifications dropped
    duplicate: float = 0.2  # share sent twice
    max_delay: float = 0.8  # each one delayed 0..max_delay s, so they arrive out of order
    listing_interval: str = "3s"  # the fallback that covers dropped notifications
    converge_timeout: float = 90.0
    # the last this many instances imitate Lightning Stream (lightningstream.only: they
    # read and write only .pb.gz); the others then also write .pb.gz for them (issue 17)
    ls_only_nodes: int = 0
    # the instances also announce their objects, small deltas inside the announcement's
    # companion before their store (issue 18 §2): peers merge those without a GET
    publish: bool = True


@dataclass
class Summary:
    """What a run did and found."""

    seed: int
    seconds: float = 0.0
    operations: int = 0
    keys: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    checks: collections.Counter[str] = field(default_factory=collections.Counter)
    notifications: collections.Counter[str] = field(default_factory=collections.Counter)
    converged_after: float | None = None
    failures: list[str] = field(default_factory=list)

    def render(self) -> str:
        def counts(c: collections.Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

        verdict = "PASSED" if not self.failures else "FAILED"
        lines = [
            f"reliability run (seed {self.seed}): {verdict}",
            f"  load:          {self.operations} acknowledged operations on {self.keys} keys "
            f"in {self.seconds:.0f} s",
            f"  faults:        {sum(self.faults.values())} ({counts(self.faults)})",
            f"  notifications: {counts(self.notifications)}",
            f"  checks passed: {counts(self.checks)}",
            "  converged:     "
            + (f"{self.converged_after:.1f} s after the faults stopped"
               if self.converged_after is not None else "no"),
        ]
        lines += [f"  FAILURE: {f}" for f in self.failures]
        return "\n".join(lines)


class Node:
    """One evsync process (restartable, killable) and its writer process."""

    def __init__(self, index: int, root: Path, storage: dict[str, Any],
                 overrides: dict[str, Any], crash_rates: str, seed: int) -> None:
        self.name = f"node{index}"
        self.index = index
        self.instance = Instance(self.name, root, storage, **overrides)
        self.crash_rates = crash_rates
        self.seed = seed
        self.proc: subprocess.Popen[bytes] | None = None
        self.writer: subprocess.Popen[bytes] | None = None
        self.writer_log = self.instance.dir / "ops.jsonl"
        self.faults_off = root / "faults-off"
        self.starts = 0
        self.hold = threading.Event()  # set while a fault keeps the node down on purpose
        self.lock = threading.Lock()

    @property
    def lmdb_path(self) -> Path:
        return self.instance.lmdb_path

    def start(self, faults: str | None = None) -> None:
        """Start evsync with ``faults`` as its crash points (default: the background rates)."""
        env = dict(os.environ)
        env["EVSYNC_FAULTS"] = self.crash_rates if faults is None else faults
        env["EVSYNC_FAULTS_SEED"] = f"{self.seed}-{self.index}-{self.starts}"
        env["EVSYNC_FAULTS_UNTIL"] = str(self.faults_off)
        self.starts += 1
        with self.instance.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "evsync", "-c", str(self.instance.config_path), "sync"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def start_writer(self, settings: ChaosSettings) -> None:
        self.writer = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.writer", str(self.lmdb_path),
             str(self.writer_log), "--writer", str(self.index), "--seed", str(settings.seed),
             "--keys", str(settings.keys), "--rate", str(settings.write_rate)],
            cwd=REPO,
        )

    def stop_writer(self) -> None:
        """SIGTERM, then the current txn ends the writer; one that has not exited in 20 s
        is killed (the run fails, but leaves no process behind)."""
        if self.writer is not None and self.writer.poll() is None:
            self.writer.send_signal(signal.SIGTERM)
            try:
                self.writer.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.writer.kill()
                self.writer.wait()
                raise

    def crash_points(self) -> collections.Counter[str]:
        """How often this node died at each crash point, from its log."""
        found: collections.Counter[str] = collections.Counter()
        for line in self.instance.log().splitlines():
            if line.startswith(FAULT_LINE):
                found[line[len(FAULT_LINE):].strip()] += 1
        return found

    def close(self) -> None:
        try:
            self.stop_writer()
        finally:
            self._stop_syncer()

    def _stop_syncer(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


class Notifier:
    """Plays S3's bucket notifications: each new object becomes an event on the broker,
    and each event may be dropped, sent twice, or held back so that events overtake
    each other."""

    def __init__(self, s3: Any, bucket: str, broker: Mosquitto, topic: str,
                 settings: ChaosSettings, rng: random.Random, summary: Summary) -> None:
        self.s3, self.bucket, self.topic = s3, bucket, topic
        self.settings, self.rng, self.summary = settings, rng, summary
        self.seen: set[str] = set()
        self.pending: list[tuple[float, str, int]] = []
        self.stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"notifier-{topic}")
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(NOTIFIER_POLL):
            try:
                self._discover()
            except Exception:  # noqa: BLE001 - a listing hiccup only delays events
                continue
            self._send_due()

    def _discover(self) -> None:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key in self.seen:
                    continue
                self.seen.add(key)
                if self.rng.random() < self.settings.drop:
                    self.summary.notifications["dropped"] += 1
                    continue
                copies = 2 if self.rng.random() < self.settings.duplicate else 1
                if copies == 2:
                    self.summary.notifications["duplicated"] += 1
                for _ in range(copies):
                    due = time.monotonic() + self.rng.uniform(0, self.settings.max_delay)
                    self.pending.append((due, key, int(obj["Size"])))

    def _send_due(self) -> None:
        now = time.monotonic()
        due = sorted(p for p in self.pending if p[0] <= now)
        self.pending = [p for p in self.pending if p[0] > now]
        for _at, key, size in due:
            record = {
                "eventVersion": "2.1", "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": self.bucket}, "object": {"key": key, "size": size}},
            }
            info = self.client.publish(self.topic, json.dumps({"Records": [record]}), qos=1)
            sent = info.rc == mqtt.MQTT_ERR_SUCCESS
            self.summary.notifications["published" if sent else "lost (broker down)"] += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()


class Cluster:
    """Everything one run needs; use as a context manager, then :meth:`run`."""

    def __init__(self, root: Path, settings: ChaosSettings) -> None:
        self.root = root
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.summary = Summary(seed=settings.seed)
        self.moto = MotoServer()
        self.proxy: ChaosProxy | None = None
        self.broker = Mosquitto(root / "mosquitto")
        self.nodes: list[Node] = []
        self.notifier: Notifier | None = None
        self.topic = f"evsync-chaos-{uuid.uuid4().hex[:8]}"
        self.bucket = f"chaos-{uuid.uuid4().hex[:10]}"
        self.last_seen: dict[tuple[str, bytes], int] = {}
        self._stop_monitor = threading.Event()
        self._stop_checker = threading.Event()
        self._threads: list[threading.Thread] = []
        self._read_lock = threading.Lock()

    # ------------------------------------------------------------------ set-up

    def __enter__(self) -> Cluster:
        self.moto.start()
        self.moto.client().create_bucket(Bucket=self.bucket)
        self.proxy = ChaosProxy(self.moto.port).up()
        self.broker.start()
        storage = {
            "type": "s3",
            "options": {
                "bucket": self.bucket, "endpoint_url": self.proxy.endpoint,
                "region": "us-east-1", "access_key": "test", "secret_key": "test",
                "dial_timeout": "1s", "read_timeout": "2s",
            },
            "cleanup": {"interval": "5s", "must_keep_interval": "10s"},
        }
        overrides = {
            "notify": {"listing_interval": self.settings.listing_interval,
                       "mqtt": {"url": self.broker.url, "topic": self.topic,
                                "publish": self.settings.publish}},
            "log": {"level": "info"},
        }
        first_ls = self.settings.instances - self.settings.ls_only_nodes
        for i in range(self.settings.instances):
            node_overrides = dict(overrides)
            if self.settings.ls_only_nodes:
                node_overrides["lightningstream"] = (
                    {"only": True} if i >= first_ls else {"write": True}
                )
            node = Node(i + 1, self.root, storage, node_overrides, self.settings.crash_rates,
                        self.settings.seed)
            self.nodes.append(node)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop_monitor.set()
        self._stop_checker.set()
        for t in self._threads:
            t.join(timeout=10)
        if self.notifier is not None:
            self.notifier.close()
        try:
            for node in self.nodes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.close()  # every node, even after one whose writer hung
        finally:
            self.broker.stop()
            if self.proxy is not None:
                self.proxy.close()
            self.moto.stop()

    # ------------------------------------------------------------------ the run

    def run(self) -> Summary:
        """Load and faults for ``settings.seconds``, then the eventual and final checks."""
        s = self.settings
        self.notifier = Notifier(self.moto.client(), self.bucket, self.broker, self.topic,
                                 s, random.Random(s.seed + 1), self.summary)
        for node in self.nodes:
            node.start()
            node.start_writer(s)
        self._spawn(self._monitor, "monitor")
        self._spawn(self._checker, "checker")
        t0 = time.monotonic()
        self._inject_faults(until=t0 + s.seconds)
        self._end_faults()
        for node in self.nodes:
            node.stop_writer()
        self.summary.seconds = time.monotonic() - t0
        self._calm_down()
        self._converge()
        self._stop_checker.set()
        for node in self.nodes:
            self.summary.faults.update(f"crash at {p}" for p in node.crash_points().elements())
        return self.summary

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _monitor(self) -> None:
        """Restart every syncer that died and is not held down by a fault."""
        while not self._stop_monitor.wait(MONITOR_POLL):
            for node in self.nodes:
                with node.lock:
                    if not node.alive() and not node.hold.is_set():
                        node.start()

    def _checker(self) -> None:
        """At any time: valid headers, and no key's timestamp ever goes back."""
        while not self._stop_checker.wait(CHECK_INTERVAL):
            for node in self.nodes:
                self._check_now(node)

    def _check_now(self, node: Node) -> Records:
        # One open env per LMDB and process: the checker thread and the convergence
        # loop take turns.
        with self._read_lock:
            return self._check_records(node)

    def _check_records(self, node: Node) -> Records:
        try:
            records = read_records(node.lmdb_path)
        except AssertionError as exc:
            self._fail(f"{node.name}: {exc}")
            return {}
        self.summary.checks["valid headers"] += 1
        went_back = [
            key for key, (ts, _d, _v) in records.items()
            if ts < self.last_seen.get((node.name, key), 0)
        ]
        for key, (ts, _d, _v) in records.items():
            self.last_seen[(node.name, key)] = max(ts, self.last_seen.get((node.name, key), 0))
        if went_back:
            self._fail(f"{node.name}: timestamp went back for {went_back[:5]}")
        else:
            self.summary.checks["no timestamp went back"] += 1
        return records

    def _fail(self, message: str) -> None:
        if message not in self.summary.failures:
            self.summary.failures.append(message)

    # ------------------------------------------------------------------ faults

    def _inject_faults(self, until: float) -> None:
        kinds = ["kill -9", "crash in upload", "crash in merge", "s3 outage", "s3 slow",
                 "mqtt restart"]
        # Each kind once first, in random order, so that a short run has them all.
        order = self.rng.sample(kinds, len(kinds))
        while time.monotonic() < until:
            time.sleep(self.rng.uniform(*self.settings.fault_every))
            kind = order.pop() if order else self.rng.choice(kinds)
            getattr(self, "_fault_" + kind.replace(" -9", "9").replace(" ", "_"))()
            self.summary.faults[kind] += 1

    def _fault_kill9(self) -> None:
        node = self.rng.choice(self.nodes)
        with node.lock:
            node.kill()  # the monitor restarts it

    def _crash_at(self, point: str) -> None:
        """Restart a node so that it dies at ``point`` the first time it gets there."""
        node = self.rng.choice(self.nodes)
        with node.lock:
            node.kill()
            node.start(faults=f"{point}=1")

    def _fault_crash_in_upload(self) -> None:
        self._crash_at("upload")  # the restarted syncer uploads what its writer wrote

    def _fault_crash_in_merge(self) -> None:
        self._crash_at("merge")  # startup merges every instance's newest object

    def _fault_s3_outage(self) -> None:
        assert self.proxy is not None
        self.proxy.down()
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.proxy.up()

    def _fault_s3_slow(self) -> None:
        assert self.proxy is not None
        self.proxy.slow(self.rng.uniform(0.5, 3.0))  # beyond read_timeout at the top
        time.sleep(self.rng.uniform(1.0, 3.0))
        self.proxy.slow(0)

    def _fault_mqtt_restart(self) -> None:
        self.broker.stop()
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.broker.start()

    def _end_faults(self) -> None:
        assert self.proxy is not None
        self.proxy.slow(0)
        self.proxy.up()
        if self.broker.proc is None:
            self.broker.start()

    def _calm_down(self) -> None:
        """Turn the crash points off, without a restart: a restart uploads everything and
        would hide a change that a running syncer failed to ship."""
        (self.root / "faults-off").touch()

    # ------------------------------------------------------------------ checks

    def _converge(self) -> None:
        """Eventually identical everywhere; finally equal to the last-writer-wins model."""
        ops = read_ops(node.writer_log for node in self.nodes)
        self.summary.operations = len(ops)
        model = last_writer_wins(ops)
        self.summary.keys = len(model)
        t0 = time.monotonic()
        deadline = t0 + self.settings.converge_timeout
        views: dict[str, Records] = {}
        while time.monotonic() < deadline:
            views = {node.name: self._check_now(node) for node in self.nodes}
            if all(v == model for v in views.values()):
                self.summary.converged_after = time.monotonic() - t0
                self.summary.checks["identical everywhere"] += 1
                self.summary.checks["equal to the last-writer-wins model"] += 1
                return
            time.sleep(0.2)
        first = next(iter(views.values()), {})
        if any(v != first for v in views.values()):
            self._fail("instances did not converge within "
                       f"{self.settings.converge_timeout:.0f} s")
        for name, view in views.items():
            diff = differences(model, view)
            if diff:
                self._fail(f"{name} differs from the model: " + "; ".join(diff))
