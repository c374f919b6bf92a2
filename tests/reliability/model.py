"""What the convergence checks compare: LMDB records, and the last-writer-wins model of the logs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import lmdb

from evsync.errors import HeaderError
from evsync.lmdb.header import parse_header

#: key -> (timestamp, deleted, application value); the header's txn id is local, left out
Records = dict[bytes, tuple[int, bool, bytes]]

DBI = b"records"


class InvalidValueError(AssertionError):
    """An LMDB value without a valid native header: the 'at any time' check failed."""


# evsync may grow the map between the open and its first txn; opening again adopts it
OPEN_ATTEMPTS = 5


def _open_readonly(path: Path) -> lmdb.Environment:
    for _attempt in range(OPEN_ATTEMPTS - 1):
        try:
            return lmdb.open(str(path), readonly=True, max_dbs=64, lock=True)
        except lmdb.MapResizedError:
            continue
    return lmdb.open(str(path), readonly=True, max_dbs=64, lock=True)


def read_records(path: Path, dbi: bytes = DBI) -> Records:
    """Every record of ``dbi``, each header checked; raises InvalidValueError on a bad one."""
    if not (path / "data.mdb").exists():
        return {}
    env = _open_readonly(path)
    try:
        with env.begin() as txn:
            try:
                db = env.open_db(dbi, txn=txn, create=False)
            except lmdb.NotFoundError:
                return {}
            out: Records = {}
            for key, value in txn.cursor(db=db):
                try:
                    header = parse_header(value)
                except HeaderError as exc:
                    raise InvalidValueError(f"{path}: key {bytes(key)!r}: {exc}") from None
                if header.deleted and len(value) != header.offset:
                    raise InvalidValueError(f"{path}: key {bytes(key)!r}: tombstone with a value")
                out[bytes(key)] = (header.timestamp, header.deleted, bytes(value[header.offset :]))
            return out
    finally:
        env.close()


def read_ops(logs: Iterable[Path]) -> list[tuple[bytes, int, bool, bytes]]:
    """The acknowledged operations of every writer log."""
    ops = []
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            op = json.loads(line)
            ops.append((op["k"].encode(), int(op["ts"]), bool(op["d"]), op["v"].encode()))
    return ops


def last_writer_wins(ops: Iterable[tuple[bytes, int, bool, bytes]]) -> Records:
    """Per key the newest operation; at equal timestamps the smaller value (a delete's is empty)."""
    model: Records = {}
    for key, ts, deleted, value in ops:
        have = model.get(key)
        if have is None or ts > have[0] or (ts == have[0] and value < have[2]):
            model[key] = (ts, deleted, value)
    return model


def differences(expected: Records, actual: Records, limit: int = 5) -> list[str]:
    """Readable differences, at most ``limit``; empty when equal."""
    out = []
    for key in sorted(expected.keys() | actual.keys()):
        if expected.get(key) != actual.get(key):
            out.append(f"{key!r}: expected {expected.get(key)}, found {actual.get(key)}")
            if len(out) >= limit:
                break
    return out
