# ruff: noqa: E501  (the Markdown table rows are written out whole)
"""Email benchmarks; rewrites the "email" section of docs/benchmarks.md.

    .venv/bin/python -m bench.email              # 5,000-message mailbox (a few minutes on 2 cores)
    .venv/bin/python -m bench.email --messages 500
    .venv/bin/python -m bench.email --corpus     # visible reply against two libraries (bench.email_replies)

1. Normalisation throughput over the project's corpus: ``gateway.mail`` (parse, charsets, quotes, auto-replies,
   attachments stored) against Python's ``email`` parser alone (``policy.default``, text parts decoded), alternating
   rounds in one run; reported as messages/s and their ratio.
2. IMAP import from a real Dovecot: a mailbox of N mixed messages (charsets, attachments, replies, auto-replies,
   about 1 % broken) polled in-process (import rate), then run through the pipeline (messages/s).
3. The same mailbox imported by a ``gateway work`` process SIGKILLed mid-import and restarted: every message once,
   broken ones quarantined with their reason, every reply threaded onto the conversation of the mail it answers.
"""

from __future__ import annotations

import argparse
import contextlib
import email
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from email import policy
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, select

from bench.docs import write_section
from gateway.attachments import AttachmentStore
from gateway.config import load_config
from gateway.mail.mime import provider_id
from gateway.mail.normalize import EmailSettings, email_to_messages
from gateway.pipeline import PipelineWorker
from gateway.records import RawRecord
from gateway.runtime import build_runtime
from gateway.storage.cursors import Cursors
from gateway.storage.db import utcnow
from gateway.storage.tables import dead_letters, inbox, messages
from gateway.webhooks import Headers
from gateway.worker import InboxWriter
from tests.conformance.channel import config_text, drain_pipeline
from tests.dovecot import Dovecot
from tests.mail.corpus import MailboxMail, corpus, mixed_mailbox

CHANNEL = "mail"


def _stdlib_only(raws: list[bytes]) -> None:
    for raw in raws:
        message = email.message_from_bytes(raw, policy=policy.default)
        for part in message.walk():
            if part.get_content_maintype() == "text":
                with contextlib.suppress(LookupError, UnicodeError):
                    part.get_content()
        _ = (message["From"], message["Subject"], message["Message-ID"])


def _ours(raws: list[bytes], store: AttachmentStore, settings: EmailSettings) -> None:
    now = utcnow()
    for n, raw in enumerate(raws):
        record = RawRecord(inbox_id=n, connector=CHANNEL, provider_id=provider_id(raw), kind="message", body=raw,
                           content_type="message/rfc822", headers=Headers(), public_url="", received_at=now)
        email_to_messages(raw, record, connector_type="imap", settings=settings, attachments=store, received_at=now)


def normalisation(rounds: int = 7, copies: int = 20) -> dict[str, Any]:
    raws = [case.raw for case in corpus() if not case.broken] * copies
    settings = EmailSettings(type="imap")
    ours, stdlib = [], []
    with tempfile.TemporaryDirectory() as folder:
        store = AttachmentStore(Path(folder))
        for _ in range(rounds):
            start = time.perf_counter()
            _ours(raws, store, settings)
            ours.append(len(raws) / (time.perf_counter() - start))
            start = time.perf_counter()
            _stdlib_only(raws)
            stdlib.append(len(raws) / (time.perf_counter() - start))
    return {"messages": len(raws), "ours": statistics.median(ours), "stdlib": statistics.median(stdlib),
            "ratio": statistics.median(ours) / statistics.median(stdlib)}


def _config(folder: Path, server: Dovecot) -> Path:
    path = folder / "config.yaml"
    text = config_text(CHANNEL, server.settings(batch_size=100, poll_seconds=1))
    text = text.replace("{storage_url}", f"sqlite:///{folder / 'gateway.db'}")
    path.write_text(text.replace("workers: {", "workers: {lease_seconds: 5, "), encoding="utf-8")
    return path


def _check(rt: Any, mailbox: list[MailboxMail]) -> dict[str, Any]:
    kinds = [m.kind for m in mailbox]
    with rt.engine.connect() as conn:
        ids = list(conn.execute(select(inbox.c.provider_id)).scalars())
        rows = {r.data["thread"]["message_id"]: r for r in conn.execute(
            select(messages.c.data, messages.c.conversation_id, messages.c.thread_rule))}
        dead = list(conn.execute(select(dead_letters.c.reason)).scalars())
        ignored = conn.execute(select(func.count()).select_from(inbox).where(inbox.c.status == "ignored")).scalar()
    replies = [m for m in mailbox if m.kind == "reply"]
    threaded = sum(1 for m in replies if m.message_id in rows and m.parent in rows
                   and rows[m.message_id].conversation_id == rows[m.parent].conversation_id)
    by_key = sum(1 for m in replies if m.message_id in rows and rows[m.message_id].thread_rule == "thread_key")
    result = {
        "inbox": len(ids), "distinct": len(set(ids)), "messages": len(rows),
        "expected_messages": kinds.count("customer") + kinds.count("reply"), "ignored": ignored,
        "expected_ignored": kinds.count("ignored"), "quarantined": len(dead), "expected_broken": kinds.count("broken"),
        "reasons": sorted({r.split(":")[0] for r in dead}), "replies": len(replies), "threaded": threaded,
        "by_thread_key": by_key,
    }
    result["ok"] = (result["inbox"] == result["distinct"] == len(mailbox)
                    and result["messages"] == result["expected_messages"]
                    and result["ignored"] == result["expected_ignored"]
                    and result["quarantined"] == result["expected_broken"] and threaded == len(replies))
    return result


def imap(count: int) -> dict[str, Any]:
    mailbox = mixed_mailbox(count, seed="b")
    server = Dovecot.start()
    out: dict[str, Any] = {"count": count}
    try:
        start = time.perf_counter()
        with server.client() as client:
            for mail in mailbox:
                client.append("INBOX", mail.raw)
        out["append_seconds"] = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            rt = build_runtime(load_config(_config(folder, server)), http=requests.Session())
            try:
                start = time.perf_counter()
                rt.channels[CHANNEL].poll(InboxWriter(rt, CHANNEL), Cursors(rt.engine))  # type: ignore[attr-defined]
                out["import_seconds"] = time.perf_counter() - start
                worker = PipelineWorker(rt, "bench")  # loads the language model, before the clock starts
                start = time.perf_counter()
                drain_pipeline(rt, worker)
                out["pipeline_seconds"] = time.perf_counter() - start
                out["in_process"] = _check(rt, mailbox)
            finally:
                rt.close()
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            path = _config(folder, server)
            rt = build_runtime(load_config(path), http=requests.Session())
            command = [sys.executable, "-m", "gateway", "work", "--config", str(path)]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            try:
                first = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
                kill_at = count // 3
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline and _count(rt, None) < kill_at:
                    time.sleep(0.05)
                first.send_signal(signal.SIGKILL)
                first.wait()
                out["killed_at"] = _count(rt, None)
                second = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                try:
                    deadline = time.monotonic() + 900
                    while time.monotonic() < deadline and (_count(rt, None) < count or _count(rt, "pending") > 0):
                        time.sleep(0.2)
                finally:
                    second.send_signal(signal.SIGTERM)
                    second.wait(timeout=60)
                out["kill_restart"] = _check(rt, mailbox)
            finally:
                rt.close()
    finally:
        server.stop()
    return out


def _count(rt: Any, status: str | None) -> int:
    query = select(func.count()).select_from(inbox)
    if status:
        query = query.where(inbox.c.status == status)
    with rt.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def render(norm: dict[str, Any], result: dict[str, Any]) -> str:
    n, ip, kr = result["count"], result["in_process"], result["kill_restart"]

    def verdict(check: dict[str, Any]) -> str:
        return "met" if check["ok"] else "**missed**"

    return f"""## Email (IMAP, MIME normalisation)

Written by `.venv/bin/python -m bench.email` ({os.cpu_count()} cores, SQLite, Dovecot {_dovecot_version()} on
loopback).

### Normalisation throughput

{norm['messages']} messages (the corpus in `tests/mail/corpus.py`, repeated), alternating rounds, medians:

| | messages/s |
| --- | ---: |
| `gateway.mail` (parse, charsets with detection, visible reply, auto-reply check, attachments stored) | {norm['ours']:,.0f} |
| Python's `email` parser alone (`policy.default`, text parts decoded) | {norm['stdlib']:,.0f} |
| ratio | {norm['ratio']:.2f} |

### IMAP import: {n:,} mixed messages

| | |
| --- | ---: |
| APPEND to Dovecot | {result['append_seconds']:.1f} s |
| import (poll: fetch, inbox commit, cursor) | {result['import_seconds']:.1f} s = {n / result['import_seconds']:,.0f} messages/s |
| pipeline (normalise, customer, thread, outbox; the language model loaded before the clock) | {result['pipeline_seconds']:.1f} s = {n / result['pipeline_seconds']:,.0f} rows/s |

| check | in-process | `gateway work` SIGKILLed at {result.get('killed_at', 0)} inbox rows, restarted |
| --- | --- | --- |
| inbox rows (distinct / total / mailbox) | {ip['distinct']} / {ip['inbox']} / {n} | {kr['distinct']} / {kr['inbox']} / {n} |
| customer messages (got / expected) | {ip['messages']} / {ip['expected_messages']} | {kr['messages']} / {kr['expected_messages']} |
| auto-replies, bounces, lists ignored | {ip['ignored']} / {ip['expected_ignored']} | {kr['ignored']} / {kr['expected_ignored']} |
| broken ones quarantined (reasons) | {ip['quarantined']} / {ip['expected_broken']} ({', '.join(ip['reasons'])}) | {kr['quarantined']} / {kr['expected_broken']} |
| replies on the conversation of the mail they answer | {ip['threaded']} / {ip['replies']} | {kr['threaded']} / {kr['replies']} |
| ... of which threaded by the reply's own headers (`thread_key`; the rest arrived before their parent, which then joined them) | {ip['by_thread_key']} | {kr['by_thread_key']} |
| none lost, none twice | {verdict(ip)} | {verdict(kr)} |
"""


def _dovecot_version() -> str:
    from tests.dovecot import dovecot_binary

    try:
        return subprocess.run([dovecot_binary(), "--version"], capture_output=True, text=True).stdout.split()[0]
    except (OSError, IndexError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--corpus", action="store_true",
                        help="score the visible reply against email-reply-parser and mail-parser-reply on the reply "
                             "corpus instead (bench.email_replies)")
    args = parser.parse_args()
    if args.corpus:
        from bench import email_replies

        email_replies.main(write=not args.no_write)
        return
    norm = normalisation()
    print(f"normalisation: ours {norm['ours']:.0f}/s, stdlib {norm['stdlib']:.0f}/s, ratio {norm['ratio']:.2f}")
    result = imap(args.messages)
    print(result)
    if not args.no_write:
        write_section("email", render(norm, result))


if __name__ == "__main__":
    main()
