"""Finding and encoding a one-record change: the page-walk change finder against the full scan.

What is measured
----------------
For each size (10,000, 100,000 and 1,000,000 records by default) the script builds an
LMDB with one ``records`` DBI of native-header values (20-byte keys, 40-byte values),
stores a full dump (its snapshot becomes the finder's pin), then runs ``--rounds``
rounds of: one write txn changing one random record, then in the same process and
against the same LMDB state

* ``scan`` — ``dump_native_delta`` without a finder: every value's header is read;
* ``pagewalk`` — ``dump_native_delta`` with the :class:`ChangeFinder`: the two trees are
  compared by page number and only the changed leaves are read; its snapshot is then
  "stored", so the next round's base is this one (as the sender does).

Both write the same delta object (asserted byte for byte). The order of the two
alternates between rounds, so neither always runs on a warmer cache. Reported: p50 and
p90 of each, the ratio of the p50s, and the load average before and after (the
figures are only comparable within one run on a shared machine).

Issue 18's target: ``pagewalk`` ≤ 2 ms at 1,000,000 records.
Run: ``.venv/bin/python benchmarks/change_finder.py [--sizes 10000,100000,1000000]``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import lmdb

from evsync.config import LmdbConfig, LmdbOptions
from evsync.gcpause import collector_paused
from evsync.lmdb.dump import dump_native, dump_native_delta
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.header import encode_header
from evsync.lmdb.pagewalk import PATH_PAGEWALK, ChangeFinder

NS = 1_000_000_000
TS = 1_800_000_000 * NS
MAP_SIZE = 8 << 30
DEFAULT_ROUNDS = 50


class Paths:
    """Counts which path served each delta (the benchmark checks it is the page walk)."""

    def __init__(self) -> None:
        self.served: list[str] = []

    def change_finder_served(self, path: str) -> None:
        self.served.append(path)

    def change_finder_fallback(self, reason: str) -> None:
        pass


def key(i: int) -> bytes:
    return f"key-{i:016d}".encode()


def build(path: Path, n: int) -> None:
    env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=8)
    db = env.open_db(b"records")
    with env.begin(write=True) as txn:
        txn.cursor(db=db).putmulti(
            (key(i), encode_header(TS + i, 1, 0) + b"v" * 40) for i in range(n)
        )
    env.close()


def delta(lenv: LmdbEnv, since: int, finder: ChangeFinder | None) -> tuple[float, bytes, int]:
    out = io.BytesIO()
    t0 = time.perf_counter()
    result = dump_native_delta(lenv, out, db="main", instance="bench", timestamp_ns=TS,
                               base_timestamp_ns=TS - 1, since_txn=since, skip_txns=(),
                               max_entries=100_000, finder=finder)
    seconds = time.perf_counter() - t0
    assert result is not None and result.stats.entries == 1
    return seconds, out.getvalue(), result.header.txn_id


def bench(n: int, tmp: Path, rounds: int) -> None:
    path = tmp / f"lmdb-{n}"
    build(path, n)
    lenv = LmdbEnv(LmdbConfig(name="bench", path=str(path), schema_tracks_changes=True,
                              options=LmdbOptions(create=True, map_size=MAP_SIZE)))
    paths = Paths()
    finder = ChangeFinder(lenv, observer=paths)
    full = dump_native(lenv, io.BytesIO(), db="main", instance="bench", timestamp_ns=TS - 1,
                       finder=finder)
    finder.stored()
    since = full.header.txn_id
    db = lenv.open_dbi(b"records")
    rng = random.Random(n)
    scan_s: list[float] = []
    walk_s: list[float] = []
    with collector_paused():
        for r in range(rounds):
            with lenv.begin(write=True) as txn:
                txn.put(key(rng.randrange(n)), encode_header(TS, txn.id(), 0) + b"w" * 40, db=db)
            if r % 2:
                s, scanned, _ = delta(lenv, since, None)
                w, walked, txn_id = delta(lenv, since, finder)
            else:
                w, walked, txn_id = delta(lenv, since, finder)
                s, scanned, _ = delta(lenv, since, None)
            assert walked == scanned
            finder.stored()
            since = txn_id
            scan_s.append(s)
            walk_s.append(w)
    assert paths.served == [PATH_PAGEWALK] * rounds, paths.served
    finder.close()
    lenv.close()
    p50s, p50w = statistics.median(scan_s), statistics.median(walk_s)
    p90s = statistics.quantiles(scan_s, n=10)[-1]
    p90w = statistics.quantiles(walk_s, n=10)[-1]
    print(f"{n:>9,} records  scan p50 {p50s * 1000:8.2f} ms  p90 {p90s * 1000:8.2f} ms   "
          f"pagewalk p50 {p50w * 1000:6.3f} ms  p90 {p90w * 1000:6.3f} ms   "
          f"scan/pagewalk {p50s / p50w:7.1f}x", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = p.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"py-lmdb {lmdb.__version__}, liblmdb {'.'.join(map(str, lmdb.version()))}")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            bench(n, Path(tmp), args.rounds)
    print("load average after:  {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
