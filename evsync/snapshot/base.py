"""What every snapshot format shares: the header and entry types, and the format interface.

A format (one module beside this one, as ``evs.py`` for ``.evs.zst``) turns a header
and per-DBI entries into a byte stream and back. The sender and the receiver only see
:class:`SnapshotFormat`; :func:`evsync.snapshot.format_for` picks one by the object
name's extension, so a second format plugs in without either of them changing.

A reader's contract, whatever the format: the header is checked when the reader is
opened; each entry is checked before it is handed out, in lists bounded by count and by
bytes, so that a reader holds little at once whatever the object (DESIGN §4); the end
of the stream (counts, checksums, trailing data) is checked after the last DBI; every
failure is a :class:`~evsync.errors.CorruptObjectError`. :meth:`SnapshotFormat.verify`
reads a whole object that way, so the receiver can verify completely before it applies
anything; :meth:`SnapshotFormat.open_checked` gives a reader whose every part is checked
before it is handed out, which the receiver applies as it reads instead.
"""

from __future__ import annotations

import abc
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

KIND_FULL = "full"
KIND_DELTA = "delta"
KINDS = (KIND_FULL, KIND_DELTA)
# The identity an evs.zst header map carries (see evs.py); kept with the header type
# because SnapshotHeader.to_wire() writes it.
FORMAT_NAME = "evsync-snapshot"
# 3: each zstd frame of entries holds them column-wise (keys, timestamps, flags and
# values each as one blob), so a merge compares runs without an object per entry;
# 2: the entries in zstd frames of ~1 MiB as msgpack arrays, each frame checked before
# it is used (evs.py); 1: one zstd frame for the whole object; both still read
FORMAT_VERSION = 3

Entry = tuple[bytes, int, int, bytes]
"""key, timestamp_ns, flags, application value (without the LMDB header)."""
# a timestamp in a column of them: 8 bytes, big-endian, as in the LMDB value header
STAMP_BYTES = 8


@dataclass(frozen=True, slots=True)
class Columns:
    """A run of one DBI's entries column-wise, as a format-version-3 block holds them and
    its reader checked them: the merge compares a run already stored, and builds the
    values of new keys, from these blobs without a Python object per entry.

    ``keys`` are the entries' keys; ``stamps`` their timestamps, 8 bytes big-endian
    each; ``flags`` one byte each; entry i's application value is
    ``values[offsets[i]:offsets[i + 1]]`` (``offsets`` has one more item than ``keys``;
    ``values`` may be shared with other runs of the same block)."""

    keys: list[bytes]
    stamps: bytes
    flags: bytes
    values: bytes
    offsets: list[int]
    #: every value of the run has this many bytes (None when they differ)
    value_length: int | None

    def __len__(self) -> int:
        return len(self.keys)

    def sub(self, start: int, stop: int) -> Columns:
        """Entries ``start`` to ``stop`` (indices within this run) as a run of their own."""
        stop = min(stop, len(self.keys))
        return Columns(
            self.keys[start:stop],
            self.stamps[start * STAMP_BYTES : stop * STAMP_BYTES],
            self.flags[start:stop],
            self.values,
            self.offsets[start : stop + 1],
            self.value_length,
        )

    def value_list(self) -> list[bytes]:
        """The application values, one bytes object each."""
        cut = self.values.__getitem__
        return list(map(cut, map(slice, self.offsets, self.offsets[1:])))

    def stamp_list(self) -> tuple[int, ...]:
        """The timestamps as integers."""
        return struct.unpack(f">{len(self.keys)}Q", self.stamps)

    def entries(self) -> list[Entry]:
        """The run as entries, one tuple each (the general merge path takes those)."""
        return list(zip(self.keys, self.stamp_list(), self.flags, self.value_list(), strict=True))


@dataclass(frozen=True)
class DbiInfo:
    """One DBI in an object: its name, the original DBI flags, transform and entry count."""

    name: bytes
    flags: int = 0
    transform: str = ""
    entries: int = 0


@dataclass(frozen=True)
class SnapshotHeader:
    """What an object says about itself, whatever its format."""

    db: str
    instance: str
    hostname: str
    timestamp_ns: int
    txn_id: int
    dbis: tuple[DbiInfo, ...]
    kind: str = KIND_FULL
    base_timestamp_ns: int | None = None
    version: int = FORMAT_VERSION

    @property
    def total_entries(self) -> int:
        """Entries over all DBIs."""
        return sum(d.entries for d in self.dbis)

    def to_wire(self) -> dict[str, Any]:
        """The header as plain data: the msgpack map an evs.zst object starts with, and
        what ``evsync snapshots dump`` prints."""
        return {
            "format": FORMAT_NAME,
            "version": self.version,
            "db": self.db,
            "instance": self.instance,
            "hostname": self.hostname,
            "timestamp_ns": self.timestamp_ns,
            "txn_id": self.txn_id,
            "kind": self.kind,
            "base_timestamp_ns": self.base_timestamp_ns,
            "dbis": [
                {"name": d.name, "flags": d.flags, "transform": d.transform, "entries": d.entries}
                for d in self.dbis
            ],
        }


@dataclass
class WriteStats:
    """What a writer produced."""

    entries: int = 0
    raw_bytes: int = 0
    per_dbi: list[int] = field(default_factory=list)


class EntryStream(Protocol):
    """One DBI's entries as a reader hands them out, each checked first."""

    def chunks(self, size: int = ...) -> Iterator[list[Entry]]:
        """The remaining entries in lists of at most ``size``."""
        ...

    def __iter__(self) -> Iterator[Entry]: ...


class SnapshotStream(Protocol):
    """An open object: its checked header, then each DBI's entries in turn, read once."""

    header: SnapshotHeader

    def dbis(self) -> Iterator[tuple[DbiInfo, EntryStream]]:
        """(DbiInfo, entries) in header order; the end of the object is checked last."""
        ...


class SnapshotFormat(abc.ABC):
    """One object format: a name extension, a streaming reader and a streaming writer."""

    #: the name extension without its leading dot, e.g. ``evs.zst``
    extension: str

    @abc.abstractmethod
    def reader(
        self, source: IO[bytes], *, verified: bool = False, max_inflated: int | None = None
    ) -> SnapshotStream:
        """Open an object; raises CorruptObjectError when its header is bad.

        ``verified=True`` says :meth:`verify` has just passed on this same file, which
        no one else writes: a format may then skip checks it already made.
        ``max_inflated``: reading past this many decompressed bytes raises
        ObjectTooLargeError (a CorruptObjectError); None for no limit.
        """

    @abc.abstractmethod
    def write(
        self, out: IO[bytes], header: SnapshotHeader, dbi_entries: Iterable[Iterable[Entry]]
    ) -> WriteStats:
        """Write one object: ``dbi_entries`` yields one entry iterable per header DBI, in
        key order; a count that differs from the header raises ValueError."""

    def open_checked(
        self, source: IO[bytes], *, max_inflated: int | None = None
    ) -> SnapshotStream | None:
        """A reader of ``source`` whose every entry comes from a part of the object
        whose checksum and structure passed already, so that the receiver may apply it
        as it reads instead of verifying the whole object first (DESIGN §4); None when
        the format (or this object's version) cannot promise that. The default: None,
        without reading."""
        return None

    def verify(self, source: IO[bytes], *, max_inflated: int | None = None) -> SnapshotHeader:
        """Read a whole object and check everything; its header, or CorruptObjectError
        (ObjectTooLargeError once it inflates past ``max_inflated`` bytes)."""
        stream = self.reader(source, max_inflated=max_inflated)
        for _info, entries in stream.dbis():
            # holding no chunk: a loop variable would keep one alive beside the next
            deque(entries.chunks(), maxlen=0)
        return stream.header

    def read_header(self, source: IO[bytes]) -> SnapshotHeader:
        """Only the header (cheap; nothing else is checked)."""
        return self.reader(source).header
