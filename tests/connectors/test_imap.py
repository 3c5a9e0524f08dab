"""The ``imap`` channel against a real Dovecot: cursors, crash and restart, server-side actions, backoff, backfill,
implicit TLS and STARTTLS with a certificate from a private CA, and XOAUTH2 checked by Dovecot's oauth2 passdb.

Mail is appended over IMAP (as a delivering server leaves it), polled with the connector, and followed through the
pipeline: every message arrives exactly once, broken ones are quarantined with their reason, auto-replies give no
message, and replies thread onto the conversation of the mail they answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import ValidationError
from sqlalchemy import func, select

from connectors.imap import ImapChannel, ImapConfig
from gateway.config import GatewayConfig, load_config
from gateway.errors import OnlineCheckFailed
from gateway.plugins import ConnectorContext
from gateway.records import InboxItem
from gateway.runtime import Runtime, build_runtime
from gateway.storage.cursors import Cursors
from gateway.storage.tables import dead_letters, inbox, messages
from gateway.worker import InboxWriter
from tests.conformance.channel import config_text, drain_pipeline
from tests.dovecot import (  # noqa: F401  (the fixtures)
    OAUTH2_TOKEN,
    Dovecot,
    TokenServer,
    dovecot,
    dovecot_oauth2,
    dovecot_tls,
    token_server,
    write_ca,
)
from tests.mail.corpus import mixed_mailbox, text_mail

CHANNEL = "mail-support"


@pytest.fixture
def runtime_for(write_config: Callable[..., Path]) -> Iterator[Callable[..., Runtime]]:
    """Build a runtime whose one channel is an ``imap`` channel with the given settings."""
    built: list[Runtime] = []

    def make(settings: dict[str, Any]) -> Runtime:
        config: GatewayConfig = load_config(write_config(config_text(CHANNEL, settings)))
        rt = build_runtime(config, http=requests.Session())
        built.append(rt)
        return rt

    yield make
    for rt in built:
        rt.close()


def channel_of(rt: Runtime) -> ImapChannel:
    channel = rt.channels[CHANNEL]
    assert isinstance(channel, ImapChannel)
    return channel


class CrashAfter:
    """An inbox sink that dies after ``n`` commits, as a worker killed mid-batch would."""

    def __init__(self, inner: InboxWriter, n: int) -> None:
        self.inner, self.n, self.calls = inner, n, 0

    def store(self, items: list[InboxItem], headers: dict[str, str] | None = None) -> int:
        if self.calls >= self.n:
            raise RuntimeError("worker killed")
        self.calls += 1
        return self.inner.store(items, headers)


def scalar(rt: Runtime, statement: Any) -> Any:
    with rt.engine.connect() as conn:
        return conn.execute(statement).scalar_one()


def inbox_ids(rt: Runtime) -> list[str]:
    with rt.engine.connect() as conn:
        return list(conn.execute(select(inbox.c.provider_id).where(inbox.c.connector == CHANNEL)).scalars())


def test_300_mixed_messages_imported_once_across_a_crash_and_threaded(
        dovecot: Dovecot, runtime_for: Callable[..., Runtime]) -> None:  # noqa: F811
    mailbox = mixed_mailbox(300)
    dovecot.append([m.raw for m in mailbox])
    rt = runtime_for(dovecot.settings(batch_size=40))
    cursors = Cursors(rt.engine)
    with pytest.raises(RuntimeError, match="killed"):
        channel_of(rt).poll(CrashAfter(InboxWriter(rt, CHANNEL), 3), cursors)
    assert len(inbox_ids(rt)) == 120
    assert cursors.get(f"imap:{CHANNEL}")["last_uid"] == 120
    # the restarted poller (a new instance, as after a process restart) carries on from the cursor
    restarted = ImapChannel(CHANNEL, channel_of(rt).config, channel_of(rt).context)
    assert restarted.poll(InboxWriter(rt, CHANNEL), cursors) == 180
    assert restarted.poll(InboxWriter(rt, CHANNEL), cursors) == 0
    ids = inbox_ids(rt)
    assert len(ids) == len(set(ids)) == 300

    drain_pipeline(rt)
    kinds = [m.kind for m in mailbox]
    with rt.engine.connect() as conn:
        stored = {row.data["thread"]["message_id"]: row for row in conn.execute(
            select(messages.c.data, messages.c.conversation_id, messages.c.thread_rule)
            .where(messages.c.connector == CHANNEL))}
        dead = list(conn.execute(select(dead_letters.c.reason, dead_letters.c.source_id)
                                 .where(dead_letters.c.target == CHANNEL)))
        ignored = conn.execute(select(func.count()).select_from(inbox).where(
            inbox.c.connector == CHANNEL, inbox.c.status == "ignored")).scalar_one()
        bodies = conn.execute(select(func.count()).select_from(inbox).where(
            inbox.c.connector == CHANNEL, inbox.c.id.in_([d.source_id for d in dead]),
            func.length(inbox.c.body) > 0)).scalar_one()
    assert len(stored) == kinds.count("customer") + kinds.count("reply")
    assert ignored == kinds.count("ignored")
    assert len(dead) == kinds.count("broken") == bodies
    assert all("UnparseableMail" in d.reason and "From" in d.reason for d in dead)
    for mail in mailbox:
        if mail.kind == "reply":
            row, parent = stored[mail.message_id], stored[mail.parent]
            assert row.thread_rule == "thread_key"
            assert row.conversation_id == parent.conversation_id


def test_after_import_seen_and_move_only_touch_stored_mail(
        dovecot: Dovecot, runtime_for: Callable[..., Runtime]) -> None:  # noqa: F811
    dovecot.append([text_mail(f"Mail {n}", message_id=f"s{n}@x.example") for n in range(5)])
    rt = runtime_for(dovecot.settings(after_import="seen", batch_size=2))
    cursors = Cursors(rt.engine)
    with pytest.raises(RuntimeError):
        channel_of(rt).poll(CrashAfter(InboxWriter(rt, CHANNEL), 1), cursors)
    with dovecot.client() as client:
        client.select_folder("INBOX", readonly=True)
        seen = client.search(["SEEN"])
    assert seen == [1, 2]  # the batch that committed, and nothing of the batch that did not
    channel_of(rt).poll(InboxWriter(rt, CHANNEL), cursors)
    with dovecot.client() as client:
        client.select_folder("INBOX", readonly=True)
        assert client.search(["UNSEEN"]) == []

    moved = runtime_for(dovecot.settings(after_import="move:Archive"))
    with dovecot.client() as client:
        client.select_folder("INBOX")
        client.remove_flags(client.search(["ALL"]), [b"\\Seen"])
    channel = ImapChannel("mail-move", channel_of(moved).config, channel_of(moved).context)
    assert channel.poll(InboxWriter(moved, "mail-move"), Cursors(moved.engine)) == 5
    with dovecot.client() as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        assert client.select_folder("Archive")[b"EXISTS"] == 5


def test_changed_uidvalidity_rescans_without_duplicates(
        dovecot: Dovecot, runtime_for: Callable[..., Runtime]) -> None:  # noqa: F811
    dovecot.append([text_mail(f"Mail {n}", message_id=f"u{n}@x.example") for n in range(4)])
    rt = runtime_for(dovecot.settings())
    cursors = Cursors(rt.engine)
    assert channel_of(rt).poll(InboxWriter(rt, CHANNEL), cursors) == 4
    dovecot.append([text_mail("New after renumbering", message_id="u-new@x.example")])
    cursors.put(f"imap:{CHANNEL}", {"uidvalidity": 1, "last_uid": 999})  # as if the server renumbered the folder
    assert channel_of(rt).poll(InboxWriter(rt, CHANNEL), cursors) == 1
    assert len(inbox_ids(rt)) == 5
    assert cursors.get(f"imap:{CHANNEL}")["last_uid"] == 5


def test_since_skips_older_mail_and_internaldate_is_received_at(
        dovecot: Dovecot, runtime_for: Callable[..., Runtime]) -> None:  # noqa: F811
    with dovecot.client() as client:
        client.append("INBOX", text_mail("old", message_id="old@x.example"), msg_time=datetime(2020, 1, 5, tzinfo=UTC))
        client.append("INBOX", text_mail("new", message_id="new@x.example"), msg_time=datetime(2024, 6, 3, 9, 0,
                                                                                                tzinfo=UTC))
    rt = runtime_for(dovecot.settings(since="2024-01-01"))
    assert channel_of(rt).poll(InboxWriter(rt, CHANNEL), Cursors(rt.engine)) == 1
    assert inbox_ids(rt) == ["INBOX:new@x.example"]
    drain_pipeline(rt)
    with rt.engine.connect() as conn:
        data = conn.execute(select(messages.c.data)).scalar_one()
    assert data["received_at"] == "2024-06-03T09:00:00Z"
    assert data["sent_at"] == "2024-06-03T10:12:00Z"
    assert data["extras"]["uid"] == 2


def test_connection_failure_backs_off(runtime_for: Callable[..., Runtime], caplog: pytest.LogCaptureFixture) -> None:
    from tests.dovecot import free_port

    rt = runtime_for({"type": "imap", "host": "127.0.0.1", "port": free_port(), "security": "none",
                      "username": "u", "password": "test-password", "poll_seconds": 30})
    channel = channel_of(rt)
    cursors = Cursors(rt.engine)
    assert channel.poll(InboxWriter(rt, CHANNEL), cursors) == 0
    assert channel._failures == 1 and channel._next_attempt > time.monotonic() + 20
    assert channel.poll(InboxWriter(rt, CHANNEL), cursors) == 0
    assert channel._failures == 1  # no second attempt inside the backoff
    assert "retrying in" in caplog.text and "test-password" not in caplog.text


def test_config_rules() -> None:
    base = {"type": "imap", "host": "imap.example.org", "username": "u"}
    with pytest.raises(ValidationError, match="password or oauth2_token"):
        ImapConfig.model_validate(base)
    with pytest.raises(ValidationError, match="loopback"):
        ImapConfig.model_validate({**base, "password": "p", "security": "none"})
    with pytest.raises(ValidationError):
        ImapConfig.model_validate({**base, "password": "p", "after_import": "delete"})
    config = ImapConfig.model_validate({**base, "oauth2_token": "test-oauth-value", "after_import": "move:Done"})
    assert "test-oauth-value" not in repr(config)
    channel = ImapChannel("m", config, ConnectorContext(http=requests.Session()))
    assert channel.poll_seconds == 60 and channel.config.since is None
    assert ImapConfig.model_validate({**base, "password": "p", "since": "2024-01-01"}).since == date(2024, 1, 1)


# enough mail that the import takes far longer than the check that kills it: on an idle machine 400 were once all
# imported between two checks
MAILS = 1200


def test_gateway_work_killed_mid_import_then_restarted(
        dovecot: Dovecot, write_config: Callable[..., Path], tmp_path: Path) -> None:  # noqa: F811
    """A real ``gateway work`` process SIGKILLed while importing; the next one finishes: each mail once."""
    mailbox = mixed_mailbox(MAILS, seed="k")
    dovecot.append([m.raw for m in mailbox])
    # a short lease: rows the killed worker had claimed are claimed again within seconds
    path = write_config(config_text(CHANNEL, dovecot.settings(batch_size=25, poll_seconds=1))
                        .replace("workers: {", "workers: {lease_seconds: 5, "))
    rt = build_runtime(load_config(path), http=requests.Session())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "gateway", "work", "--config", str(path)]
    # logs go to files: a pipe nobody reads fills up and blocks the worker at its next log line
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    try:
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                 stderr=first_log.open("wb"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(inbox_ids(rt)) < 50:
            assert first.poll() is None, first_log.read_text(errors="replace")
            time.sleep(0.002)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert 0 < len(inbox_ids(rt)) < MAILS, "the kill came after the import had finished"
        second = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                  stderr=second_log.open("wb"))
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and scalar(rt, select(func.count()).select_from(inbox).where(
                    inbox.c.status == "pending")) + (MAILS - len(inbox_ids(rt))) > 0:
                time.sleep(0.1)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
        assert second.returncode == 0, second_log.read_text(errors="replace")[-2000:]
        ids = inbox_ids(rt)
        assert len(ids) == len(set(ids)) == MAILS
        kinds = [m.kind for m in mailbox]
        assert scalar(rt, select(func.count()).select_from(messages)) == kinds.count("customer") + kinds.count("reply")
        assert scalar(rt, select(func.count()).select_from(dead_letters)) == kinds.count("broken")
        cursor = Cursors(rt.engine).get(f"imap:{CHANNEL}")
        assert cursor is not None and cursor["last_uid"] == MAILS
        json.dumps(cursor)
    finally:
        rt.close()


def test_idle_imports_mail_arriving_while_waiting(
        dovecot: Dovecot, runtime_for: Callable[..., Runtime]) -> None:  # noqa: F811
    import threading

    rt = runtime_for(dovecot.settings(idle=True, poll_seconds=4))
    result: list[int] = []
    poller = threading.Thread(target=lambda: result.append(
        channel_of(rt).poll(InboxWriter(rt, CHANNEL), Cursors(rt.engine))))
    poller.start()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and Cursors(rt.engine).get(f"imap:{CHANNEL}") is None:
        time.sleep(0.02)  # the poller has caught up (its cursor exists) and is waiting in IDLE
    dovecot.append([text_mail("Arrived during IDLE", message_id="idle@x.example")])
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not inbox_ids(rt):
        time.sleep(0.02)
    assert inbox_ids(rt) == ["INBOX:idle@x.example"]
    assert poller.is_alive()  # it arrived through IDLE, before the poll returned
    poller.join(timeout=10)
    assert result == [1]


def tls_logins(server: Dovecot, method: str = "PLAIN", expect: int = 0) -> int:
    """How many logins Dovecot logged with ``method`` over an encrypted connection (waiting a little for ``expect``:
    Dovecot's log process writes the file asynchronously)."""
    deadline = time.monotonic() + 5
    while True:
        count = sum(f"method={method}," in line and ", TLS," in line for line in server.logins())
        if count >= expect or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_imports_each_message_once(
        security: str, dovecot_tls: Dovecot, runtime_for: Callable[..., Runtime],  # noqa: F811
        tmp_path: Path) -> None:
    dovecot_tls.append([text_mail(f"Mail {n}", message_id=f"t{n}@x.example") for n in range(5)])
    assert dovecot_tls.ca_file is not None
    (tmp_path / "certs").mkdir()
    shutil.copy(dovecot_tls.ca_file, tmp_path / "certs" / "imap-ca.pem")
    # a relative tls_ca_file is found next to the config file
    rt = runtime_for(dovecot_tls.settings(security, tls_ca_file="certs/imap-ca.pem"))
    channel = channel_of(rt)
    cursors = Cursors(rt.engine)
    assert channel.config.port == (dovecot_tls.imaps_port if security == "ssl" else dovecot_tls.port)
    assert tls_logins(dovecot_tls) == 0
    assert channel.poll(InboxWriter(rt, CHANNEL), cursors) == 5
    dovecot_tls.append([text_mail("Later", message_id="t-later@x.example")])
    assert channel.poll(InboxWriter(rt, CHANNEL), cursors) == 1
    assert channel.poll(InboxWriter(rt, CHANNEL), cursors) == 0
    ids = inbox_ids(rt)
    assert len(ids) == len(set(ids)) == 6
    assert cursors.get(f"imap:{CHANNEL}")["last_uid"] == 6
    assert tls_logins(dovecot_tls, expect=3) == 3  # each poll logged in over TLS (with STARTTLS: on the plain port)
    assert "5 messages" not in channel.check_online() and "6 messages" in channel.check_online()
    client = channel.connect()
    try:
        sock = client.socket()
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.getpeercert()["subjectAltName"] == (("DNS", "localhost"), ("IP Address", "127.0.0.1"))
    finally:
        client.logout()


@pytest.mark.parametrize("security,trust", [("ssl", "other-ca"), ("starttls", "system")])
def test_untrusted_certificate_fails_backs_off_and_imports_nothing(
        security: str, trust: str, dovecot_tls: Dovecot, runtime_for: Callable[..., Runtime],  # noqa: F811
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dovecot_tls.append([text_mail("First", message_id="c1@x.example")])
    rt = runtime_for(dovecot_tls.settings(security, poll_seconds=30))
    cursors = Cursors(rt.engine)
    assert channel_of(rt).poll(InboxWriter(rt, CHANNEL), cursors) == 1
    cursor = cursors.get(f"imap:{CHANNEL}")
    dovecot_tls.append([text_mail("Second", message_id="c2@x.example")])
    logins = len(dovecot_tls.logins())

    settings = dovecot_tls.settings(security, poll_seconds=30)
    if trust == "other-ca":  # a CA file that does not hold the server's CA
        settings["tls_ca_file"] = str(write_ca(tmp_path, "unrelated-ca")[0])
    else:  # the system trust store, which knows nothing of the test CA
        del settings["tls_ca_file"]
    channel = ImapChannel(CHANNEL, ImapConfig.model_validate(settings), channel_of(rt).context)
    assert channel.poll(InboxWriter(rt, CHANNEL), cursors) == 0
    assert channel._failures == 1 and channel._next_attempt > time.monotonic() + 20
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text and "tls_ca_file names the CA to trust" in caplog.text
    assert dovecot_tls.password not in caplog.text
    assert channel.poll(InboxWriter(rt, CHANNEL), cursors) == 0
    assert channel._failures == 1  # no second attempt inside the backoff
    assert inbox_ids(rt) == ["INBOX:c1@x.example"]
    assert cursors.get(f"imap:{CHANNEL}") == cursor
    assert len(dovecot_tls.logins()) == logins  # the password never reached the server
    with pytest.raises(OnlineCheckFailed, match=r"^SSLCertVerificationError: .*certificate verify failed"):
        channel.check_online()


def test_xoauth2_token_checked_by_dovecot_oauth2_passdb(
        dovecot_oauth2: Dovecot, token_server: TokenServer, runtime_for: Callable[..., Runtime],  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    dovecot_oauth2.append([text_mail(f"Mail {n}", message_id=f"o{n}@x.example") for n in range(3)])
    settings = dovecot_oauth2.settings("starttls", oauth2_token=OAUTH2_TOKEN, poll_seconds=30)
    del settings["password"]
    rt = runtime_for(settings)
    cursors = Cursors(rt.engine)
    assert channel_of(rt).poll(InboxWriter(rt, CHANNEL), cursors) == 3
    assert channel_of(rt).poll(InboxWriter(rt, CHANNEL), cursors) == 0
    assert sorted(inbox_ids(rt)) == [f"INBOX:o{n}@x.example" for n in range(3)]
    assert tls_logins(dovecot_oauth2, "XOAUTH2", expect=2) == 2
    assert token_server.asked == [OAUTH2_TOKEN] * 2  # Dovecot asked the introspection endpoint each time
    cursor = cursors.get(f"imap:{CHANNEL}")

    dovecot_oauth2.append([text_mail("Not for a wrong token", message_id="o-wrong@x.example")])
    wrong = ImapChannel(CHANNEL, ImapConfig.model_validate({**settings, "oauth2_token": "test-wrong-token"}),
                        channel_of(rt).context)
    assert wrong.poll(InboxWriter(rt, CHANNEL), cursors) == 0
    assert token_server.asked[-1] == "test-wrong-token"
    assert wrong._failures == 1 and wrong._next_attempt > time.monotonic() + 20
    assert "LoginError: [AUTHENTICATIONFAILED]" in caplog.text
    assert "test-wrong-token" not in caplog.text
    assert tls_logins(dovecot_oauth2, "XOAUTH2") == 2
    assert len(inbox_ids(rt)) == 3 and cursors.get(f"imap:{CHANNEL}") == cursor


def test_tls_ca_file_rules() -> None:
    base = {"type": "imap", "host": "127.0.0.1", "username": "u", "password": "p"}
    with pytest.raises(ValidationError, match="tls_ca_file needs security"):
        ImapConfig.model_validate({**base, "security": "none", "tls_ca_file": "ca.pem"})
    channel = ImapChannel("m", ImapConfig.model_validate({**base, "tls_ca_file": "missing-ca.pem"}),
                          ConnectorContext(http=requests.Session(), base_dir=Path("/nonexistent")))
    with pytest.raises(FileNotFoundError):
        channel.tls_context()
    default = ImapChannel("m", ImapConfig.model_validate(base), ConnectorContext(http=requests.Session()))
    context = default.tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
