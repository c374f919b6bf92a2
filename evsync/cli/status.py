"""``evsync status``: what the running daemon reports, or (``--bucket``) what the bucket holds."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

from evsync.config import Config
from evsync.errors import ConfigError, EvsyncError
from evsync.snapshot.name import try_parse
from evsync.storage import open_store

# The daemon answers from memory; a slow answer means it is wedged, not busy.
STATUS_TIMEOUT_SECONDS = 5.0
NS = 1_000_000_000


def register(sub: Any) -> None:
    """Add ``status`` to the parser."""
    p = sub.add_parser(
        "status", help="show the running daemon's sync state (or the bucket's with --bucket)"
    )
    p.add_argument(
        "--bucket",
        action="store_true",
        help="summarise the bucket itself: newest object and count per instance",
    )
    p.add_argument("--url", default=None, help="daemon base URL (default: from http.address)")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    """Print the status; exit 1 when the daemon cannot be reached."""
    from evsync.cli import load

    config = load(args)
    if args.bucket:
        data = bucket_status(config)
    else:
        target = daemon_url(config, args.url)
        data = daemon_status(target)
        note = other_instance_note(config.instance, data, target)
        if note:
            print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif args.bucket:
        print_bucket(data)
    else:
        print_daemon(data)
    return 0


def other_instance_note(instance: str, data: dict[str, Any], target: str) -> str | None:
    """A line for stderr when the daemon that answered is another instance than the
    config names (two instances on one host, the address of the other one's)."""
    theirs = data.get("instance")
    if not theirs or theirs == instance:
        return None
    return (
        f"evsync: note: the daemon at {target} is instance {theirs!r}, not {instance!r} as "
        f"this config says; point EVSYNC_HTTP (http.address) or --url at {instance!r}'s "
        "address to see it"
    )


def daemon_url(config: Config, url: str | None) -> str:
    """The /status URL: --url, or http.address with a wildcard host read as loopback."""
    if url:
        return url.rstrip("/") + "/status"
    if not config.http_address:
        raise ConfigError(
            "http.address: not set, so there is no running daemon to ask "
            "(set it, pass --url, or use --bucket)"
        )
    host, _, port = config.http_address.rpartition(":")
    if host in ("", "0.0.0.0", "[::]"):  # noqa: S104 - reading, not binding
        host = "127.0.0.1"
    return f"http://{host}:{port}/status"


def daemon_status(target: str) -> dict[str, Any]:
    """GET the daemon's /status at ``target`` (:func:`daemon_url`)."""
    try:
        with urllib.request.urlopen(target, timeout=STATUS_TIMEOUT_SECONDS) as resp:  # noqa: S310
            result: dict[str, Any] = json.load(resp)
            return result
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EvsyncError(f"cannot reach the daemon at {target}: {reason}") from None


def bucket_status(config: Config) -> dict[str, Any]:
    """Per db and instance: object count, bytes, newest object and its age."""
    store = open_store(config.storage)
    try:
        objects = store.list("")
    finally:
        store.close()
    now_ns = time.time_ns()
    dbs: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    other = 0
    for obj in objects:
        name = try_parse(obj.name)
        if name is None:
            other += 1
            continue
        inst = dbs[name.db].setdefault(
            name.instance, {"objects": 0, "bytes": 0, "newest": None, "newest_age_seconds": None}
        )
        inst["objects"] += 1
        inst["bytes"] += obj.size
        if inst["newest"] is None or obj.name > inst["newest"]:
            inst["newest"] = obj.name
            inst["newest_age_seconds"] = (now_ns - name.timestamp_ns) / NS
    return {"storage": config.storage.type, "dbs": dict(dbs), "other_objects": other}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _lag(seconds: float | None) -> str:
    """Milliseconds while a lag is short (the usual case), else as an age."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else _age(seconds)


def print_bucket(data: dict[str, Any]) -> None:
    """The bucket summary as a table per db."""
    print(f"storage: {data['storage']}")
    if not data["dbs"]:
        print("  no snapshot objects")
    for db, instances in sorted(data["dbs"].items()):
        print(f"db {db}:")
        print(f"  {'instance':<24} {'objects':>7} {'bytes':>12}  {'newest age':>10}  newest")
        for inst, st in sorted(instances.items()):
            print(
                f"  {inst:<24} {st['objects']:>7} {st['bytes']:>12}  "
                f"{_age(st['newest_age_seconds']):>10}  {st['newest']}"
            )
    if data["other_objects"]:
        print(f"{data['other_objects']} object(s) with names that are not snapshots")


def print_daemon(data: dict[str, Any]) -> None:
    """The daemon's status, one block per db."""
    print(
        f"instance {data.get('instance')} (evsync {data.get('version')}, "
        f"up {_age(data.get('uptime_seconds'))}), storage {data.get('storage')}"
    )
    for name, src in sorted((data.get("push_sources") or {}).items()):
        state = "failing: " + str(src.get("last_error")) if src.get("last_error") else "ok"
        print(f"  push source {name}: {state}, {src.get('messages', 0)} messages")
    for db, st in sorted((data.get("dbs") or {}).items()):
        _print_db(db, st)


def _print_db(db: str, st: dict[str, Any]) -> None:
    print(f"db {db}:")
    if st.get("lmdb_missing"):
        print(f"  NOT SYNCED: {st['lmdb_missing']}")
        return
    print(
        f"  last txn {st.get('last_txn_id')}, synced txn {st.get('last_synced_txn_id')}, "
        f"last upload {st.get('last_upload') or '-'}"
    )
    if st.get("rejoin_blocked"):
        print(f"  BLOCKED: {st['rejoin_blocked']}")
    if not st.get("startup_done"):
        print(f"  startup not done; waiting for {', '.join(st.get('waiting_for') or []) or '-'}")
    hints = (st.get("hints") or {}).get("received") or {}
    print("  hints: " + (", ".join(f"{k}={v}" for k, v in sorted(hints.items())) or "none"))
    for op, h in sorted((st.get("health") or {}).items()):
        if h.get("status") != "ok" or h.get("last_error"):
            print(f"  {op}: {h.get('status')} ({h.get('last_error')})")
    instances = st.get("instances") or {}
    if instances:
        print(f"  {'instance':<24} {'merged age':>10} {'lag':>9}  newest seen / merged")
    for inst, i in sorted(instances.items()):
        lag = i.get("lag_seconds")
        merged = i.get("merged") or "-"
        seen = i.get("newest_seen") or "-"
        same = merged == seen
        print(
            f"  {inst:<24} {_age(i.get('merged_age_seconds')):>10} "
            f"{_lag(lag):>9}  "
            f"{merged}{'' if same else ' (newer seen: ' + seen + ')'}"
        )
