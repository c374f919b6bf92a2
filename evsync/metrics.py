"""Every Prometheus metric evsync exports, in one registry per daemon so tests can run several.

The names are the contract of ``/metrics`` (DESIGN §10); ``docs/operations.md`` lists
the alerts worth setting on them. Counters are updated where things happen; the LMDB
and per-instance gauges are filled at scrape time from state their owners publish
(the syncer thread owns the LMDB, so it refreshes :attr:`Syncer.lmdb_stats` and the
scrape only reads that copy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "evsync"

# ``*_created`` series double the page and no alert uses them; evsync owns its process.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds; from a same-host MQTT hop (~1 ms) to a listing fallback that missed events.
LAG_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip
# Seconds; a dump or merge of a few records to one of millions.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
)  # fmt: skip

StateReader = Callable[[], dict[str, Any]]


# evsync_inline_objects_total{result}: what became of an object a notification carried
INLINE_MERGED = "merged"
INLINE_INVALID = "invalid"
INLINE_MALFORMED = "malformed"
INLINE_UNUSED = "unused"

class Metrics:
    """The metric objects of one daemon; pass one instance to every component."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        db = ["db"]
        self.objects_stored = Counter(
            f"{PREFIX}_objects_stored", "Snapshot objects this instance stored.", db, registry=r
        )
        self.deltas_stored = Counter(
            f"{PREFIX}_deltas_stored",
            "Of the objects stored, the deltas (only what changed since the last upload).",
            db,
            registry=r,
        )
        self.objects_loaded = Counter(
            f"{PREFIX}_objects_loaded",
            "Remote (or own, at startup) objects merged.",
            ["db", "instance"],
            registry=r,
        )
        self.objects_rejected = Counter(
            f"{PREFIX}_objects_rejected",
            "Objects rejected and not fetched again: corrupt or too large (the LMDB was "
            "left untouched), or never mergeable into this LMDB.",
            ["db", "instance"],
            registry=r,
        )
        self.objects_too_old = Counter(
            f"{PREFIX}_objects_too_old",
            "Objects never merged because they are older than the tombstone retention "
            "(minus the load cutoff): the deletes they predate may be swept.",
            ["db", "instance"],
            registry=r,
        )
        self.ls_snapshots_stored = Counter(
            f"{PREFIX}_ls_snapshots_stored",
            "Full .pb.gz snapshots stored for Lightning Stream instances.",
            db,
            registry=r,
        )
        self.ls_snapshot_failures = Counter(
            f"{PREFIX}_ls_snapshot_failures",
            "Failed .pb.gz snapshots, by stage (dump or store); the next one dumps afresh.",
            ["db", "stage"],
            registry=r,
        )
        self.checkpoints_stored = Counter(
            f"{PREFIX}_checkpoints_stored",
            "Checkpoints (full objects dumped by a child process beside the delta chain) stored.",
            db,
            registry=r,
        )
        self.checkpoint_failures = Counter(
            f"{PREFIX}_checkpoint_failures",
            "Failed checkpoints, by stage (dump: the child process, or store); the chain is "
            "intact and a later one dumps afresh.",
            ["db", "stage"],
            registry=r,
        )
        self.checkpoints_skipped = Counter(
            f"{PREFIX}_checkpoints_skipped",
            "Checkpoints of other instances stepped over without a fetch: the receiver was "
            "at or past their point.",
            ["db", "instance"],
            registry=r,
        )
        self.store_failures = Counter(
            f"{PREFIX}_store_failures", "Failed store attempts (each retry counts).", db, registry=r
        )
        self.objects_vanished = Counter(
            f"{PREFIX}_objects_vanished",
            "Listed or hinted objects whose GET answered 404 (cleaned up, or forged hints).",
            db,
            registry=r,
        )
        self.load_failures = Counter(
            f"{PREFIX}_load_failures", "Failed object downloads.", ["db", "instance"], registry=r
        )
        self.list_failures = Counter(
            f"{PREFIX}_list_failures", "Failed bucket listings.", db, registry=r
        )
        self.dump_failures = Counter(
            f"{PREFIX}_dump_failures",
            "Dumps of the LMDB that failed (a value without a header, a DUPSORT DBI in "
            "native mode, an LMDB error); the change stays pending.",
            db,
            registry=r,
        )
        self.change_finder_deltas = Counter(
            f"{PREFIX}_change_finder_deltas",
            "Deltas by the path that found their changes: pagewalk (the leaf pages written "
            "since the last stored snapshot) or scan (every entry's header).",
            ["db", "path"],
            registry=r,
        )
        self.change_finder_fallbacks = Counter(
            f"{PREFIX}_change_finder_fallbacks",
            "Deltas whose changes were found by a full scan, by the reason the page walk "
            "could not serve them (no_pin, pin_expired, dupsort, page, ...).",
            ["db", "reason"],
            registry=r,
        )
        self.name_conflicts = Counter(
            f"{PREFIX}_instance_name_conflicts",
            "Objects found under this instance's name that this process did not store (two "
            "hosts configured with one instance name).",
            db,
            registry=r,
        )
        self.merge_failures = Counter(
            f"{PREFIX}_merge_failures",
            "Merges aborted by an LMDB error (the txn was rolled back).",
            db,
            registry=r,
        )
        self.inline_objects = Counter(
            f"{PREFIX}_inline_objects",
            "Deltas carried inside MQTT notifications, by result: merged (without a GET), "
            "invalid (failed verification: fetched from the bucket instead), malformed "
            "(unusable message: the object is fetched once announced), unused (pushed out "
            "or passed before merged).",
            ["db", "result"],
            registry=r,
        )
        self.bytes_uploaded = Counter(
            f"{PREFIX}_uploaded_bytes", "Bytes of objects stored.", db, registry=r
        )
        self.bytes_downloaded = Counter(
            f"{PREFIX}_downloaded_bytes", "Bytes of objects fetched.", db, registry=r
        )
        self.entries_merged = Counter(
            f"{PREFIX}_entries_merged", "Entries read from merged objects.", db, registry=r
        )
        self.entries_written = Counter(
            f"{PREFIX}_entries_written",
            "Entries a merge changed in the LMDB (remote side won).",
            db,
            registry=r,
        )
        self.merge_seconds = Histogram(
            f"{PREFIX}_merge_duration_seconds",
            "Fetch, verify and merge of one object.",
            db,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.dump_seconds = Histogram(
            f"{PREFIX}_dump_duration_seconds",
            "Dump of the LMDB into one object (before the store).",
            db,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.propagation_lag = Histogram(
            f"{PREFIX}_propagation_lag_seconds",
            "Object timestamp (its writer's clock) to merged here.",
            db,
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.write_lock_longest = Gauge(
            f"{PREFIX}_write_lock_longest_seconds",
            "Longest LMDB write transaction evsync held since start.",
            db,
            registry=r,
        )
        self.clock_skew = Gauge(
            f"{PREFIX}_clock_skew_seconds",
            "How far the newest object of an instance is ahead of the local clock (<=0 is fine).",
            ["db", "instance"],
            registry=r,
        )
        self.clock_skew_warnings = Counter(
            f"{PREFIX}_clock_skew_warnings",
            "Objects whose timestamp was ahead of the local clock by more than the threshold.",
            ["db", "instance"],
            registry=r,
        )
        self.cleaner_deleted = Counter(
            f"{PREFIX}_cleaner_deleted_objects",
            "Objects the cleaner deleted, by reason (newer_snapshot, stale_instance).",
            ["db", "reason"],
            registry=r,
        )
        self.cleaner_runs = Counter(
            f"{PREFIX}_cleaner_runs", "Cleaner passes completed.", db, registry=r
        )
        self.cleaner_failures = Counter(
            f"{PREFIX}_cleaner_failures",
            "Cleaner listings or deletes that failed.",
            db,
            registry=r,
        )
        self.sweeper_removed = Counter(
            f"{PREFIX}_sweeper_removed_tombstones",
            "Tombstones older than the retention removed from the LMDB.",
            db,
            registry=r,
        )
        self.sweeper_runs = Counter(
            f"{PREFIX}_sweeper_runs", "Sweeper passes completed.", db, registry=r
        )
        self.sweeper_entries = Gauge(
            f"{PREFIX}_sweeper_entries",
            "Entries seen by the last sweep, by state (live, deleted).",
            ["db", "state"],
            registry=r,
        )
        self.sweeper_seconds = Histogram(
            f"{PREFIX}_sweeper_duration_seconds",
            "Wall time of one whole sweep (pauses included).",
            db,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.info = Gauge(
            f"{PREFIX}_build_info", "Always 1; labels carry the version.", ["version"], registry=r
        )

    def observe_write_lock(self, db: str, seconds: float) -> None:
        """Raise the longest-write-lock gauge if ``seconds`` beats it."""
        gauge = self.write_lock_longest.labels(db)
        if seconds > gauge._value.get():
            gauge.set(seconds)

    def add_state_collector(self, read_state: StateReader) -> None:
        """Export the per-db state the syncers publish, read at scrape time."""
        self.registry.register(_StateCollector(read_state))


class _StateCollector(Collector):
    """Gauges cheaper read on demand than kept up to date: LMDB, remote instances, sources.

    ``read_state()`` returns ``{"dbs": {db: Syncer.metrics_state()}, "checks": {name:
    level}, "push": {source: status}}``.
    """

    def __init__(self, read_state: StateReader) -> None:
        self.read_state = read_state

    def collect(self) -> Iterator[Metric]:
        state = self.read_state()
        yield from _db_families(state.get("dbs", {}))
        yield from _daemon_families(state)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


def _db_families(dbs: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    lmdb_gauges = {
        "map_size": _gauge("lmdb_map_size_bytes", "LMDB map size.", ["db"]),
        "used_bytes": _gauge("lmdb_used_bytes", "LMDB pages in use, in bytes.", ["db"]),
        "last_txn_id": _gauge("lmdb_last_txn_id", "LMDB last committed txn id.", ["db"]),
        "readers": _gauge("lmdb_readers", "LMDB reader slots in use.", ["db"]),
        "max_readers": _gauge("lmdb_max_readers", "LMDB reader slots available.", ["db"]),
    }
    entries = _gauge(
        "lmdb_entries", "Entries per DBI (evsync's _sync* DBIs included).", ["db", "dbi"]
    )
    synced = _gauge("last_synced_txn_id", "Newest txn id whose data is in the bucket.", ["db"])
    upload_age = _gauge(
        "last_upload_age_seconds", "Seconds since this instance last stored an object.", ["db"]
    )
    seen_age = _gauge(
        "remote_newest_object_age_seconds",
        "Seconds since the newest object seen of each remote instance was written.",
        ["db", "instance"],
    )
    merged_age = _gauge(
        "remote_merged_object_age_seconds",
        "Seconds since the newest object merged of each remote instance was written.",
        ["db", "instance"],
    )
    startup = _gauge(
        "startup_done", "1 once every instance's newest object was merged at startup.", ["db"]
    )
    blocked = _gauge(
        "rejoin_blocked",
        "1 while the rejoin guard refuses to sync (away longer than the tombstone retention).",
        ["db"],
    )
    hints = CounterMetricFamily(
        f"{PREFIX}_hints",
        "Hints received, by the trigger source that delivered them.",
        labels=["db", "source"],
    )
    hints_first = CounterMetricFamily(
        f"{PREFIX}_hints_first",
        "Changes, by the trigger source that announced each one first.",
        labels=["db", "source"],
    )
    hints_dropped = CounterMetricFamily(
        f"{PREFIX}_hints_dropped",
        "Hints dropped unread: the name's GET answered 404 before (gone), too many "
        "instances known from hints only (too_many_unlisted_instances), or more names "
        "superseded before one drain than the queue keeps (superseded_overflow).",
        labels=["db", "reason"],
    )
    now = time.time()
    for db, st in dbs.items():
        lm = st.get("lmdb") or {}
        for key, family in lmdb_gauges.items():
            if key in lm:
                family.add_metric([db], lm[key])
        for dbi, count in (lm.get("entries") or {}).items():
            entries.add_metric([db, dbi], count)
        synced.add_metric([db], st.get("last_synced_txn_id", 0))
        if st.get("last_store_at") is not None:
            upload_age.add_metric([db], max(0.0, now - st["last_store_at"]))
        for inst, ts in (st.get("newest_seen_ts") or {}).items():
            seen_age.add_metric([db, inst], max(0.0, now - ts))
        for inst, ts in (st.get("merged_ts") or {}).items():
            merged_age.add_metric([db, inst], max(0.0, now - ts))
        startup.add_metric([db], 1 if st.get("startup_done") else 0)
        blocked.add_metric([db], 1 if st.get("rejoin_blocked") else 0)
        for source, count in (st.get("hints_received") or {}).items():
            hints.add_metric([db, source], count)
        for source, count in (st.get("hints_first") or {}).items():
            hints_first.add_metric([db, source], count)
        for reason, count in (st.get("hints_dropped") or {}).items():
            hints_dropped.add_metric([db, reason], count)
    yield from lmdb_gauges.values()
    yield from (entries, synced, upload_age, seen_age, merged_age, startup, blocked)
    yield from (hints, hints_first, hints_dropped)


HEALTH_LEVELS = {"ok": 0, "warning": 1, "error": 2}


def _daemon_families(state: dict[str, Any]) -> Iterator[Metric]:
    health = _gauge("health_check", "Health checks: 0 ok, 1 warning, 2 error.", ["check"])
    for check, level in (state.get("checks") or {}).items():
        health.add_metric([check], HEALTH_LEVELS.get(level, 2))
    connected = _gauge(
        "push_source_connected", "1 while a push source (mqtt, sqs) is receiving.", ["source"]
    )
    malformed = CounterMetricFamily(
        f"{PREFIX}_notifications_malformed",
        "Push messages that did not parse as an S3 event or an announcement.",
        labels=["source"],
    )
    received = CounterMetricFamily(
        f"{PREFIX}_notifications_received",
        "Push messages received (any shape).",
        labels=["source"],
    )
    other_bucket = CounterMetricFamily(
        f"{PREFIX}_notifications_other_bucket",
        "Events and announcements of another bucket (a shared broker), ignored.",
        labels=["source"],
    )
    for source, st in (state.get("push") or {}).items():
        other_bucket.add_metric([source], st.get("other_bucket", 0))
        connected.add_metric([source], 1 if st.get("connected") else 0)
        malformed.add_metric([source], st.get("malformed", 0))
        received.add_metric([source], st.get("messages", 0))
    yield from (health, connected, malformed, received, other_bucket)
