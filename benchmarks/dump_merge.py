"""Full dump and full merge against their floors: time, peak memory, longest write-lock hold.

What is measured
----------------
For each size (10,000 and 1,000,000 records by default) the script builds an LMDB with
one ``records`` DBI of native-header values (keys ``key%09d``, 50-byte values: the
shape issue 20 measured Lightning Stream on), then runs each step below in a fresh
child process, so that each reports its own peak RSS:

* ``floor: dump`` — one read txn, a raw cursor scan, each (key, timestamp, flags,
  value) packed with msgpack and the stream compressed with zstd (level 3, checksum):
  the least a full dump can cost;
* ``dump`` — evsync's ``dump_native`` of the same LMDB into the same kind of file;
* ``floor: merge`` — the same records put into an empty LMDB with ``putmulti`` in
  batches of 10,000 per write txn, values already built: the least a merge can cost;
* ``merge`` — the receiver's path: the dumped object (format version 2) read once,
  each zstd frame checked before ``Merger.merge`` applies it, into an empty LMDB, with
  the longest write txn (a version-1 object would be verified whole, then read again);
* ``floor: read all`` — one read txn over the populated LMDB below, every (key, value)
  read by a cursor: the least a merge that must look at every stored value can cost;
* ``merge populated`` — the same object merged into a copy of the source LMDB in which
  one record is older than the object's (the periodic full object a live receiver
  gets every ``deltas.max_chain`` changes): one record is written, every other is read
  and compared;
* ``floor: change scan`` — one read txn, a values-only cursor scan comparing each
  header's txn id: the least it costs to find what changed without an index;
* ``delta`` — evsync's ``dump_native_delta`` after one record changed (the record was
  written in a later txn than the rest), with the object's size against the full dump's.

Peak RSS counts the LMDB pages a step maps while it scans or writes, which grow with
the database; so ``dump`` and ``merge`` run a second time under ``tracemalloc`` for
``heap peak``, the most memory Python held at once (a streaming step keeps it flat
from 10,000 to 1,000,000 records).

Issue 7's targets: dump ≤ 1.5× its floor, merge ≤ 2× its floor, write txns ≤ 50 ms.
Run: ``.venv/bin/python benchmarks/dump_merge.py [--sizes 10000,1000000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import zstandard

from evsync.config import LmdbConfig, LmdbOptions
from evsync.gcpause import collector_paused
from evsync.lmdb.dump import dump_native, dump_native_delta
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.header import HEADER_SIZE, HEADER_STRUCT, encode_header
from evsync.lmdb.merge import Merger
from evsync.snapshot import SnapshotReader, verify_snapshot
from evsync.snapshot.evs import EVS_ZST

NS = 1_000_000_000
TS = 1_800_000_000 * NS
MAP_SIZE = 8 << 30
FLOOR_BATCH = 10_000


def open_env(path: Path) -> LmdbEnv:
    return LmdbEnv(LmdbConfig(name="bench", path=str(path), schema_tracks_changes=True,
                              options=LmdbOptions(create=True, map_size=MAP_SIZE)))


VALUE = b"v" * 50


def key(i: int) -> bytes:
    return b"key%09d" % i


def build(path: Path, n: int) -> None:
    env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=8)
    db = env.open_db(b"records")
    with env.begin(write=True) as txn:
        txn.cursor(db=db).putmulti(
            (key(i), encode_header(TS + i, 1, 0) + VALUE) for i in range(n)
        )
    with env.begin(write=True) as txn:  # the one change a delta ships
        txn.put(key(n // 2), encode_header(TS + n, txn.id(), 0) + b"w" * 50, db=db)
    env.close()


def build_populated(src: Path, dst: Path, n: int) -> None:
    """A copy of ``src`` in which one record is older than the source's (and so than the
    dumped object's): the merge must write exactly that one."""
    dst.mkdir()
    shutil.copy(src / "data.mdb", dst / "data.mdb")
    env = lmdb.open(str(dst), map_size=MAP_SIZE, max_dbs=8)
    db = env.open_db(b"records")
    with env.begin(write=True) as txn:
        txn.put(key(n // 3), encode_header(TS - 1, txn.id(), 0) + b"o" * 50, db=db)
    env.close()


# ------------------------------------------------------------------ the steps (children)


def floor_dump(src: Path, out: Path) -> dict[str, Any]:
    env = lmdb.open(str(src), map_size=MAP_SIZE, max_dbs=8, readonly=True)
    db = env.open_db(b"records", create=False)
    unpack = HEADER_STRUCT.unpack_from
    t0, c0 = time.perf_counter(), time.process_time()
    with out.open("wb") as f, env.begin() as txn:
        packer = msgpack.Packer(use_bin_type=True)
        cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
        with cctx.stream_writer(f, closefd=False) as zw:
            buf = bytearray()
            for k, v in txn.cursor(db=db).iternext():
                ts, _txn, _ver, flags, _res, _extra = unpack(v)
                buf += packer.pack((k, ts, flags, v[HEADER_SIZE:]))
                if len(buf) >= 1 << 20:
                    zw.write(buf)
                    buf.clear()
            zw.write(buf)
    return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "bytes": out.stat().st_size}


def evsync_dump(src: Path, out: Path) -> dict[str, Any]:
    lenv = open_env(src)
    t0, c0 = time.perf_counter(), time.process_time()
    with out.open("wb") as f:
        result = dump_native(lenv, f, db="main", instance="bench", timestamp_ns=TS)
    return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "bytes": out.stat().st_size,
            "entries": result.stats.entries}


def floor_merge(src: Path, dst: Path) -> dict[str, Any]:
    # The values are built before the clock starts: the floor is LMDB's own cost.
    senv = lmdb.open(str(src), map_size=MAP_SIZE, max_dbs=8, readonly=True)
    sdb = senv.open_db(b"records", create=False)
    with senv.begin() as txn:
        items = list(txn.cursor(db=sdb).iternext())
    env = lmdb.open(str(dst), map_size=MAP_SIZE, max_dbs=8)
    db = env.open_db(b"records")
    longest = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(items), FLOOR_BATCH):
        t1 = time.perf_counter()
        with env.begin(write=True) as txn:
            txn.cursor(db=db).putmulti(items[start:start + FLOOR_BATCH])
        longest = max(longest, time.perf_counter() - t1)
    return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "longest_txn": longest}


def evsync_merge(obj: Path, dst: Path) -> dict[str, Any]:
    lenv = open_env(dst)
    t0, c0 = time.perf_counter(), time.process_time()
    with obj.open("rb") as f, collector_paused():  # as the syncer does
        stream = EVS_ZST.open_checked(f)
        if stream is None:  # a version-1 object: verified whole, then read again
            f.seek(0)
            verify_snapshot(f)
            f.seek(0)
            stream = SnapshotReader(f, verified=True)
        result = Merger(lenv).merge(stream.dbis())
    return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "longest_txn": result.longest_txn_seconds,
            "txns": result.txns, "entries": result.entries, "written": result.written}


def floor_scan_both(src: Path, _out: Path) -> dict[str, Any]:
    env = lmdb.open(str(src), map_size=MAP_SIZE, max_dbs=8, readonly=True)
    db = env.open_db(b"records", create=False)
    t0, c0 = time.perf_counter(), time.process_time()
    with env.begin() as txn:
        entries = sum(1 for _item in txn.cursor(db=db).iternext())
    return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "entries": entries}


def floor_scan(src: Path, _out: Path) -> dict[str, Any]:
    env = lmdb.open(str(src), map_size=MAP_SIZE, max_dbs=8, readonly=True)
    db = env.open_db(b"records", create=False)
    txn_id = struct.Struct(">Q").unpack_from
    t0, c0 = time.perf_counter(), time.process_time()
    changed = 0
    with env.begin() as txn:
        for v in txn.cursor(db=db).iternext(keys=False, values=True):
            if txn_id(v, 8)[0] > 1:
                changed += 1
    return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "entries": changed}


def evsync_delta(src: Path, out: Path) -> dict[str, Any]:
    lenv = open_env(src)
    t0, c0 = time.perf_counter(), time.process_time()
    with out.open("wb") as f:
        result = dump_native_delta(lenv, f, db="main", instance="bench", timestamp_ns=TS + 1,
                                   base_timestamp_ns=TS, since_txn=1, skip_txns=(),
                                   max_entries=100_000)
    assert result is not None
    return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "bytes": out.stat().st_size,
            "entries": result.stats.entries}


STEPS = {"floor-dump": floor_dump, "dump": evsync_dump, "floor-merge": floor_merge,
         "merge": evsync_merge, "floor-read-all": floor_scan_both, "floor-scan": floor_scan,
         "delta": evsync_delta}


def child(step: str, a: str, b: str, *, heap: bool = False) -> None:
    if heap:
        tracemalloc.start()
    result = STEPS[step](Path(a), Path(b))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if heap:
        result["heap_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
    print(json.dumps(result))


# ------------------------------------------------------------------ the driver


def run_step(step: str, a: Path, b: Path, *, heap: bool = False) -> dict[str, Any]:
    """One step in a fresh child; ``heap`` runs it again under tracemalloc (slower, so
    its time is not used) for the peak of memory Python allocated."""
    cmd = [sys.executable, __file__, "--child", step, str(a), str(b)]
    out = subprocess.run([*cmd, "--heap"] if heap else cmd,
                         check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# Lightning Stream on the same data shape (issue 20: LS built from commit 5e7215e, on a
# machine of this kind; it cannot be built here), printed beside evsync's figures
LS_SECONDS = {"dump": "0.25-0.35", "merge": "0.8-1.3", "merge populated": "0.59-0.76"}


def bench(n: int, root: Path) -> None:
    src = root / f"src-{n}"
    build(src, n)
    fd = run_step("floor-dump", src, root / f"floor-{n}.zst")
    d = run_step("dump", src, root / f"dump-{n}.evs.zst")
    fm = run_step("floor-merge", src, root / f"floor-dst-{n}")
    m = run_step("merge", root / f"dump-{n}.evs.zst", root / f"dst-{n}")
    dh = run_step("dump", src, root / f"dump-heap-{n}.evs.zst", heap=True)
    mh = run_step("merge", root / f"dump-{n}.evs.zst", root / f"dst-heap-{n}", heap=True)
    print(f"\n{n:,} records  (load average {os.getloadavg()[0]:.2f} before)")
    print(f"  floor: dump    {fd['seconds'] * 1000:9.1f} ms"
          f" (cpu {fd['cpu'] * 1000:7.1f})  {fd['bytes'] / 1e6:7.2f} MB"
          f"  peak RSS {fd['peak_rss_mb']:6.1f} MB")
    print(f"  dump           {d['seconds'] * 1000:9.1f} ms"
          f" (cpu {d['cpu'] * 1000:7.1f})  {d['bytes'] / 1e6:7.2f} MB"
          f"  peak RSS {d['peak_rss_mb']:6.1f} MB  ratio {d['seconds'] / fd['seconds']:.2f}x"
          f"  heap peak {dh['heap_peak_mb']:.1f} MB  LS {LS_SECONDS['dump']} s (goal <= 0.6 s)")
    print(f"  floor: merge   {fm['seconds'] * 1000:9.1f} ms"
          f" (cpu {fm['cpu'] * 1000:7.1f})  longest txn "
          f"{fm['longest_txn'] * 1000:6.1f} ms  peak RSS {fm['peak_rss_mb']:6.1f} MB")
    print(f"  merge          {m['seconds'] * 1000:9.1f} ms"
          f" (cpu {m['cpu'] * 1000:7.1f})  longest txn "
          f"{m['longest_txn'] * 1000:6.1f} ms ({m['txns']} txns)  peak RSS "
          f"{m['peak_rss_mb']:6.1f} MB  ratio {m['seconds'] / fm['seconds']:.2f}x"
          f"  heap peak {mh['heap_peak_mb']:.1f} MB  LS {LS_SECONDS['merge']} s (txn <= 50 ms)")
    populated = root / f"populated-{n}"
    build_populated(src, populated, n)
    fp = run_step("floor-read-all", populated, root / "unused")
    mp = run_step("merge", root / f"dump-{n}.evs.zst", populated)
    print(f"  floor: read all{fp['seconds'] * 1000:9.1f} ms"
          f" (cpu {fp['cpu'] * 1000:7.1f})  (every stored entry read)")
    print(f"  merge populated{mp['seconds'] * 1000:9.1f} ms"
          f" (cpu {mp['cpu'] * 1000:7.1f})  longest txn "
          f"{mp['longest_txn'] * 1000:6.1f} ms ({mp['txns']} txns, {mp['written']} written)"
          f"  peak RSS {mp['peak_rss_mb']:6.1f} MB  ratio {mp['seconds'] / fp['seconds']:.2f}x"
          f"  LS {LS_SECONDS['merge populated']} s")
    fs = run_step("floor-scan", src, root / "unused")
    dl = run_step("delta", src, root / f"delta-{n}.evs.zst")
    print(f"  floor: scan    {fs['seconds'] * 1000:9.1f} ms"
          f" (cpu {fs['cpu'] * 1000:7.1f})  ({fs['entries']} changed)")
    print(f"  delta          {dl['seconds'] * 1000:9.1f} ms"
          f" (cpu {dl['cpu'] * 1000:7.1f})  {dl['bytes']:7d} B "
          f"({dl['entries']} entries; the full dump is {d['bytes']:,} B, "
          f"{d['bytes'] / dl['bytes']:.0f}x)  peak RSS {dl['peak_rss_mb']:6.1f} MB  "
          f"ratio {dl['seconds'] / fs['seconds']:.2f}x")
    print(f"  load average {os.getloadavg()[0]:.2f} after")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,1000000")
    p.add_argument("--child", nargs=3, metavar=("STEP", "A", "B"))
    p.add_argument("--heap", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, heap=args.heap)
        return
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"py-lmdb {lmdb.__version__}, liblmdb {'.'.join(map(str, lmdb.version()))}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            bench(n, Path(tmp))


if __name__ == "__main__":
    main()
