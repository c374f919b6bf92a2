"""Tombstone sweeper throughput and lock holds, against a plain cursor scan of the same data.

What is measured
----------------
For each size (100,000 and 1,000,000 records by default) the script builds an LMDB
with one ``records`` DBI of native-header values (20-byte keys, 40-byte values): a
third live, a third recent tombstones, a third tombstones older than the retention
(LS's sweeper-test mix). Then, in this one process:

* ``floor: cursor scan`` — one read txn iterating every value and parsing its header
  with ``struct``: the least a sweep can cost;
* ``sweep`` — ``Sweeper.run_pass`` with the default 50 ms lock / 0 ms release (the
  pause is skipped so the figure is the work, not the sleeping): records per second,
  the number of write txns and the longest one — what the application may wait for.

Run: ``.venv/bin/python benchmarks/sweeper.py [--sizes 100000,1000000]``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from evsync.config import LmdbConfig, LmdbOptions, SweeperConfig
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.header import FLAG_DELETED, HEADER_STRUCT, encode_header
from evsync.sweeper import Sweeper

NS = 1_000_000_000
NOW = 1_800_000_000 * NS
HOUR = 3600 * NS
CFG = SweeperConfig(enabled=True, retention_days=2, release_duration=0.0)


def build(path: Path, n: int) -> LmdbEnv:
    lenv = LmdbEnv(
        LmdbConfig(
            name="bench",
            path=str(path),
            options=LmdbOptions(create=True, map_size=4 << 30),
        )
    )
    handle = lenv.env.open_db(b"records", create=True)
    live = encode_header(NOW - 100 * HOUR, 1, 0) + b"v" * 40
    recent = encode_header(NOW - HOUR, 1, FLAG_DELETED)
    old = encode_header(NOW - 50 * HOUR, 1, FLAG_DELETED)
    values = (live, recent, old)
    with lenv.env.begin(write=True) as txn:
        txn.cursor(db=handle).putmulti((f"key-{i:016d}".encode(), values[i % 3]) for i in range(n))
    return lenv


def cursor_scan(lenv: LmdbEnv) -> float:
    handle = lenv.open_dbi(b"records")
    unpack = HEADER_STRUCT.unpack_from
    t0 = time.perf_counter()
    with lenv.begin() as txn:
        deleted = 0
        for _key, value in txn.cursor(db=handle).iternext():
            deleted += unpack(value)[3] & FLAG_DELETED
    return time.perf_counter() - t0


def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lenv = build(Path(tmp) / "db", n)
        floor = min(cursor_scan(lenv) for _ in range(3))
        sweeper = Sweeper(lenv, CFG, shadow_mode=False, clock_ns=lambda: NOW)
        t0 = time.perf_counter()
        stats = sweeper.run_pass(pause=lambda _s: None)
        took = time.perf_counter() - t0
        assert stats.removed == len(range(2, n, 3))  # every old tombstone, nothing else
        lenv.close()
    print(
        f"{n:>9,} records | floor: cursor scan {floor * 1000:8.1f} ms ({n / floor / 1e6:.2f} M/s)"
        f" | sweep {took * 1000:8.1f} ms ({n / took / 1e6:.2f} M/s, {took / floor:.2f}x floor)"
        f" | removed {stats.removed:,} in {stats.txns} txns,"
        f" longest {stats.longest_txn_seconds * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"# lock_duration {CFG.lock_duration * 1000:.0f} ms, retention {CFG.retention_days} d")
    for size in (int(s) for s in args.sizes.split(",")):
        run(size)


if __name__ == "__main__":
    main()
