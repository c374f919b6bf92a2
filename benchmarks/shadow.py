"""Shadow-mode cost: main -> shadow plus the shadow dump, against a native dump of the same data.

What is measured
----------------
For each size (10,000 and 100,000 records by default) the script builds, in a temp
dir, an LMDB shaped like PowerDNS 4.7's: a ``records`` DBI of N raw values (no
header; 20-byte keys, 40-byte values) and a ``records_0`` DUPSORT|DUPFIXED index of
N/10 keys with two 4-byte ids each. Then, in this one process:

* ``floor: cursor scan`` — iterate every pair of both DBIs in one read txn: the
  least any change detection can cost;
* ``floor: native dump`` — the same records stored *with* native headers in a second
  LMDB, dumped by ``dump_native``: what a full upload costs when the application
  writes the header itself (PowerDNS 4.8+), so no shadow is needed;
* ``seed`` — the first main -> shadow pass (every key new);
* ``main->shadow, 1 change`` — one value changed by a separate write txn, then the
  pass: a full sorted walk of both DBIs and one shadow put. This is the write-lock
  hold the application sees per local change;
* ``dump shadow`` — ``dump_shadow`` of the result (read txn, msgpack + zstd);
* ``cycle`` — the two above: evsync's work between a local commit and the upload;
* ``merge 1 remote entry`` — a one-entry object merged through the shadow in one
  write txn (no local change pending, so the walk is skipped);
* ``merge full object, all known`` — a full object of the same data (what a peer
  uploads after a one-record change), merged in one write txn: a lookup and compare
  per entry, nothing written. This is the write-lock hold of a typical remote change.

Each figure is the median of ``--repeat`` runs (5 by default). Ratios are against
``floor: native dump`` of the same size, measured in the same run.

Run: ``.venv/bin/python benchmarks/shadow.py [--sizes 10000,100000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

from evsync.config import LmdbConfig, LmdbOptions
from evsync.lmdb.dump import dump_native, dump_shadow
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.header import encode_value
from evsync.lmdb.shadow import Shadow
from evsync.snapshot import DbiInfo, SnapshotHeader, SnapshotReader, write_snapshot

T0 = 1_700_000_000_000_000_000
MAP_SIZE = 2 << 30


def open_env(path: Path, *, native: bool) -> LmdbEnv:
    """An evsync LmdbEnv on a fresh directory."""
    cfg = LmdbConfig(
        name="bench",
        path=str(path),
        schema_tracks_changes=native,
        dupsort_hack=not native,
        options=LmdbOptions(create=True, map_size=MAP_SIZE),
    )
    return LmdbEnv(cfg)


def record(i: int) -> tuple[bytes, bytes]:
    """The i-th record: a 20-byte key and a 40-byte value."""
    return f"rec-{i:016d}".encode(), f"value-{i:010d}-".encode().ljust(40, b"x")


def fill(lenv: LmdbEnv, n: int, *, native: bool) -> None:
    """N records and an N/10-key DUPSORT index, raw or with native headers."""
    env = lenv.env
    records = env.open_db(b"records", create=True)
    index = None if native else env.open_db(b"records_0", create=True, dupsort=True, dupfixed=True)
    with env.begin(write=True) as txn:
        items = []
        for i in range(n):
            key, value = record(i)
            items.append((key, encode_value(T0, 1, 0, value) if native else value))
        txn.cursor(db=records).putmulti(items)
        if index is not None:
            for i in range(n // 10):
                name = f"name-{i:010d}".encode()
                txn.put(name, struct.pack("=I", 2 * i), db=index)
                txn.put(name, struct.pack("=I", 2 * i + 1), db=index)


def change_one(lenv: LmdbEnv, i: int) -> None:
    """The application changes one record in its own write txn."""
    records = lenv.env.open_db(b"records")
    with lenv.env.begin(write=True) as txn:
        txn.put(record(i)[0], f"changed-{i}-{time.time_ns()}".encode(), db=records)


def scan(lenv: LmdbEnv) -> int:
    """Iterate every pair of every DBI in one read txn."""
    count = 0
    with lenv.read_synced_dbis() as (txn, dbis):
        for _name, handle in dbis:
            for _k, _v in txn.cursor(db=handle).iternext():
                count += 1
    return count


def one_entry_object() -> bytes:
    """A remote object holding one newer record."""
    header = SnapshotHeader(
        db="bench",
        instance="remote",
        hostname="h",
        timestamp_ns=T0 * 2,
        txn_id=1,
        dbis=(DbiInfo(b"records", 0, "", 1),),
    )
    buf = io.BytesIO()
    write_snapshot(buf, header, [[(record(5)[0], T0 * 2, 0, b"from-remote")]])
    return buf.getvalue()


def median_ms(
    fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None
) -> float:
    """Median wall time of ``fn`` in ms; ``setup`` runs untimed before each run."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench_size(n: int, repeat: int, root: Path) -> list[tuple[str, float]]:
    """Every figure for one size, in ms."""
    native = open_env(root / f"native-{n}", native=True)
    fill(native, n, native=True)
    shadow_env = open_env(root / f"shadow-{n}", native=False)
    fill(shadow_env, n, native=False)
    rows: list[tuple[str, float]] = []

    rows.append(("floor: cursor scan", median_ms(lambda: scan(shadow_env), repeat)))
    rows.append(
        (
            "floor: native dump",
            median_ms(
                lambda: dump_native(
                    native, io.BytesIO(), db="bench", instance="a", timestamp_ns=T0
                ),
                repeat,
            ),
        )
    )

    shadow = Shadow(shadow_env, dupsort_hack=True)
    t0 = time.perf_counter()
    shadow.update_from_main(T0)
    rows.append(("seed (first main->shadow)", (time.perf_counter() - t0) * 1000))

    counter = iter(range(10**9))
    rows.append(
        (
            "main->shadow, 1 change",
            median_ms(
                lambda: shadow.update_from_main(time.time_ns()),
                repeat,
                setup=lambda: change_one(shadow_env, next(counter) % n),
            ),
        )
    )
    rows.append(
        (
            "dump shadow",
            median_ms(
                lambda: dump_shadow(
                    shadow_env,
                    io.BytesIO(),
                    db="bench",
                    instance="a",
                    timestamp_ns=T0,
                    txn_id=shadow.synced_txn,
                ),
                repeat,
            ),
        )
    )
    rows.append(("cycle (main->shadow + dump)", rows[-2][1] + rows[-1][1]))

    data = one_entry_object()

    def merge_one() -> None:
        shadow.merge(SnapshotReader(io.BytesIO(data)).dbis(), timestamp_ns=time.time_ns())

    rows.append(("merge 1 remote entry", median_ms(merge_one, repeat)))

    full = io.BytesIO()
    dump_shadow(shadow_env, full, db="bench", instance="r", timestamp_ns=T0, txn_id=0)

    def merge_full() -> None:
        shadow.merge(SnapshotReader(io.BytesIO(full.getvalue())).dbis(), timestamp_ns=T0)

    rows.append(("merge full object, all known", median_ms(merge_full, repeat)))
    native.close()
    shadow_env.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, lmdb {lmdb.version()}, {platform.machine()}")
    with tempfile.TemporaryDirectory(prefix="evsync-bench-shadow-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            rows = bench_size(n, args.repeat, Path(tmp))
            floor = dict(rows)["floor: native dump"]
            print(f"\n{n:,} records (+ {n // 10:,} index keys x 2 ids)")
            print(f"  {'step':32} {'ms':>9} {'x native dump':>14}")
            for label, ms in rows:
                print(f"  {label:32} {ms:9.1f} {ms / floor:14.2f}")


if __name__ == "__main__":
    main()
