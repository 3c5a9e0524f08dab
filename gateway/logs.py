"""Logging: plain text for people, JSON lines (one object per line) for log pipelines.

Whatever the processes write is masked on the way out (``gateway.redact``): a phone number or email address in
any line, a library's or a traceback's included, is shortened to ``+1415…0100`` or ``a…@example.com``. Libraries
that log whole requests or answers at DEBUG (slack_sdk logs every ``users.info`` profile) stay at WARNING.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType

from pythonjsonlogger.json import JsonFormatter

from gateway.redact import redact

QUIET = ("apscheduler", "urllib3", "slack_sdk", "imapclient", "oauthlib", "requests_oauthlib", "twilio")


class MaskingFormatter(logging.Formatter):
    """The plain-text line, masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class MaskingJsonFormatter(JsonFormatter):
    """The JSON line, masked (the masks are plain text, so the line stays valid JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(MaskingJsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
            datefmt="%Y-%m-%dT%H:%M:%S%z"))
    else:
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)  # a library's warning is a log line too, not a bare line on stderr
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """A crash is one log line with its traceback (one JSON object in JSON logs), not bare traceback lines."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("gateway").critical("stopped by an unexpected error", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("gateway").critical("%s stopped by an unexpected error", name,
                                          exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
