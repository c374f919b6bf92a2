"""Logging setup for the CLI: ``human``, ``logfmt`` or ``json`` lines on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        msg = record.getMessage().replace('"', '\\"')
        line = (
            f"time={ts}.{int(record.msecs):03d} level={record.levelname.lower()} "
            f'logger={record.name} msg="{msg}"'
        )
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", "\\n").replace('"', '\\"')
            line += f' exc="{exc}"'
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(level: str = "info", fmt: str = "human", timestamp: str = "short") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif fmt == "logfmt":
        handler.setFormatter(_LogfmtFormatter())
    else:
        prefix = {
            "short": "%(asctime)s.%(msecs)03d ",
            "full": "%(asctime)s.%(msecs)03d ",
            "disable": "",
        }[timestamp]
        datefmt = "%H:%M:%S" if timestamp == "short" else "%Y-%m-%d %H:%M:%S"
        handler.setFormatter(
            logging.Formatter(prefix + "%(levelname)-7s %(name)s: %(message)s", datefmt=datefmt)
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    # boto and watchdog are chatty at debug; their detail rarely helps an operator
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
