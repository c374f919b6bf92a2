"""Where a full merge's time goes: each stage alone, against the putmulti floor.

What is measured
----------------
One process builds N entries (20-byte keys, 40-byte values; 1,000,000 by default),
encodes them as one object's entry stream (msgpack, zstd level 1 with checksum), and
times each stage of evsync's merge path alone over the same data, best of three with
the cyclic collector off (as the syncer runs a merge):

* ``zstd decompress`` and ``msgpack decode`` — done once per merge of a format-version-2
  object (each frame checked as it is read; a version-1 object is read twice, once to
  verify and once to merge);
* ``entry check`` — the reader's column-wise check of every entry;
* ``build pairs`` — (key, header + value) for new, live entries, as the merger's fast
  path builds them;
* ``putmulti`` — the pairs put into an empty LMDB in 100 write txns of 10,000: the
  floor of ``benchmarks/dump_merge.py``, the baseline every ratio is against.

The last line adds the stages up as a merge runs them, to compare with
``dump_merge.py``'s measured merge. Run:
``.venv/bin/python benchmarks/merge_stages.py [--entries 1000000]``.
"""

from __future__ import annotations

import argparse
import gc
import operator
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lmdb
import msgpack
import zstandard

from evsync.lmdb.merge import TXN_SLICE, _new_live_pairs
from evsync.snapshot.evs import CHECK_CHUNK, _valid_chunk

TS = 1_700_000_000_000_000_000
TXN_ENTRIES = 10_000
DECODE_FEED = 1 << 18  # bytes fed to the unpacker at a time, as the reader reads
REPEATS = 3
BENCH_TXN_ID = 7

_KEY, _FLAGS = operator.itemgetter(0), operator.itemgetter(2)


def best_of(fn: Callable[[], Any]) -> tuple[float, Any]:
    """The fastest of REPEATS runs, in seconds, and the last run's result."""
    best, result = float("inf"), None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def decode(raw: bytes, *, keep: bool = False) -> list[Any]:
    """Decode as the reader does: batch by batch, each batch dropped once used (kept
    only to hand the entries to the later stages, untimed)."""
    unpacker = msgpack.Unpacker(use_list=False, raw=False)
    out: list[Any] = []
    for start in range(0, len(raw), DECODE_FEED):
        unpacker.feed(raw[start : start + DECODE_FEED])
        batch = list(unpacker)
        if keep:
            out.extend(batch)
    return out


def check(entries: list[Any]) -> None:
    prev = None
    for start in range(0, len(entries), CHECK_CHUNK):
        prev = _valid_chunk(entries[start : start + CHECK_CHUNK], prev, None)
        if prev is None:
            raise SystemExit("the entry check rejected good entries")


def build(entries: list[Any], *, keep: bool = False) -> list[tuple[bytes, bytes]]:
    """The merger's fast path, slice by slice as it runs: the keys, the flags test and
    the pairs of its own ``_new_live_pairs`` (kept only for the floor, untimed)."""
    out: list[tuple[bytes, bytes]] = []
    for start in range(0, len(entries), TXN_SLICE):
        piece = entries[start : start + TXN_SLICE]
        keys = list(map(_KEY, piece))
        any(map(_FLAGS, piece))
        pairs = list(_new_live_pairs(piece, keys, BENCH_TXN_ID))
        if keep:
            out.extend(pairs)
    return out


def put(path: str, pairs: list[tuple[bytes, bytes]]) -> None:
    env = lmdb.open(path, map_size=1 << 32, max_dbs=4)
    db = env.open_db(b"records")
    for start in range(0, len(pairs), TXN_ENTRIES):
        with env.begin(write=True) as txn:
            txn.cursor(db=db).putmulti(pairs[start : start + TXN_ENTRIES])
    with env.begin(write=True) as txn:
        txn.drop(db, delete=False)  # empty again for the next repeat
    env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    n = parser.parse_args().entries
    entries = [(b"key-%016d" % i, TS + i, 0, b"v" * 40) for i in range(n)]
    raw = b"".join(map(msgpack.packb, entries))
    compressed = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(raw)
    gc.disable()
    decompress_s, _ = best_of(lambda: zstandard.ZstdDecompressor().decompress(compressed))
    decode_s, _ = best_of(lambda: decode(raw))
    decoded = decode(raw, keep=True)
    check_s, _ = best_of(lambda: check(decoded))
    build_s, _ = best_of(lambda: build(decoded))
    pairs = build(decoded, keep=True)
    with tempfile.TemporaryDirectory() as tmp:
        floor_s, _ = best_of(lambda: put(tmp, pairs))
    rows = [
        ("zstd decompress", decompress_s, 1),
        ("msgpack decode", decode_s, 1),
        ("entry check", check_s, 1),
        ("build pairs", build_s, 1),
        ("putmulti (floor)", floor_s, 1),
    ]
    print(f"{n:,} entries, collector off, best of {REPEATS}; ratios against putmulti")
    print(f"  {'stage':20} {'ms':>8} {'x floor':>8} {'per merge':>10}")
    for label, seconds, times in rows:
        print(f"  {label:20} {seconds * 1e3:8.1f} {seconds / floor_s:7.2f}x {times:>10}")
    total = sum(seconds * times for _label, seconds, times in rows)
    print(f"  {'sum as a merge runs':20} {total * 1e3:8.1f} {total / floor_s:7.2f}x")
    gc.enable()


if __name__ == "__main__":
    main()
