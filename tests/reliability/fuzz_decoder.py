"""atheris fuzz target: the evs.zst decoder may only ever raise CorruptObjectError.

Run standalone (libFuzzer flags pass through)::

    python tests/reliability/fuzz_decoder.py -runs=20000 -max_total_time=30 CORPUS_DIR
    python tests/reliability/fuzz_decoder.py --write-seeds CORPUS_DIR   # valid seeds, then exit

The first input byte picks how the rest is fed to ``verify_snapshot``, so the fuzzer reaches
the msgpack and structure checks behind the zstd checksum instead of dying at the frame:

- ``0`` (mod 3): the bytes as they are (frame, checksum, foreign formats);
- ``1``: the bytes compressed into a valid zstd frame (any msgpack stream);
- ``2``: a valid header map, then the bytes, compressed (entries, trailer, counts).

Any exception but CorruptObjectError escapes and libFuzzer reports a crash (exit code != 0).
An input that verifies is read again with SnapshotReader and must hold exactly the entries
its header counts, well-typed and in order.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

with atheris.instrument_imports(include=["evsync"]):
    from evsync.errors import CorruptObjectError
    from evsync.snapshot import (
        DbiInfo,
        SnapshotHeader,
        SnapshotReader,
        verify_snapshot,
        write_snapshot,
    )

import msgpack  # noqa: E402 - after the instrumented imports, on purpose
import zstandard  # noqa: E402

MODES = 3
HEADER = SnapshotHeader(
    db="main",
    instance="fuzz",
    hostname="fuzz",
    timestamp_ns=1_700_000_000_000_000_000,
    txn_id=1,
    dbis=(DbiInfo(b"records", 0, "", 2), DbiInfo(b"ints", 0x08, "", 2)),
)
ENTRIES = [
    [(b"a", 1, 0, b"value-a"), (b"b", 2, 1, b"")],
    [((1).to_bytes(4, "little"), 3, 0, b"x"), ((256).to_bytes(4, "little"), 4, 0, b"y")],
]
HEADER_BYTES = msgpack.packb(HEADER.to_wire(), use_bin_type=True)


def compress(payload: bytes) -> bytes:
    """One zstd frame with the content checksum, as the writer makes it."""
    return bytes(zstandard.ZstdCompressor(write_checksum=True).compress(payload))


def valid_object() -> bytes:
    """A small valid object made by the real writer."""
    out = io.BytesIO()
    write_snapshot(out, HEADER, ENTRIES)
    return out.getvalue()


def object_bytes(data: bytes) -> bytes:
    """The object the fuzz input stands for (see the module docstring)."""
    if not data:
        return b""
    mode, body = data[0] % MODES, data[1:]
    if mode == 1:
        return compress(body)
    if mode == 2:
        return compress(HEADER_BYTES + body)
    return body


def check_verified(obj: bytes) -> None:
    """An object that verified must read back as exactly the entries its header promises."""
    reader = SnapshotReader(io.BytesIO(obj))
    for info, entries in reader.dbis():
        got = list(entries)
        if len(got) != info.entries:
            raise AssertionError(f"DBI {info.name!r}: {len(got)} entries, header {info.entries}")
        for key, ts, flags, value in got:
            if not (isinstance(key, bytes) and isinstance(value, bytes)):
                raise AssertionError(f"entry of wrong types: {key!r}")
            if not (0 < len(key) <= 511 and 0 <= ts < 1 << 64 and 0 <= flags < 256):
                raise AssertionError(f"entry out of range: {key!r} {ts} {flags}")
        if not info.flags & 0x08 and not info.transform:
            keys = [e[0] for e in got]
            if keys != sorted(set(keys)):
                raise AssertionError(f"DBI {info.name!r}: keys not strictly increasing")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris expects
    obj = object_bytes(data)
    try:
        verify_snapshot(io.BytesIO(obj))
    except CorruptObjectError:
        return
    check_verified(obj)


def write_seeds(directory: Path) -> None:
    """Seed inputs: the valid object in each of the three modes."""
    directory.mkdir(parents=True, exist_ok=True)
    obj = valid_object()
    stream = zstandard.ZstdDecompressor().decompressobj().decompress(obj)
    (directory / "seed-raw").write_bytes(b"\x00" + obj)
    (directory / "seed-stream").write_bytes(b"\x01" + stream)
    (directory / "seed-entries").write_bytes(b"\x02" + stream[len(HEADER_BYTES) :])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
