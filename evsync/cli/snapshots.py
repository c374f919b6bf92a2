"""``evsync snapshots list|get|put|remove|dump``: inspect and manage objects in the bucket."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import deque
from pathlib import Path
from typing import IO, Any

from evsync.cli import _progress
from evsync.cli._format import show_bytes, show_time
from evsync.errors import CorruptObjectError, InvalidNameError
from evsync.snapshot import EVS_ZST, SnapshotStream, format_for
from evsync.snapshot.name import SnapshotName, try_parse
from evsync.storage import open_store

# The format column of ``snapshots list -l``.
FORMAT_EVS_FULL = "evs.zst full"
FORMAT_EVS_DELTA = "evs.zst delta"
FORMAT_LS = "pb.gz lightningstream"
FORMAT_LS_COPY = "pb.gz evsync-copy"
FORMAT_FOREIGN = "-"


def register(sub: Any) -> None:
    """Add ``snapshots`` and its subcommands to the parser."""
    p = sub.add_parser("snapshots", help="list, fetch, upload, remove and show objects")
    ssub = p.add_subparsers(dest="snapshots_command", metavar="SUBCOMMAND")
    ssub.required = True

    ls = ssub.add_parser("list", help="list objects")
    ls.add_argument("-p", "--prefix", default="", help="only names with this prefix")
    ls.add_argument(
        "-l",
        "--long",
        action="store_true",
        help="also show size, kind, time (UTC) and instance, tab-separated",
    )
    ls.add_argument(
        "-t",
        "--time",
        action="store_true",
        help="sort by the timestamp in the name (unparseable names first)",
    )
    ls.set_defaults(func=run_list)

    get = ssub.add_parser("get", help="download an object")
    get.add_argument("name", help="object name")
    get.add_argument("-o", "--output", default=None, help="file to write (default: the name)")
    get.set_defaults(func=run_get)

    put = ssub.add_parser("put", help="upload a file as an object")
    put.add_argument("file", help="local file to upload")
    put.add_argument("-n", "--name", default=None, help="object name (default: file name)")
    put.add_argument(
        "--force",
        action="store_true",
        help="allow a name that does not parse, or content that does not verify",
    )
    put.set_defaults(func=run_put)

    rm = ssub.add_parser("remove", help="delete an object")
    rm.add_argument("name", help="object name")
    rm.set_defaults(func=run_remove)

    dump = ssub.add_parser("dump", help="print an object's header and entries")
    dump.add_argument("name", help="object name (a file with --local)")
    dump.add_argument("-d", "--dbi", default=None, help="only this DBI")
    dump.add_argument("-l", "--local", action="store_true", help="NAME is a local file")
    dump.add_argument(
        "-f", "--format", choices=["text", "json"], default="text", help="output format"
    )
    dump.set_defaults(func=run_dump)


def _store(args: argparse.Namespace) -> Any:
    from evsync.cli import load

    return open_store(load(args).storage)


def run_list(args: argparse.Namespace) -> int:
    """Print object names, one per line."""
    store = _store(args)
    objects = store.list(args.prefix)
    if args.time:

        def key(o: Any) -> tuple[int, int, str]:
            try:
                return (1, SnapshotName.parse(o.name).timestamp_ns, o.name)
            except InvalidNameError:
                return (0, 0, o.name)

        objects.sort(key=key)
    for obj in objects:
        print(_long_line(obj.name, obj.size) if args.long else obj.name)
    return 0


def _long_line(name: str, size: int) -> str:
    """name, size, kind, time (UTC, to the millisecond) and instance; the first two
    columns stay where scripts expect them."""
    parsed = try_parse(name)
    when = show_time(parsed.timestamp_ns)[:23] + "Z" if parsed is not None else "-"
    instance = parsed.instance if parsed is not None else "-"
    return f"{name}\t{size}\t{describe_format(name)}\t{when}\t{instance}"


def describe_format(name: str) -> str:
    """What ``snapshots list -l`` says an object is: evsync's full object or delta, a
    Lightning Stream snapshot (LS's own, or evsync's copy beside its chain), or foreign."""
    parsed = try_parse(name)
    if parsed is None or format_for(parsed) is None:
        return FORMAT_FOREIGN
    if parsed.is_ls:
        return FORMAT_LS_COPY if parsed.is_copy else FORMAT_LS
    return FORMAT_EVS_DELTA if parsed.is_delta else FORMAT_EVS_FULL


def run_get(args: argparse.Namespace) -> int:
    """Download one object to a file."""
    store = _store(args)
    out = Path(args.output or args.name)
    show = _progress.enabled(quiet=args.quiet, output_on_stdout=False)
    # the size, for a percentage and an ETA: one listing, only when a bar is drawn
    size = None
    if show:
        size = next((o.size for o in store.list(args.name) if o.name == args.name), None)
    with (
        store.open(args.name) as src,
        out.open("wb") as dst,
        _progress.bar(f"get {args.name}", size, "B", show=show, bytes_=True)
        as progress,
    ):
        shutil.copyfileobj(_progress.counting_reader(src, progress), dst)
    print(f"wrote {out}")
    return 0


def run_put(args: argparse.Namespace) -> int:
    """Upload a file under a snapshot name."""
    name = args.name or Path(args.file).name
    if not args.force:
        _check_upload(name, Path(args.file))
    store = _store(args)
    show = _progress.enabled(quiet=args.quiet, output_on_stdout=False)
    with (
        open(args.file, "rb") as src,
        _progress.bar(
            f"put {name}", Path(args.file).stat().st_size, "B", show=show, bytes_=True
        ) as progress,
    ):
        store.store(name, _progress.counting_reader(src, progress))
    print(f"stored {name}")
    return 0


def _check_upload(name: str, path: Path) -> None:
    """The name must parse and the file must verify in the format its name says: a
    broken .pb.gz in a shared bucket makes every Lightning Stream instance exit."""
    parsed = SnapshotName.parse(name)
    fmt = format_for(parsed)
    if fmt is None:
        return  # a foreign extension: nobody reads it as a snapshot
    try:
        with path.open("rb") as src:
            header = fmt.verify(src)
    except CorruptObjectError as exc:
        raise CorruptObjectError(f"{path}: not a valid .{fmt.extension} object: {exc}") from None
    if (header.db, header.instance) != (parsed.db, parsed.instance):
        raise CorruptObjectError(
            f"{path}: its header says db {header.db!r}, instance {header.instance!r}; "
            f"the name {name!r} says otherwise (--force to upload anyway)"
        )


def run_remove(args: argparse.Namespace) -> int:
    """Delete one object."""
    _store(args).delete(args.name)
    print(f"removed {args.name}")
    return 0


def run_dump(args: argparse.Namespace) -> int:
    """Print an object: header as JSON, then per DBI one line per entry."""
    if args.local:
        src: IO[bytes] = open(args.name, "rb")  # noqa: SIM115 - closed below
    else:
        src = _store(args).fetch(args.name)
    with src:
        # by the name's extension; a file named otherwise is read as evsync's own format
        fmt = format_for(Path(args.name).name) or EVS_ZST
        reader = fmt.reader(src)
        header = reader.header
        want = args.dbi.encode() if args.dbi else None
        if args.format == "json":
            return _dump_json(reader, want, _format_label(fmt.extension))
        meta = header.to_wire()
        meta["format"] = _format_label(fmt.extension)
        meta["time"] = show_time(header.timestamp_ns)  # beside timestamp_ns, for people
        if header.dbis:
            meta["dbis"] = [
                {**d, "name": d["name"].decode(errors="replace")} for d in meta["dbis"]
            ]
        else:  # a .pb.gz says what DBIs it holds only as they come: see below
            del meta["dbis"]
        print(json.dumps(meta, indent=2))
        for info, entries in reader.dbis():
            if want is not None and info.name != want:
                continue
            print(
                f"### {info.name.decode(errors='replace')} "
                f"(transform={info.transform!r}, flags={info.flags:#x})"
            )
            count = 0
            for key, ts, flags, value in entries:
                deleted = " deleted" if flags & 1 else ""
                shown = f"{show_bytes(key)} = {show_bytes(value)}"
                print(f"{shown}  ts={ts} ({show_time(ts)}){deleted}")
                count += 1
            print(f"# {count} entries")
    return 0


# What ``snapshots dump`` calls each format (the header's own "format" is evsync's name).
FORMAT_LABELS = {EVS_ZST.extension: "evsync-snapshot", "pb.gz": "lightningstream"}


def _format_label(extension: str) -> str:
    return FORMAT_LABELS.get(extension, extension)


def _dump_json(reader: SnapshotStream, want: bytes | None, label: str) -> int:
    out: dict[str, Any] = {"header": {**reader.header.to_wire(), "format": label}, "dbis": {}}
    names = []
    for info, entries in reader.dbis():
        names.append(info.name.decode(errors="replace"))
        if want is not None and info.name != want:
            deque(entries, maxlen=0)  # read past it: later DBIs follow in the stream
            continue
        out["dbis"][info.name.decode(errors="replace")] = [
            {
                "key": k.decode(errors="replace"),
                "ts": ts,
                "flags": fl,
                "value": v.decode(errors="replace"),
            }
            for k, ts, fl, v in entries
        ]
    out["header"]["dbis"] = names
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0
