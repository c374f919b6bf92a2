"""The convergence runs' application: random puts, overwrites, deletes, logged once committed.

Run as a separate process per instance::

    python -m tests.reliability.writer LMDB_PATH LOG_PATH --writer 1 --seed 7 --keys 40 --rate 50

Every operation goes into one of the shared keys ``k000``…, so writers on different
instances overwrite each other. A write txn holds 1-4 operations; each is appended to
the log (one JSON line: key, timestamp, deleted, value) only after its txn committed,
so the log holds exactly the acknowledged writes. The timestamp is the wall clock, but
never at or below the one the key holds locally (as an application that read it would
do), so a later write on this instance always wins over what it saw. SIGTERM ends the
loop after the current txn.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import time
from pathlib import Path

import lmdb

from evsync.lmdb.header import FLAG_DELETED, encode_value, parse_header
from evsync.tools.lmdb_write import open_env

DBI = b"records"
DELETE_SHARE = 0.3
MAX_OPS_PER_TXN = 4
# a pause between txns ends early for nothing (a signal only sets a flag): keep it short
MAX_PAUSE_SECONDS = 0.5


def key_name(i: int) -> bytes:
    return f"k{i:03d}".encode()


def write_txn(
    env: lmdb.Environment, db: object, rng: random.Random, args: argparse.Namespace, seq: int
) -> list[dict[str, object]]:
    """One write txn of random operations; returns their log records (not yet logged)."""
    ops: list[dict[str, object]] = []
    with env.begin(write=True, db=db) as txn:
        txn_id = txn.id()
        for _ in range(rng.randint(1, MAX_OPS_PER_TXN)):
            key = key_name(rng.randrange(args.keys))
            old = txn.get(key)
            floor = parse_header(old).timestamp + 1 if old else 0
            ts = max(time.time_ns(), floor)
            deleted = rng.random() < DELETE_SHARE
            value = b"" if deleted else f"w{args.writer}-{seq}-{len(ops)}".encode()
            txn.put(key, encode_value(ts, txn_id, FLAG_DELETED if deleted else 0, value))
            ops.append({"k": key.decode(), "ts": ts, "d": deleted, "v": value.decode()})
    return ops


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("lmdb_path")
    p.add_argument("log_path")
    p.add_argument("--writer", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keys", type=int, default=40)
    p.add_argument("--rate", type=float, default=50.0, help="write txns per second")
    args = p.parse_args()
    # The handler only flips a flag: one that took a lock (Event.set) could run while
    # the main thread holds that same lock inside Event.wait, and deadlock the writer.
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    rng = random.Random(args.seed * 1000 + args.writer)
    env = open_env(args.lmdb_path)
    db = env.open_db(DBI)
    seq = 0
    with Path(args.log_path).open("a") as log:
        while not stopping:
            ops = write_txn(env, db, rng, args, seq)
            log.write("".join(json.dumps(op) + "\n" for op in ops))
            log.flush()
            seq += 1
            time.sleep(min(rng.expovariate(args.rate), MAX_PAUSE_SECONDS))
    env.close()


if __name__ == "__main__":
    main()
