"""Logging: plain text for people, JSON lines (one object per line) for log pipelines.

Whatever the processes write is masked on the way out: a phone number or email address in any line, a library's or
a traceback's included, becomes a short keyed hash (``phone#1a2b3c4d``, ``gateway.redact.hash_identifiers``), the
same in every line and process of one install, and a card number is masked. ``logging.include_pii: true`` turns the
hashing off (card numbers stay masked). Message text is never logged; where an error quotes it back (a CRM echoing
the request), ``withheld`` has it shown as ``[message text]``. Libraries that log whole requests or answers at DEBUG
(slack_sdk logs every ``users.info`` profile) stay at WARNING.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache, partial
from types import TracebackType
from typing import TYPE_CHECKING

from pythonjsonlogger.json import JsonFormatter

from gateway.privacy import short_hash
from gateway.redact import hash_identifiers, mask_cards

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

QUIET = ("apscheduler", "urllib3", "slack_sdk", "imapclient", "oauthlib", "requests_oauthlib", "twilio")
_PROCESS_KEY = os.urandom(32)  # until setup_logging is given the install's key


_WORD = re.compile(r"\w+")
_SHINGLE = 3
_WITHHELD: ContextVar[frozenset[tuple[str, ...]]] = ContextVar("withheld", default=frozenset())


@contextmanager
def withheld(texts: Iterable[str | None]) -> Iterator[None]:
    """While inside, lines this thread logs show ``[message text]`` wherever they quote one of ``texts`` (a CRM's
    or provider's error that echoes what it was sent), quoted in part, truncated or escaped as it may be."""
    shingles = set(_WITHHELD.get())
    for text in texts:
        words = [w.lower() for w in _WORD.findall(text or "")]
        size = min(_SHINGLE, len(words))
        shingles |= {tuple(words[i:i + size]) for i in range(len(words) - size + 1)} if size else set()
    token = _WITHHELD.set(frozenset(shingles))
    try:
        yield
    finally:
        _WITHHELD.reset(token)


def _withhold(line: str) -> str:
    shingles = _WITHHELD.get()
    if not shingles:
        return line
    tokens = list(_WORD.finditer(line))
    quoted = [False] * len(tokens)
    for size in {len(s) for s in shingles}:
        for i in range(len(tokens) - size + 1):
            if tuple(t.group().lower() for t in tokens[i:i + size]) in shingles:
                quoted[i:i + size] = [True] * size
    out, last, i = [], 0, 0
    while i < len(tokens):
        if not quoted[i]:
            i += 1
            continue
        start = i
        while i < len(tokens) and quoted[i]:
            i += 1
        out += [line[last:tokens[start].start()], "[message text]"]
        last = tokens[i - 1].end()
    return "".join(out) + line[last:]


class _Masking:
    """How a finished line is masked: identifiers hashed with ``key``, or (``include_pii``) left as written."""

    def __init__(self, key: bytes | None = None, include_pii: bool = False) -> None:
        self.include_pii = include_pii
        self.digest = lru_cache(maxsize=4096)(partial(short_hash, key or _PROCESS_KEY))

    def __call__(self, line: str) -> str:
        line = _withhold(line)
        return mask_cards(line) if self.include_pii else hash_identifiers(line, self.digest)


class MaskingFormatter(logging.Formatter):
    """The plain-text line, masked."""

    masking = _Masking()

    def format(self, record: logging.LogRecord) -> str:
        return self.masking(super().format(record))


class MaskingJsonFormatter(JsonFormatter):
    """The JSON line, masked (the masks are plain text, so the line stays valid JSON)."""

    masking = _Masking()

    def format(self, record: logging.LogRecord) -> str:
        return self.masking(super().format(record))


def setup_logging(level: str = "INFO", fmt: str = "text", *, key: bytes | None = None,
                  include_pii: bool = False) -> None:
    """Log to stderr; ``key`` is the install's privacy key (``GatewayConfig.privacy_key``)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: MaskingFormatter | MaskingJsonFormatter
    if fmt == "json":
        formatter = MaskingJsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
            datefmt="%Y-%m-%dT%H:%M:%S%z")
    else:
        formatter = MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    formatter.masking = _Masking(key, include_pii)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)  # a library's warning is a log line too, not a bare line on stderr
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def setup_logging_for(config: GatewayConfig, fmt: str) -> None:
    """``setup_logging`` as a gateway's config says."""
    settings = config.settings.logging
    setup_logging(settings.level, fmt, key=config.privacy_key, include_pii=settings.include_pii)


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
