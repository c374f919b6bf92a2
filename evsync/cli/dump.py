"""``evsync dump``: print the raw contents of the configured LMDBs, headers decoded."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from evsync.cli import _progress
from evsync.cli._format import show_bytes, show_time
from evsync.errors import ConfigError, HeaderError
from evsync.lmdb.env import LmdbEnv, is_sync_dbi
from evsync.lmdb.header import parse_header


def register(sub: Any) -> None:
    """Add ``dump`` to the parser."""
    p = sub.add_parser("dump", help="print the contents of the local LMDB(s)")
    p.add_argument("-n", "--name", default=None, metavar="DB", help="only this db")
    p.add_argument("-H", "--hide", action="store_true", help="hide _sync* DBIs")
    p.add_argument(
        "-f", "--format", choices=["text", "json"], default="text", help="output format"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dump every DBI of every (or one) configured db."""
    from evsync.cli import load_lmdbs

    lmdbs = load_lmdbs(args)  # the LMDB section only: no storage credentials needed
    names = [args.name] if args.name else list(lmdbs)
    out: dict[str, Any] = {}
    for name in names:
        if name not in lmdbs:
            raise ConfigError(f"--name: {name!r} is not configured under lmdbs")
        lenv = LmdbEnv(lmdbs[name], readonly=True)
        show = _progress.enabled(quiet=args.quiet, output_on_stdout=True)
        try:
            out[name] = _dump_env(lenv, hide_sync=args.hide, text=args.format == "text", show=show)
        finally:
            lenv.close()
    if args.format == "json":
        json.dump(out, sys.stdout, indent=1)
        print()
    return 0


def _dump_env(lenv: LmdbEnv, *, hide_sync: bool, text: bool, show: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with (
        lenv.read_synced_dbis(include_sync=not hide_sync) as (txn, dbis),
        _progress.bar(
            f"dump {lenv.name}",
            sum(int(txn.stat(handle)["entries"]) for _dbi, handle in dbis) if show else None,
            "records",
            show=show,
        ) as progress,
    ):
        for dbi, handle in dbis:
            dbi_name = dbi.decode(errors="replace")
            if text:
                print(f"### {lenv.name} / {dbi_name}")
            rows = []
            # shadow mode: the data DBIs hold the application's raw values
            native = lenv.cfg.schema_tracks_changes or is_sync_dbi(dbi)
            for key, value in txn.cursor(db=handle).iternext():
                row = (
                    _row(bytes(key), bytes(value)) if native else _raw_row(bytes(key), bytes(value))
                )
                rows.append(row)
                progress.update()
                if text:
                    print(_text(row))
            result[dbi_name] = rows
    return result


def _row(key: bytes, value: bytes) -> dict[str, Any]:
    try:
        header = parse_header(value)
    except HeaderError as exc:
        return {"key": key.decode(errors="replace"), "raw": value.hex(), "header_error": str(exc)}
    return {
        "key": key.decode(errors="replace"),
        "value": value[header.offset :].decode(errors="replace"),
        "ts": header.timestamp,
        "txn": header.txn_id,
        "deleted": header.deleted,
    }


def _raw_row(key: bytes, value: bytes) -> dict[str, Any]:
    return {"key": key.decode(errors="replace"), "raw": value.hex()}


def _text(row: dict[str, Any]) -> str:
    if "header_error" not in row and "raw" in row:
        return f"{show_bytes(row['key'].encode())} = <raw {row['raw'][:80]}>"
    if "header_error" in row:
        return f"{row['key']} = <raw {row['raw'][:80]}> ({row['header_error']})"
    deleted = " deleted" if row["deleted"] else ""
    return (
        f"{show_bytes(row['key'].encode())} = {show_bytes(row['value'].encode())}  "
        f"ts={show_time(row['ts'])} txn={row['txn']}{deleted}"
    )
