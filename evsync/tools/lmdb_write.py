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

import lmdb

from evsync.lmdb.header import FLAG_DELETED, encode_value, parse_header

DEFAULT_MAP_SIZE = 1 << 30


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
    p.add_argument("path")
    p.add_argument("--no-subdir", action="store_true")
    p.add_argument("--writemap", action="store_true")
    sub = p.add_subparsers(dest="op", required=True)
    for op in ("put", "delete", "get"):
        s = sub.add_parser(op)
        s.add_argument("dbi")
        s.add_argument("key")
        if op == "put":
            s.add_argument("value")
        if op != "get":
            s.add_argument("--ts", type=int, default=None)
    f = sub.add_parser("fill")
    f.add_argument("dbi")
    f.add_argument("count", type=int)
    f.add_argument("--prefix", default="key")
    args = p.parse_args(argv)
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
