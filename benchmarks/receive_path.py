"""Where a receiver's CPU goes per one-record delta: one syncer step, timed and profiled.

What is measured
----------------
Two syncers, ``a`` and ``b``, run in this process (no daemon, no MQTT): each on its own
LMDB of ``--records`` records (the same on both), sharing a bucket on a moto server
started on 127.0.0.1, configured as ``benchmarks/scale.py`` configures its daemons.
Each round commits one record on A, lets A's syncer upload it (a delta; a full object
every ``deltas.max_chain``), then hands B's syncer the batch that the MQTT listener
would have queued for the announcement and times that one step, ``Syncer.step``:
the LMDB stats refresh, the plan, the GET, verify, merge, bookkeeping and the upload
decision. CPU is ``time.process_time()`` around the step (this process has no other
busy thread), wall is ``perf_counter()``.

The figures: CPU per step for deltas and for full objects; the same step with an
empty batch (a loop iteration that has nothing to do: the baseline); and the MQTT
listener's share (parsing an announcement into a hint), timed alone. With
``--carried`` the deltas come inside inline companions as over MQTT (no GET), and
the listener's share is the companion's (parse, carried bytes and hints queued). Then the deltas'
steps again with the methods that make each stage wrapped in CPU timers (GET, verify,
merge, the recorder, the upload decision, the stats refresh), and once more under
cProfile (CPU timer) for the top functions by own time.

Run: ``.venv/bin/python benchmarks/receive_path.py [--rounds 300] [--records 10000]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import propagation as prop  # the sibling script, found through the path above
import scale

from evsync.config import load_config
from evsync.snapshot.base import SnapshotFormat
from evsync.storage import open_store
from evsync.storage.s3 import S3Store
from evsync.sync import Syncer
from evsync.sync.receiver import Receiver
from evsync.sync.recorder import Recorder
from evsync.sync.sender import Sender
from evsync.triggers.base import SOURCE_MQTT, Batch, Hint, HintQueue, hint_names
from evsync.triggers.s3events import (
    announcement,
    inline_companion,
    object_names,
    parse_announcement,
    parse_message,
)

DEFAULT_ROUNDS = 300
DEFAULT_RECORDS = 10_000
TOP_FUNCTIONS = 25
INLINE_MAX_BYTES = 64 * 1024  # --carried: notify.mqtt.inline_max_bytes's default
# the preloaded records' timestamp, the same on both LMDBs
STAMP = time.time_ns()
# the stages of a receiving step, timed by wrapping the method that makes each (CPU
# time, no profiler); they do not nest, and what is left is the step's own bookkeeping
STAGES = (
    ("GET (boto3 get_object + body read)", S3Store, "fetch"),
    ("verify (zstd, msgpack, checks)", SnapshotFormat, "verify"),
    ("merge (Merger: txns, commit)", Receiver, "_apply"),
    ("recorder.merged (stats, metrics, log)", Recorder, "merged"),
    ("upload decision (sender)", Sender, "maybe_upload"),
    ("LMDB stats refresh", Syncer, "refresh_lmdb_stats"),
    ("the whole step", Syncer, "step"),
)
WHOLE_STEP = STAGES[-1][0]  # nests the others: left out of the in-process split


class StageTimers:
    """CPU seconds spent in each stage while installed (wraps the stages' methods), and
    calls. ``clock``: ``time.process_time`` here (one busy thread), ``time.thread_time``
    in a daemon (benchmarks/stage_timers.py), where other threads run meanwhile."""

    def __init__(self, clock: Callable[[], float] = time.process_time) -> None:
        self.clock = clock
        self.seconds = dict.fromkeys((label for label, _cls, _attr in STAGES), 0.0)
        self.calls = dict.fromkeys(self.seconds, 0)
        self._saved: list[tuple[type, str, Any]] = []

    def install(self) -> None:
        """Wrap every stage's method."""
        for label, cls, attr in STAGES:
            original = getattr(cls, attr)
            self._saved.append((cls, attr, original))
            setattr(cls, attr, self._wrap(label, original))

    def _wrap(self, label: str, original: Any) -> Any:
        seconds, calls, clock = self.seconds, self.calls, self.clock

        def timed_stage(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += clock() - t0
                calls[label] += 1

        return timed_stage

    def uninstall(self) -> None:
        """Put the methods back."""
        for cls, attr, original in reversed(self._saved):
            setattr(cls, attr, original)
        self._saved.clear()


def make_syncer(name: str, workdir: Path, endpoint: str, bucket: str, records: int) -> Syncer:
    """A syncer configured like scale.py's daemons (MQTT left out: hints come from here)."""
    path = workdir / name
    env = prop.open_writer(path)
    scale.preload(env, records, STAMP)
    env.close()
    storage = prop.storage_section(scale.SCENARIO, path, endpoint, bucket)
    log = json.dumps({"level": "warning", "format": "json"})
    cfg_path = prop.write_config(
        workdir / f"{name}.yaml", name, path, scale.SCENARIO, (storage, "", log)
    )
    config = load_config(cfg_path)
    lcfg = config.lmdbs[prop.DB_NAME]
    return Syncer(
        config,
        lcfg,
        open_store(config.storage),
        HintQueue(prop.DB_NAME, name),
        stop_event=threading.Event(),
    )


class Companions:
    """With ``--carried``: A's small deltas as the inline companions its MQTT source
    would publish (``on_encoded``), and B's listener taking them as ``MqttSource``
    does (parse, carried bytes to the queue, then the hints), its CPU timed."""

    def __init__(self, a: Syncer, bucket: str) -> None:
        self.bucket = bucket
        self.encoded: list[tuple[str, bytes]] = []
        self.listener_cpu: list[float] = []
        a.sender.inline_max_bytes = INLINE_MAX_BYTES
        a.sender.on_encoded.append(lambda _db, name, data: self.encoded.append((name, data)))

    def deliver(self, queue: HintQueue, stored_before: str | None) -> bool:
        """The companion of A's last encoded delta into B's queue; False when none."""
        if not self.encoded:
            return False
        name, data = self.encoded.pop()
        self.encoded.clear()
        payload = inline_companion(
            self.bucket, name, data, db=prop.DB_NAME, instance="a", stored=stored_before
        )
        c0 = time.process_time()
        events, carried = parse_announcement(payload, INLINE_MAX_BYTES, "b")
        assert carried is not None
        queue.put_carried(SOURCE_MQTT, carried.key, carried.data)
        hint_names([queue], SOURCE_MQTT, object_names(events, self.bucket, "", None))
        self.listener_cpu.append((time.process_time() - c0) * 1000)
        return True


def one_round(
    a: Syncer, b: Syncer, i: int, records: int, companions: Companions | None = None
) -> tuple[Batch, bool]:
    """Commit one record on A and let A upload it; returns the batch B's MQTT listener
    would have queued for the announcement (or, ``companions``, for the companion of a
    delta), and whether the object is a delta."""
    key = prop.record_key((i * 7919) % records)
    stored_before = a.stats.last_store_name
    prop.write_one(a.lenv.env, a.lenv.env.open_db(prop.DBI), key, f"r-{i}".encode())
    a.step(Batch(local=True))
    stored = a.stats.last_store_name
    assert stored is not None
    if companions is None or not companions.deliver(b.queue, stored_before):
        b.queue.put(Hint(SOURCE_MQTT, name=stored))
    return b.queue.wait(0), "__D" in stored


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(CPU ms, wall ms) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - c0) * 1000, (time.perf_counter() - w0) * 1000


def mqtt_parse_ms(name: str, queue: HintQueue, count: int = 2000) -> float:
    """CPU ms per announcement: parse the S3-event JSON and queue the hint (listener side)."""
    payload = announcement("bucket", name, 300, db=prop.DB_NAME, instance="a", origin=None)
    c0 = time.process_time()
    for _ in range(count):
        events = parse_message(payload)
        hint_names([queue], SOURCE_MQTT, object_names(events, "bucket", "", None))
        queue.forget_instance("a")
    return (time.process_time() - c0) * 1000 / count


def run(rounds: int, records: int, *, carried: bool = False) -> None:
    """Set up A and B on moto, measure, profile, print."""
    workdir = Path(tempfile.mkdtemp(prefix="evsync-receive-"))
    moto = prop.MotoServer(workdir / "moto.log")
    syncers: list[Syncer] = []
    try:
        moto.wait_ready()
        bucket = "evsync-receive"
        moto.create_bucket(bucket)
        a = make_syncer("a", workdir, moto.endpoint, bucket, records)
        syncers.append(a)
        b = make_syncer("b", workdir, moto.endpoint, bucket, records)
        syncers.append(b)
        a.startup(retry_forever=True)
        b.startup(retry_forever=True)
        companions = Companions(a, bucket) if carried else None
        for i in range(20):  # warm caches, reach steady state
            batch, _delta = one_round(a, b, i, records, companions)
            b.step(batch)
        delta_cpu, delta_wall, full_cpu, idle_cpu = [], [], [], []
        for i in range(rounds):
            batch, delta = one_round(a, b, 100 + i, records, companions)
            cpu, wall = timed(lambda batch=batch: b.step(batch))  # type: ignore[misc]
            (delta_cpu if delta else full_cpu).append(cpu)
            if delta:
                delta_wall.append(wall)
            idle_cpu.append(timed(lambda: b.step(Batch()))[0])
        timers = StageTimers()
        timers.install()
        staged_cpu: list[float] = []
        try:
            for i in range(rounds):
                kept = dict(timers.seconds)  # A's step and full objects are not counted
                batch, delta = one_round(a, b, 50_000 + i, records, companions)
                if not delta:
                    b.step(batch)
                timers.seconds.update(kept)
                if delta:
                    staged_cpu.append(timed(lambda batch=batch: b.step(batch))[0])  # type: ignore[misc]
        finally:
            timers.uninstall()
        if companions is not None:  # the companions' listener, timed as they arrived
            parse = statistics.median(companions.listener_cpu)
        else:
            parse = mqtt_parse_ms(a.stats.last_store_name or "", HintQueue(prop.DB_NAME, "b"))
        profile = cProfile.Profile(time.process_time)  # CPU, not waits
        profiled = 0
        for i in range(rounds):
            batch, delta = one_round(a, b, 100_000 + i, records, companions)
            if not delta:
                b.step(batch)
                continue
            profile.enable()
            b.step(batch)
            profile.disable()
            profiled += 1
    finally:
        for syncer in syncers:
            syncer.close()
            syncer.store.close()
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(delta_cpu, delta_wall, full_cpu, idle_cpu, parse)
    steps = len(staged_cpu)
    total = sum(staged_cpu)
    print(
        f"\nstages of a delta step, CPU ms per step ({steps} steps, timed again with the "
        f"stages' methods wrapped: {total / steps:.3f} ms per step):"
    )
    stages = {k: v for k, v in timers.seconds.items() if k != WHOLE_STEP}
    for label, seconds in stages.items():
        print(f"  {label:44} {seconds * 1000 / steps:7.3f} ms  {seconds * 1000 / total:5.1%}")
    rest = total / 1000 - sum(stages.values())
    print(
        f"  {'the rest of the step (plan, ledger, peers)':44} {rest * 1000 / steps:7.3f} ms  "
        f"{rest * 1000 / total:5.1%}"
    )
    stats = pstats.Stats(profile)
    print(
        f"\ntop functions by own CPU time under cProfile ({profiled} delta steps; "
        "the profiler inflates small calls):"
    )
    stats.sort_stats("tottime").print_stats(TOP_FUNCTIONS)
    print("evsync's own functions by cumulative CPU time under cProfile:")
    stats.sort_stats("cumulative").print_stats(r"/evsync/", TOP_FUNCTIONS * 2)


def report(
    delta_cpu: list[float],
    delta_wall: list[float],
    full_cpu: list[float],
    idle_cpu: list[float],
    parse_ms: float,
) -> None:
    """The timed figures and their ratios to the empty step (the baseline)."""
    idle = statistics.median(idle_cpu)
    d = statistics.median(delta_cpu)
    print(
        f"delta steps  {len(delta_cpu):4d}: CPU median {d:.3f} ms, mean "
        f"{statistics.fmean(delta_cpu):.3f} ms, p90 {prop.percentile(delta_cpu, 0.9):.3f} ms; "
        f"wall median {statistics.median(delta_wall):.3f} ms"
    )
    if full_cpu:
        print(f"full steps   {len(full_cpu):4d}: CPU median {statistics.median(full_cpu):.3f} ms")
    print(
        f"empty step (baseline): CPU median {idle:.3f} ms; delta step / empty step "
        f"= {d / idle if idle else float('nan'):.1f}x"
    )
    print(f"MQTT listener, per message (parse + queue): {parse_ms:.3f} ms CPU")
    print(
        f"delta step + listener = {d + parse_ms:.3f} ms against the goal of 1.5 ms "
        f"({(d + parse_ms) / 1.5:.2f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    p.add_argument("--records", type=int, default=DEFAULT_RECORDS)
    p.add_argument(
        "--carried",
        action="store_true",
        help="deltas reach B inside inline companions (no GET), as over MQTT with "
        "inline_max_bytes set; the listener's figure is then the companion's",
    )
    args = p.parse_args(argv)
    run(args.rounds, args.records, carried=args.carried)
    return 0


if __name__ == "__main__":
    sys.exit(main())
