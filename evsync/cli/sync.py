"""``evsync sync`` and ``evsync receive``: run the daemon, or one pass with --only-once."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from prometheus_client import Counter
from tqdm.contrib.logging import logging_redirect_tqdm

from evsync.cli import _progress
from evsync.daemon import Daemon
from evsync.metrics import Metrics

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    """Add ``sync`` and ``receive`` to the parser."""
    p = sub.add_parser("sync", help="continuous two-way sync of every configured LMDB")
    _add_common(p, "merge every instance's newest object, upload if needed, exit")
    p.set_defaults(func=run_sync, receive_only=False)
    r = sub.add_parser("receive", help="like sync, but never upload")
    _add_common(r, "merge every instance's newest object, exit (nothing is uploaded)")
    r.set_defaults(func=run_sync, receive_only=True)


def _add_common(p: argparse.ArgumentParser, only_once_help: str) -> None:
    p.add_argument("--only-once", action="store_true", help=only_once_help)
    p.add_argument(
        "--only-db",
        action="append",
        default=None,
        metavar="DB",
        help="sync only this db (repeatable)",
    )
    _add_force_rejoin(p)


def _add_force_rejoin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force-rejoin",
        action="store_true",
        help="sync even though this LMDB was away longer than the tombstone retention "
        "(records deleted elsewhere meanwhile may come back; see docs/operations.md)",
    )


def run_sync(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM, SIGINT or SIGHUP, or one pass."""
    from evsync.cli import load

    config = load(args)
    only_once = args.only_once or config.only_once
    daemon = Daemon(
        config,
        only_dbs=args.only_db,
        receive_only=args.receive_only,
        force_rejoin=args.force_rejoin,
    )
    try:
        if only_once:
            started = time.monotonic()
            show = _progress.enabled(quiet=args.quiet, output_on_stdout=False)
            with _merge_progress(daemon.metrics, show=show):
                ok = daemon.run_once()
            if not ok:
                log.error("only-once sync did not complete")
            log.info("%s", once_summary(daemon.metrics, time.monotonic() - started))
            return 0 if ok else 1
        _install_signal_handlers(daemon.stop_event)
        daemon.start()
        asked = daemon.wait()
        log.info("stopping")
        daemon.stop()
        log.info("stopped")
        return 0 if asked else 1
    finally:
        daemon.close()


def counter_total(counter: Counter) -> float:
    """The sum of a counter over all its labels."""
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


@contextmanager
def _merge_progress(metrics: Metrics, *, show: bool) -> Iterator[None]:
    """On a terminal, the entries merged so far with their rate, and the objects and
    bytes fetched (what a first ``--only-once`` of a big bucket spends its time on); the
    log lines go through the bar so neither garbles the other. Nothing when not shown."""
    if not show:
        yield
        return
    done = threading.Event()
    with _progress.bar("merging", None, "entries", show=True) as bar, logging_redirect_tqdm():

        def update() -> None:
            bar.n = int(counter_total(metrics.entries_merged))
            objects = counter_total(metrics.objects_loaded)
            fetched = counter_total(metrics.bytes_downloaded) / (1 << 20)
            bar.set_postfix_str(f"{objects:.0f} objects, {fetched:.1f} MiB fetched")

        def poll() -> None:
            while not done.wait(_progress.MIN_INTERVAL_SECONDS):
                update()

        thread = threading.Thread(target=poll, name="progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            update()  # the final figures, even for a run shorter than one redraw


def once_summary(metrics: Metrics, seconds: float) -> str:
    """The one line a ``--only-once`` run ends with: what it merged and stored (the
    ``.pb.gz`` snapshots for Lightning Stream included)."""
    stored = counter_total(metrics.objects_stored) + counter_total(metrics.ls_snapshots_stored)
    return (
        f"only-once: merged {counter_total(metrics.objects_loaded):.0f} object(s) "
        f"({counter_total(metrics.bytes_downloaded):.0f} bytes fetched), "
        f"stored {stored:.0f} object(s) "
        f"({counter_total(metrics.bytes_uploaded):.0f} bytes) in {seconds:.2f}s"
    )


def _install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    # A crash in C code (or SIGABRT from a supervisor, or the test suite, giving up on a
    # stop) prints every thread's Python stack to stderr first: where a hang was
    faulthandler.enable()
    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    # A graceful stop too (its default would kill the daemon mid-upload); evsync keeps no
    # log file to reopen, and a supervisor's restart re-reads the config
    signal.signal(signal.SIGHUP, handle)
