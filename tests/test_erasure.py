"""Erasure (``gateway customers forget``) and export, on SQLite and PostgreSQL.

One person writes by SMS and by email (two customers an admin merged in the console, giving their address as the
reason), with an attachment, a payment card number, a message the pipeline could not read, a merge suggestion, CRM
writes, an acknowledgement, an escalation clock and a survey answer with a comment; another person writes too, and
Cc's the first. After forgetting the first, the whole database and the attachment folder hold no trace of their number,
address, name or words; the other person's data is all there; the first person writing again is a new customer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import func, select, text

from gateway.cli import main
from gateway.config import load_config
from gateway.console.accounts import record
from gateway.delivery import DeliveryWorker
from gateway.identity.merges import merge_customers, suggest
from gateway.pipeline import PipelineWorker
from gateway.privacy import identifier_hash
from gateway.records import InboxItem
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import (
    acknowledgements,
    admin_audit,
    customers,
    identities,
    messages,
    metadata,
    sla_clocks,
    surveys,
    tombstones,
)
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN

PHONE, EMAIL, NAME = "+14155550100", "asha.rao@example.com", "Asha Rao"
WORDS = "pineapple-lantern"  # in her SMS
MAIL_WORDS = "marmalade-observatory"  # in her email
SURVEY_WORDS = "tangerine-carousel"  # her survey comment
SIGNATURE = "test-signature-0123456789"
ATTACHED = b"%PDF-1.4 passport scan of the first person"
OTHER_PHONE, OTHER_EMAIL, OTHER_WORDS = "+14155550199", "bo.lind@example.org", "velvet-harbour"
OTHER_ATTACHED = b"%PDF-1.4 invoice of the second person"

CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
workers: {{retry: {{max_attempts: 1}}}}
privacy: {{key: "test-privacy-key-0123456789"}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}"}}
  mail: {{type: imap, host: imap.example.com, username: support@shop.example.net, password: test-password}}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl}}
routes:
  - {{from: [sms-main, mail], to: trial}}
"""


def sms(sid: str, sender: str, body: str) -> InboxItem:
    form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": TWILIO_SID, "From": sender, "To": "+15005550006",
            "Body": body, "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received"}
    return InboxItem(sid, urlencode(form).encode(), "application/x-www-form-urlencoded")


def mail(message_id: str, sender: str, body: str, attachment: bytes, cc: str | None = None) -> InboxItem:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "support@shop.example.net", "About my order"
    msg["Message-ID"], msg["Date"] = message_id, "Tue, 01 Dec 2026 09:00:00 +0000"
    if cc:
        msg["Cc"] = cc
    msg.set_content(body)
    msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="scan.pdf")
    return InboxItem(f"{message_id}:INBOX", msg.as_bytes(), "message/rfc822")


def process(rt: Runtime) -> None:
    drain_once(PipelineWorker(rt, "test-p"))
    drain_once(DeliveryWorker(rt, "test-d"))


def customer_of(rt: Runtime, kind: str, value: str) -> str | None:
    with rt.engine.connect() as conn:
        return conn.execute(select(identities.c.customer_id).where(
            identities.c.kind == kind, identities.c.value == value)).scalar()


@pytest.fixture(params=["sqlite", "postgresql"])
def rt(request: pytest.FixtureRequest, write_config: Callable[..., Path]) -> Iterator[Runtime]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    runtime = build_runtime(load_config(write_config(CONFIG, storage_url=url)), http=requests.Session())
    yield runtime
    runtime.close()


@pytest.fixture
def populated(rt: Runtime) -> Runtime:
    q = rt.queues
    q.store_inbox("sms-main", [sms("SM" + "1" * 32, PHONE, f"{WORDS}: card 4242 4242 4242 4242")],
                  {"X-Twilio-Signature": SIGNATURE}, PUBLIC_URL)
    q.store_inbox("sms-main", [sms("SM" + "2" * 32, PHONE + "99999", f"{WORDS} again")], {}, PUBLIC_URL)  # unreadable
    q.store_inbox("mail", [mail("<a1@example.com>", f"{NAME} <{EMAIL}>", MAIL_WORDS, ATTACHED)], {}, PUBLIC_URL)
    q.store_inbox("sms-main", [sms("SM" + "3" * 32, OTHER_PHONE, OTHER_WORDS)], {}, PUBLIC_URL)
    q.store_inbox("mail", [mail("<b1@example.org>", f"Bo Lind <{OTHER_EMAIL}>", OTHER_WORDS, OTHER_ATTACHED,
                                cc=f"{NAME} <{EMAIL}>")], {}, PUBLIC_URL)
    process(rt)
    by_phone, by_mail = customer_of(rt, "phone", PHONE), customer_of(rt, "email", EMAIL)
    other = customer_of(rt, "phone", OTHER_PHONE)
    assert by_phone and by_mail and other
    with rt.engine.begin() as conn:
        reason = f"same person: {EMAIL}"
        merge_id = merge_customers(conn, by_phone, by_mail, evidence="admin", detail={"reason": reason})
        record(conn, "ann", "merge", f"merge {merge_id}", {"reason": reason, "survivor": by_phone,
                                                              "absorbed": by_mail}, "192.0.2.7")
        record(conn, "ann", "merge", "merge 999", {"reason": "two other people", "survivor": other,
                                                    "absorbed": "c" * 32}, "192.0.2.7")
        suggest(conn, by_phone, other, 88.0, f"phones {PHONE} and {OTHER_PHONE} share their last digits")
        _outcomes(conn, by_phone, by_mail)
    return rt


def _outcomes(conn: Any, by_phone: str, by_mail: str) -> None:
    """What the pipeline's acknowledgement, escalation and survey steps leave for her conversations."""
    now = utcnow()
    sms_row, mail_row = (conn.execute(select(messages.c.id, messages.c.conversation_id).where(
        messages.c.customer_id == cid)).one() for cid in (by_phone, by_mail))
    conn.execute(acknowledgements.insert().values(
        conversation_id=mail_row.conversation_id, customer_id=by_mail, message_id=mail_row.id, channel="mail",
        crm="trial", rule=0, status="sent", acknowledged_at=now, created_at=now, updated_at=now))
    conn.execute(sla_clocks.insert().values(
        rule="first-reply", conversation_id=sms_row.conversation_id, channel="sms-main",
        open_key=f"first-reply:{sms_row.conversation_id}", status="waiting", started_at=now, due_at=now,
        attempts=0, available_at=now, created_at=now))
    conn.execute(surveys.insert().values(
        crm="trial", conversation_id=sms_row.conversation_id, customer_id=by_phone, channel="sms-main",
        rule="csat", status="written", asked_at=now, answered_at=now, rating=2,
        comment=f"{SURVEY_WORDS}, call me on {PHONE}", attempts=0, available_at=now, written_at=now))


def conversations_of(rt: Runtime, *customer_ids: str | None) -> list[str]:
    with rt.engine.connect() as conn:
        return list(conn.execute(select(messages.c.conversation_id).where(
            messages.c.customer_id.in_(customer_ids))).scalars())


def traces(rt: Runtime) -> str:
    """Every row of every table as text (bytes decoded, and as hex the way SQLite's dump writes blobs)."""
    parts = []
    with rt.engine.connect() as conn:
        for table in [*metadata.sorted_tables]:
            for row in conn.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        value = bytes(value).decode("utf-8", "replace")
                    parts.append(json.dumps(value, default=str, ensure_ascii=False) if not isinstance(value, str)
                                 else value)
        parts += [str(row) for row in conn.execute(text("SELECT * FROM alembic_version"))]
    if rt.engine.dialect.name == "sqlite":
        with sqlite3.connect(rt.engine.url.database) as raw:
            parts += list(raw.iterdump())
    return "\n".join(parts)


def files(rt: Runtime) -> dict[Path, bytes]:
    root = rt.data_dir / "attachments"
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def assert_no_trace(haystack: str, *needles: str) -> None:
    lowered = haystack.lower()
    for needle in needles:
        for form in (needle, needle.encode().hex()):
            assert form.lower() not in lowered, f"{needle!r} is still stored"


def forget(rt: Runtime, *args: str) -> Any:
    return CliRunner().invoke(main, ["customers", "forget", "-c", str(rt.config.path), *args],
                              catch_exceptions=False)


def test_forget_leaves_no_trace_and_spares_the_other_customer(populated: Runtime) -> None:
    rt = populated
    others = [customer_of(rt, "phone", OTHER_PHONE), customer_of(rt, "email", OTHER_EMAIL)]
    erased = customer_of(rt, "phone", PHONE)
    with rt.engine.connect() as conn:
        absorbed = conn.execute(select(customers.c.id).where(customers.c.merged_into == erased)).scalar_one()
    threads = conversations_of(rt, erased, absorbed)
    before = traces(rt)
    assert PHONE in before and EMAIL in before and WORDS in before and MAIL_WORDS in before and NAME in before
    assert SURVEY_WORDS in before and len(threads) == 2 and absorbed
    assert ATTACHED in files(rt).values()
    with rt.engine.connect() as conn:
        other_rows = conn.execute(select(messages.c.id, messages.c.data).where(
            messages.c.customer_id.in_(others))).all()
    assert len(other_rows) == 2

    result = forget(rt, "(415) 555-0100", "--yes", "--by", "dpo@shop.example.net")
    assert result.exit_code == 0, result.output
    assert f"erased customer {erased}" in result.output

    after = traces(rt)
    assert_no_trace(after, PHONE, PHONE[1:], EMAIL, NAME, WORDS, MAIL_WORDS, SURVEY_WORDS, erased, absorbed, *threads)
    stored = files(rt)
    assert ATTACHED not in stored.values()
    assert not any(WORDS.encode() in data or EMAIL.encode() in data for data in stored.values())
    # the other person: every identifier, message and file kept; only the Cc naming the first person is erased
    assert OTHER_ATTACHED in stored.values()
    assert [customer_of(rt, "phone", OTHER_PHONE), customer_of(rt, "email", OTHER_EMAIL)] == others
    with rt.engine.connect() as conn:
        now = {row.id: row.data for row in conn.execute(select(messages.c.id, messages.c.data).where(
            messages.c.customer_id.in_(others)))}
        graves = conn.execute(select(tombstones)).all()
    assert set(now) == {row.id for row in other_rows}
    with rt.engine.connect() as conn:
        audit = {row.target: row for row in conn.execute(select(admin_audit))}
    # the console's audit log keeps that an admin merged two customers, not whom
    assert audit["merge 999"].detail == {"reason": "two other people", "survivor": others[0], "absorbed": "c" * 32}
    [kept] = [row for target, row in audit.items() if target != "merge 999"]
    assert kept.target.startswith("merge ")
    assert (kept.actor, kept.action, kept.address) == ("ann", "merge", "192.0.2.7")
    assert kept.detail == {"reason": "same person: [erased]", "survivor": "[erased]", "absorbed": "[erased]"}
    for row in other_rows:
        assert now[row.id]["text"] == row.data["text"] and OTHER_WORDS in now[row.id]["full_text"]
        assert now[row.id]["sender"] == row.data["sender"]
    assert "[erased]" in json.dumps(list(now.values()))  # the Cc
    key = rt.config.privacy_key
    assert {g.identifier_hash for g in graves} == {identifier_hash(key, "phone", PHONE),
                                                   identifier_hash(key, "email", EMAIL)}
    assert {g.requested_by for g in graves} == {"dpo@shop.example.net"}
    assert graves[0].summary["removed"]["messages"] == 2

    # writing again: a new customer, nothing of the old one
    rt.queues.store_inbox("sms-main", [sms("SM" + "4" * 32, PHONE, "hello again")], {}, PUBLIC_URL)
    process(rt)
    again = customer_of(rt, "phone", PHONE)
    assert again is not None and again != erased
    with rt.engine.connect() as conn:
        texts = list(conn.execute(select(messages.c.data).where(messages.c.customer_id == again)).scalars())
        assert conn.execute(select(func.count()).select_from(customers)).scalar_one() == 3
    assert [t["text"] for t in texts] == ["hello again"]


def test_export_holds_everything_about_the_person_and_nothing_of_the_other(populated: Runtime,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "access.json"
    result = CliRunner().invoke(main, ["customers", "export", "-c", str(populated.config.path), EMAIL, "-o", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o077 == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert {i["value"] for i in data["identities"]} == {PHONE, EMAIL}
    assert sorted(m["data"]["text"].split(":")[0] for m in data["messages"]) == sorted([WORDS, MAIL_WORDS])
    assert any(WORDS in r["body"] for r in data["raw_payloads"])  # the unreadable one too
    assert len(data["raw_payloads"]) == 3 and len(data["crm_writes"]) == 2 and len(data["merges"]) == 1
    assert data["merge_suggestions"] and data["dead_letters"] and data["attachments"][0]["stored"]
    assert [a["status"] for a in data["acknowledgements"]] == ["sent"]
    assert [c["rule"] for c in data["escalation_clocks"]] == ["first-reply"]
    assert [(s["rating"], s["comment"]) for s in data["surveys"]] == [(2, f"{SURVEY_WORDS}, call me on {PHONE}")]
    assert [(a["action"], a["detail"]["reason"]) for a in data["console_audit"]] == [("merge", f"same person: {EMAIL}")]
    assert "address" not in data["console_audit"][0], "the admin's own address is not the person's data"
    written = out.read_text(encoding="utf-8")
    assert OTHER_WORDS not in written and "two other people" not in written
    # the raw payloads as the console shows them: no card number, no credential
    sms_raw = next(r for r in data["raw_payloads"] if "card" in r["body"])
    assert "Body = " + WORDS + ": card **** **** **** 4242" in sms_raw["body"]
    assert sms_raw["headers"]["X-Twilio-Signature"] == "••••••"
    assert "4242 4242 4242 4242" not in written and SIGNATURE not in written


def test_forget_asks_first_and_says_when_someone_was_erased_already(populated: Runtime) -> None:
    declined = CliRunner().invoke(main, ["customers", "forget", "-c", str(populated.config.path), PHONE], input="n\n")
    assert declined.exit_code == 1 and customer_of(populated, "phone", PHONE) is not None
    assert forget(populated, PHONE, "--yes", "--by", "dpo").exit_code == 0
    again = CliRunner().invoke(main, ["customers", "forget", "-c", str(populated.config.path), EMAIL, "--yes"])
    assert again.exit_code == 1 and "was erased on" in again.output and "request of dpo" in again.output


def test_forget_leaves_waiting_messages_of_others_that_name_the_person(populated: Runtime) -> None:
    rt = populated
    waiting = mail("<b2@example.org>", f"Bo Lind <{OTHER_EMAIL}>", "second-waiting-note", OTHER_ATTACHED,
                   cc=f"{NAME} <{EMAIL}>")
    rt.queues.store_inbox("mail", [waiting], {}, PUBLIC_URL)

    result = forget(rt, EMAIL, "--yes")
    assert result.exit_code == 0, result.output
    process(rt)

    other = customer_of(rt, "email", OTHER_EMAIL)
    with rt.engine.connect() as conn:
        texts = [data["text"] for data in conn.execute(select(messages.c.data).where(
            messages.c.customer_id == other)).scalars()]
    assert any("second-waiting-note" in text for text in texts)
