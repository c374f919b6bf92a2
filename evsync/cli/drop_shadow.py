"""``evsync drop-shadow``: delete the ``_sync_shadow_*`` DBIs so the next start rebuilds them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from evsync.errors import ConfigError
from evsync.lmdb.env import SHADOW_PREFIX, LmdbEnv
from evsync.lmdb.lock import SyncLock
from evsync.lmdb.shadow import drop_shadows

EXIT_DECLINED = 1


def register(sub: Any) -> None:
    """Add ``drop-shadow`` to the parser."""
    p = sub.add_parser(
        "drop-shadow",
        help="delete the shadow DBIs of shadow-mode dbs (stop `evsync sync` first)",
        description="Delete every _sync_shadow_* DBI. The next `evsync sync` seeds them again "
        "from the data DBIs at timestamp 1 ns, so any remote write wins over local data. "
        "Stop the evsync daemon for this LMDB first; the application may keep running.",
    )
    p.add_argument("-n", "--name", default=None, metavar="DB", help="only this db")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Drop the shadow DBIs of every (or one) configured db, after confirmation."""
    from evsync.cli import load

    config = load(args)
    names = [args.name] if args.name else list(config.lmdbs)
    for name in names:
        if name not in config.lmdbs:
            raise ConfigError(f"--name: {name!r} is not configured under lmdbs")
    for name in names:
        lenv = LmdbEnv(config.lmdbs[name])
        lock = SyncLock(config.lmdbs[name])
        try:
            lock.acquire()  # refuses while a daemon syncs this LMDB
            if not _drop_one(lenv, assume_yes=args.yes):
                return EXIT_DECLINED
        finally:
            lock.release()
            lenv.close()
    return 0


def _drop_one(lenv: LmdbEnv, *, assume_yes: bool) -> bool:
    with lenv.begin() as txn:
        shadows = [n for n in lenv.dbi_names(txn, include_sync=True) if n.startswith(SHADOW_PREFIX)]
    if not shadows:
        print(f"{lenv.name}: no shadow DBIs in {lenv.cfg.path}")
        return True
    listed = ", ".join(n.decode(errors="replace") for n in shadows)
    if not assume_yes and not _confirm(
        f"{lenv.name}: drop {len(shadows)} shadow DBI(s) in {lenv.cfg.path} ({listed})?"
    ):
        print(f"{lenv.name}: nothing dropped", file=sys.stderr)
        return False
    dropped = drop_shadows(lenv)
    print(f"{lenv.name}: dropped {len(dropped)} shadow DBI(s)")
    return True


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        print(f"{question} refusing without a terminal; pass --yes", file=sys.stderr)
        return False
    answer = input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")
