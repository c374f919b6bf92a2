"""Write native-header records into an LMDB from the shell, as an application would.

Usage::

    python -m evsync.tools.lmdb_write PATH put DBI KEY VALUE [--ts NS]
    python -m evsync.tools.lmdb_write PATH delete DBI KEY [--ts NS]
    python -m evsync.tools.lmdb_write PATH get DBI KEY
    python -m evsync.tools.lmdb_write PATH fill DBI COUNT [--prefix P]

It is what the README's two-instance demo and the integration tests use as the
"other application" writing to the LMDB.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lmdb

from evsync.lmdb.header import FLAG_DELETED, encode_value, parse_header

DEFAULT_MAP_SIZE = 1 << 30
DATA_FILE = "data.mdb"  # the data file inside an LMDB directory (without --no-subdir)


def open_env(path: str, *, no_subdir: bool = False, writemap: bool = False) -> lmdb.Environment:
    """Open (and create) an LMDB the way a typical application does."""
    return lmdb.open(
        path, subdir=not no_subdir, map_size=DEFAULT_MAP_SIZE, max_dbs=64, writemap=writemap
    )


def put(
    env: lmdb.Environment,
    dbi: str,
    key: bytes,
    value: bytes,
    ts: int | None = None,
    *,
    deleted: bool = False,
) -> int:
    """Write one record with a native header; returns the txn id."""
    db = env.open_db(dbi.encode())
    with env.begin(write=True) as txn:
        txn_id = txn.id()
        flags = FLAG_DELETED if deleted else 0
        txn.put(
            key, encode_value(ts if ts is not None else time.time_ns(), txn_id, flags, value), db=db
        )
    return int(txn_id)


def lmdb_exists(path: str, *, no_subdir: bool = False) -> bool:
    """Whether an LMDB is at ``path``: its data file, or the file itself with no_subdir."""
    p = Path(path)
    return p.is_file() if no_subdir else (p / DATA_FILE).is_file()


def get(env: lmdb.Environment, dbi: str, key: bytes) -> tuple[bytes, int, bool] | None:
    """(value, timestamp, deleted) of a record, or None."""
    try:
        db = env.open_db(dbi.encode(), create=False)
    except lmdb.NotFoundError:
        return None
    with env.begin() as txn:
        raw = txn.get(key, db=db)
    if raw is None:
        return None
    header = parse_header(raw)
    return bytes(raw[header.offset :]), header.timestamp, header.deleted


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    p = argparse.ArgumentParser(prog="python -m evsync.tools.lmdb_write")
    p.add_argument("path", help="the LMDB (a directory, or the file with --no-subdir)")
    p.add_argument("--no-subdir", action="store_true", help="PATH is the data file itself")
    p.add_argument("--writemap", action="store_true", help="open with MDB_WRITEMAP")
    sub = p.add_subparsers(dest="op", required=True)
    helps = {"put": "write a record", "delete": "write a tombstone", "get": "read a record"}
    for op in ("put", "delete", "get"):
        s = sub.add_parser(op, help=helps[op])
        s.add_argument("dbi", help="DBI name")
        s.add_argument("key", help="record key")
        if op == "put":
            s.add_argument("value", help="record value")
        if op != "get":
            s.add_argument(
                "--ts", type=int, default=None, help="header timestamp in ns (default: now)"
            )
    f = sub.add_parser("fill", help="write COUNT records in one txn")
    f.add_argument("dbi", help="DBI name")
    f.add_argument("count", type=int, help="how many records")
    f.add_argument("--prefix", default="key", help="key prefix (default: key)")
    args = p.parse_args(argv)
    if args.op == "get" and not lmdb_exists(args.path, no_subdir=args.no_subdir):
        # reading must not leave an empty LMDB behind (it would then be synced)
        print(f"lmdb_write: no LMDB at {args.path}", file=sys.stderr)
        return 1
    try:
        env = open_env(args.path, no_subdir=args.no_subdir, writemap=args.writemap)
    except (lmdb.Error, OSError) as exc:
        # one line, as evsync's own commands do: usually a mistyped path, or an LMDB
        # that `make run` has not created yet
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"lmdb_write: cannot open {args.path}: {reason}", file=sys.stderr)
        return 1
    if args.op == "put":
        put(env, args.dbi, args.key.encode(), args.value.encode(), args.ts)
    elif args.op == "delete":
        put(env, args.dbi, args.key.encode(), b"", args.ts, deleted=True)
    elif args.op == "get":
        found = get(env, args.dbi, args.key.encode())
        if found is None:
            print("(missing)")
            return 1
        value, _ts, deleted = found
        print("(deleted)" if deleted else value.decode(errors="replace"))
        return 0
    else:
        db = env.open_db(args.dbi.encode())
        with env.begin(write=True) as txn:
            now = time.time_ns()
            for i in range(args.count):
                txn.put(
                    f"{args.prefix}{i:08d}".encode(),
                    encode_value(now, txn.id(), 0, f"value-{i}".encode()),
                    db=db,
                )
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
