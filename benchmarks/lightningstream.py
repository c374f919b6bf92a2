"""The Lightning Stream ``.pb.gz`` format against evsync's own ``.evs.zst`` (issue 17).

What is measured
----------------
One LMDB with one ``records`` DBI of N native-header records (keys ``key%09d``, 50-byte
values, N = 1,000,000 by default) is built once. Then, in this one process, so that the
ratios compare like with like on the same machine state:

* ``write``: ``dump_native`` of the LMDB into a ``.evs.zst`` and into a ``.pb.gz``
  object (full dump, one read txn; the ``.pb.gz`` writer spools the DBI's KVs to a
  temporary file because a DBI's length prefix comes before its entries);
* ``read+merge``: what the receiver does with a fetched object, into an empty LMDB:
  ``.evs.zst`` is read once, each frame checked before it is handed out; ``.pb.gz``
  is verified whole (``verify``, every check), then read again with ``verified=True``;
  both merged by ``Merger`` (native mode, batched write txns);
* two data shapes: ``fixed`` (the house shape of ``dump_merge.py``: keys ``key%09d``,
  50-byte values) and ``varied`` (10..100-byte values), where the ``.pb.gz`` reader's
  same-shape runs (struct over fixed-size records) rarely apply and each KV takes one
  Python step;
* ``heap peak``: each step again under ``tracemalloc`` (slower, so its time is not
  used): the most memory Python held at once, which must not grow with N.

Each timed step runs ``--repeat`` times (default 2) and the best time is kept; the
formats alternate, so neither always runs on a warmer page cache.
Goals: ``.pb.gz`` read+merge and write each within 1.5x of ``.evs.zst``.
Run from the repository: ``PYTHONPATH=. .venv/bin/python benchmarks/lightningstream.py
[--records 1000000] [--shapes fixed,varied]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

from evsync.config import LmdbConfig, LmdbOptions
from evsync.gcpause import collector_paused
from evsync.lmdb.dump import dump_native
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.header import encode_header
from evsync.lmdb.merge import Merger
from evsync.snapshot import EVS_ZST, LS_PB_GZ, SnapshotFormat

NS = 1_000_000_000
TS = 1_800_000_000 * NS
MAP_SIZE = 8 << 30
VALUE = b"v" * 50
BUILD_BATCH = 100_000


def open_env(path: Path) -> LmdbEnv:
    return LmdbEnv(
        LmdbConfig(
            name="bench",
            path=str(path),
            schema_tracks_changes=True,
            options=LmdbOptions(create=True, map_size=MAP_SIZE),
        )
    )


def value(i: int, shape: str) -> bytes:
    """``fixed``: 50 bytes, the house data shape; ``varied``: 10..100 bytes, so that no two
    neighbours need share a size and the reader's same-shape runs rarely apply."""
    if shape == "fixed":
        return VALUE
    return b"v" * (10 + (i * 7919) % 91)


def build(path: Path, n: int, shape: str) -> None:
    env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=8)
    db = env.open_db(b"records")
    for start in range(0, n, BUILD_BATCH):
        with env.begin(write=True) as txn:
            txn.cursor(db=db).putmulti(
                (b"key%09d" % i, encode_header(TS + i, 1, 0) + value(i, shape))
                for i in range(start, min(n, start + BUILD_BATCH))
            )
    env.close()


def write_step(fmt: SnapshotFormat, src: Path, out: Path) -> float:
    lenv = open_env(src)
    try:
        t0 = time.perf_counter()
        with out.open("wb") as f:
            dump_native(lenv, f, db="main", instance="bench", timestamp_ns=TS, fmt=fmt)
        return time.perf_counter() - t0
    finally:
        lenv.close()


def merge_step(fmt: SnapshotFormat, obj: Path, dst: Path) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    lenv = open_env(dst)
    try:
        t0 = time.perf_counter()
        with obj.open("rb") as f, collector_paused():  # as the syncer does
            stream = fmt.open_checked(f)  # one pass where the format checks as it reads
            if stream is None:
                f.seek(0)
                fmt.verify(f)
                f.seek(0)
                stream = fmt.reader(f, verified=True)
            result = Merger(lenv).merge(stream.dbis())
        seconds = time.perf_counter() - t0
        assert result.entries == result.written, result
        return seconds
    finally:
        lenv.close()


def heap_peak(step: Callable[[], Any]) -> float:
    """MB Python held at most while ``step`` ran."""
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, py-lmdb {lmdb.__version__}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def bench(n: int, root: Path, repeat: int, shape: str) -> None:
    src = root / f"src-{shape}"
    build(src, n, shape)
    fmts = {"evs.zst": EVS_ZST, "pb.gz": LS_PB_GZ}
    objs = {ext: root / f"obj.{ext}" for ext in fmts}
    write: dict[str, float] = {ext: float("inf") for ext in fmts}
    merge: dict[str, float] = {ext: float("inf") for ext in fmts}
    for _ in range(repeat):
        for ext, fmt in fmts.items():
            write[ext] = min(write[ext], write_step(fmt, src, objs[ext]))
        for ext, fmt in fmts.items():
            merge[ext] = min(merge[ext], merge_step(fmt, objs[ext], root / f"dst-{ext}"))
    heap_w = {
        ext: heap_peak(lambda f=fmt, e=ext: write_step(f, src, root / f"heap.{e}"))
        for ext, fmt in fmts.items()
    }
    heap_m = {
        ext: heap_peak(lambda f=fmt, e=ext: merge_step(f, objs[e], root / f"dst-heap-{e}"))
        for ext, fmt in fmts.items()
    }
    label = "50-byte values" if shape == "fixed" else "10..100-byte values"
    print(f"\n{n:,} records (key%09d, {label}), best of {repeat}")
    for ext in fmts:
        size = objs[ext].stat().st_size / 1e6
        print(
            f"  write {ext:8s} {write[ext] * 1000:9.1f} ms  {size:7.2f} MB"
            f"  heap peak {heap_w[ext]:6.1f} MB"
        )
    print(f"  write ratio pb.gz / evs.zst: {write['pb.gz'] / write['evs.zst']:.2f}x (goal <= 1.5x)")
    for ext in fmts:
        print(f"  read+merge {ext:8s} {merge[ext] * 1000:9.1f} ms  heap peak {heap_m[ext]:6.1f} MB")
    print(
        f"  read+merge ratio pb.gz / evs.zst: {merge['pb.gz'] / merge['evs.zst']:.2f}x"
        " (goal <= 1.5x)"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--shapes", default="fixed,varied")
    args = p.parse_args()
    print(machine())
    for shape in args.shapes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            bench(args.records, Path(tmp), args.repeat, shape)


if __name__ == "__main__":
    main()
