"""The ``evsync`` command line: global flags here, one module per command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from evsync._version import __version__
from evsync.config import Config, LmdbConfig, default_config_path, load_config
from evsync.config.load import load_lmdb_configs
from evsync.errors import ConfigError, EvsyncError
from evsync.log import setup_logging

log = logging.getLogger("evsync")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# what a shell reports for a process killed by SIGPIPE (128 + 13): `evsync ... | head`
# ends as quietly as `cat` would
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command registered."""
    from evsync.cli import completion, drop_shadow, dump, snapshots, status, sync, version

    parser = argparse.ArgumentParser(
        prog="evsync",
        description="Event-driven sync of LMDB databases through an S3 bucket "
        "(Lightning Stream compatible).",
    )
    parser.add_argument(
        "-c", "--config", default=None, help="config file (default: $EVSYNC_CONFIG or evsync.yaml)"
    )
    parser.add_argument("-V", "--version", action="version", version=f"evsync {__version__}")
    parser.add_argument("-i", "--instance", default=None, help="override the instance name")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars on stderr (they are shown only on a terminal anyway)",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error", "fatal"],
        help="log level (default: log.level of the config, else info)",
    )
    parser.add_argument(
        "--log-format",
        default=None,
        choices=["human", "logfmt", "json"],
        help="log format (default: log.format of the config, else human)",
    )
    parser.add_argument(
        "--log-config",
        action="store_true",
        help="log the effective config (secrets masked) at startup",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (sync, snapshots, dump, drop_shadow, status, version, completion):
        module.register(sub)
    return parser


def load(args: argparse.Namespace) -> Config:
    """Load the config the global flags point at, and set up logging from it."""
    config = load_config(args.config or default_config_path(), instance=args.instance)
    setup_logging(
        args.log_level or config.log.level,
        args.log_format or config.log.format,
        config.log.timestamp,
    )
    if args.log_config:
        log.info("effective config: %s", json.dumps(config.masked(), default=str))
    return config


def load_lmdbs(args: argparse.Namespace) -> dict[str, LmdbConfig]:
    """Only the ``lmdbs`` section of the config the global flags point at: commands that
    read the local LMDBs alone (``dump``) need no storage credentials."""
    return load_lmdb_configs(args.config or default_config_path())


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (``| head``): point stdout at /dev/null so that
    the interpreter's final flush does not fail again, and exit as SIGPIPE would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("version", "completion"):
        setup_logging(args.log_level or "info", args.log_format or "human")
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below
        return result
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except ConfigError as exc:
        print(f"evsync: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EvsyncError as exc:
        print(f"evsync: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a local file named on the command line: missing, unreadable
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"evsync: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


__all__ = ["__version__", "build_parser", "load", "load_lmdbs", "main"]
