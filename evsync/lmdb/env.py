"""Open an LMDB environment as configured and give safe access to txns, DBIs and the txn id."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from evsync.config import LmdbConfig
from evsync.errors import LmdbError, PermanentLmdbError

log = logging.getLogger(__name__)

SYNC_DBI_PREFIX = b"_sync"
SHADOW_PREFIX = b"_sync_shadow_"  # shadow-mode copies of the data DBIs (LS naming)
MAP_GROWTH_FACTOR = 2

MDB_REVERSEKEY = 0x02
MDB_DUPSORT = 0x04
MDB_INTEGERKEY = 0x08
MDB_DUPFIXED = 0x10
MDB_INTEGERDUP = 0x20
MDB_REVERSEDUP = 0x40
DUP_FLAGS = MDB_DUPSORT | MDB_DUPFIXED | MDB_INTEGERDUP | MDB_REVERSEDUP

_FLAG_BITS = {
    "reverse_key": MDB_REVERSEKEY,
    "dupsort": MDB_DUPSORT,
    "integerkey": MDB_INTEGERKEY,
    "dupfixed": MDB_DUPFIXED,
    "integerdup": MDB_INTEGERDUP,
}


def is_sync_dbi(name: bytes) -> bool:
    """DBIs evsync keeps for itself (shadows, state) are never synced."""
    return name.startswith(SYNC_DBI_PREFIX)


def flags_to_int(flags: dict[str, bool]) -> int:
    """py-lmdb's flag dict as MDB_* bits."""
    return sum(bit for name, bit in _FLAG_BITS.items() if flags.get(name))


def flags_to_kwargs(flags: int) -> dict[str, bool]:
    """MDB_* bits as py-lmdb open_db keyword arguments."""
    return {name: bool(flags & bit) for name, bit in _FLAG_BITS.items()}


class LmdbEnv:
    """One LMDB environment; thread-safe for the txn id and map-size changes.

    py-lmdb forbids resizing the map while this process has a transaction open,
    and reading the txn id while the map is being remapped is unsafe, so both go
    through ``_env_lock``. Only the syncer thread opens transactions.
    """

    def __init__(self, cfg: LmdbConfig, *, readonly: bool = False) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._env_lock = threading.Lock()
        self._dbis: dict[bytes, Any] = {}
        # handles opened inside the current write txn: they die if it aborts
        self._dbis_in_write_txn: list[bytes] = []
        self.env = self._open(cfg, readonly)

    @staticmethod
    def _open(cfg: LmdbConfig, readonly: bool) -> Any:
        path = Path(cfg.path)
        opts = cfg.options
        key = f"lmdbs.{cfg.name}.path"
        if opts.create and not readonly:
            target_dir = path.parent if opts.no_subdir else path
            try:
                target_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LmdbError(f"{key}: cannot create {target_dir}: {exc.strerror}") from None
        elif not path.exists():
            hint = (
                "a read-only command does not create it; run `evsync sync` first"
                if opts.create
                else "set options.create: true to create it"
            )
            raise LmdbError(f"{key}: {path} does not exist ({hint})")
        try:
            return lmdb.open(
                str(path),
                subdir=not opts.no_subdir,
                create=opts.create and not readonly,
                map_size=opts.map_size,
                max_dbs=opts.max_dbs,
                readonly=readonly,
                lock=True,
            )
        except lmdb.Error as exc:
            raise LmdbError(f"{key}: cannot open {path}: {exc}") from None

    def close(self) -> None:
        """Close the environment."""
        with self._env_lock:
            self._dbis.clear()
            self.env.close()

    # ------------------------------------------------------------ txn id and map

    def last_txn_id(self) -> int:
        """The id of the last committed write transaction, by any process."""
        with self._env_lock:
            return int(self.env.info()["last_txnid"])

    def info(self) -> dict[str, int]:
        """mdb_env_info as a dict."""
        with self._env_lock:
            return dict(self.env.info())

    def adopt_map_size(self) -> None:
        """Another process grew the map: adopt its size (MDB_MAP_RESIZED)."""
        with self._env_lock:
            self.env.set_mapsize(0)
            log.info(
                "lmdb %s: map grew under us; now %d bytes", self.name, self.env.info()["map_size"]
            )

    def grow_map(self) -> int:
        """Double the map size after MDB_MAP_FULL; returns the new size."""
        with self._env_lock:
            new_size = int(self.env.info()["map_size"]) * MAP_GROWTH_FACTOR
            self.env.set_mapsize(new_size)
        log.warning("lmdb %s: map full; grew it to %d bytes", self.name, new_size)
        return new_size

    @contextmanager
    def begin(self, *, write: bool = False) -> Iterator[Any]:
        """A transaction, retried once after adopting a map that grew under us."""
        try:
            txn = self.env.begin(write=write)
        except lmdb.MapResizedError:
            self.adopt_map_size()
            txn = self.env.begin(write=write)
        try:
            yield txn
        except BaseException as exc:
            txn.abort()
            if write:
                self._forget_dbis_opened_in_txn()
            if _is_os_level(exc):
                raise LmdbError(f"lmdb {self.name}: {exc}") from None
            raise
        try:
            txn.commit()
        except lmdb.Error as exc:  # LMDB has aborted the txn itself
            if write:
                self._forget_dbis_opened_in_txn()
            if _is_os_level(exc):
                raise LmdbError(f"lmdb {self.name}: {exc}") from None
            raise
        if write:
            self._dbis_in_write_txn.clear()

    def _forget_dbis_opened_in_txn(self) -> None:
        for name in self._dbis_in_write_txn:
            self._dbis.pop(name, None)
        self._dbis_in_write_txn.clear()

    # ------------------------------------------------------------ DBIs

    def dbi_names(self, txn: Any, *, include_sync: bool = False) -> list[bytes]:
        """Names of the named DBIs (keys of the root DBI), sorted, `_sync*` skipped."""
        names = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
        return [n for n in names if include_sync or not is_sync_dbi(n)]

    def open_dbi(
        self, name: bytes, write_txn: Any | None = None, *, create_flags: int | None = None
    ) -> Any:
        """A DBI handle, cached; with ``create_flags`` the DBI is created when missing.

        Pass ``write_txn`` when called inside this process's write txn (LMDB's write
        lock is not re-entrant). A handle opened there is only valid once that txn
        commits; :meth:`begin` forgets it when the txn aborts. Handles opened in
        a *read* txn die with it, so read paths call this without a txn.
        """
        handle = self._dbis.get(name)
        if handle is not None:
            return handle
        kwargs = flags_to_kwargs(create_flags or 0)
        try:
            handle = self.env.open_db(
                name, txn=write_txn, create=create_flags is not None, **kwargs
            )
        except lmdb.NotFoundError:
            raise LmdbError(f"lmdb {self.name}: DBI {name!r} does not exist") from None
        except lmdb.IncompatibleError:
            # permanent, as the errors below: the same call fails the same way until the
            # application or the config changes, so a merge rejects its object
            raise PermanentLmdbError(
                f"lmdb {self.name}: root key {name!r} is not a DBI (data must live in named DBIs)"
            ) from None
        except lmdb.DbsFullError:
            raise PermanentLmdbError(
                f"lmdb {self.name}: cannot create DBI {name!r}: the LMDB already holds "
                f"max_dbs ({self.cfg.options.max_dbs}) DBIs"
            ) from None
        except lmdb.InvalidParameterError as exc:
            raise PermanentLmdbError(
                f"lmdb {self.name}: cannot open DBI {name!r} with flags {create_flags}: {exc}"
            ) from None
        self._dbis[name] = handle
        if write_txn is not None:
            self._dbis_in_write_txn.append(name)
        return handle

    @contextmanager
    def read_synced_dbis(
        self, *, include_sync: bool = False, attempts: int = 5
    ) -> Iterator[tuple[Any, list[tuple[bytes, Any]]]]:
        """A read txn plus (name, handle) of every synced DBI it sees.

        LMDB only lets a txn use DBI handles opened before it began, so handles are
        opened first, outside any txn; if a DBI appears in between, start over.
        """
        for _ in range(attempts):
            with self.begin() as probe:
                names = self.dbi_names(probe, include_sync=include_sync)
            for name in names:
                self.open_dbi(name)
            with self.begin() as txn:
                names = self.dbi_names(txn, include_sync=include_sync)
                if all(self.is_cached(n) for n in names):
                    yield txn, [(n, self._dbis[n]) for n in names]
                    return
        raise LmdbError(f"lmdb {self.name}: DBIs keep appearing; cannot take a stable dump")

    def is_cached(self, name: bytes) -> bool:
        """True when a handle for ``name`` is already open."""
        return name in self._dbis

    def forget_dbi(self, name: bytes) -> None:
        """Drop a cached handle whose creating txn was aborted."""
        self._dbis.pop(name, None)

    def has_dbi(self, txn: Any, name: bytes) -> bool:
        """True when the root DBI holds ``name``."""
        return txn.get(name) is not None

    def dbi_flags(self, txn: Any, handle: Any) -> int:
        """The persistent MDB_* flags of a DBI."""
        return flags_to_int(handle.flags(txn))


def _is_os_level(exc: BaseException) -> bool:
    """An LMDB error that no caller handles itself (a full disk, an I/O error...): it
    becomes one LmdbError line. MapFullError stays, as the merges grow the map on it."""
    return isinstance(exc, lmdb.Error) and not isinstance(
        exc, lmdb.MapFullError | lmdb.MapResizedError
    )
