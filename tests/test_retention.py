"""Retention: what is past its period goes, in batches, while nothing a conversation or pending work needs does."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import func, select, update

from gateway.cli import main
from gateway.config import RetentionConfig, load_config
from gateway.delivery import DeliveryWorker
from gateway.pipeline import PipelineWorker
from gateway.records import InboxItem
from gateway.retention import LAST_RUN, Retention, retention_for, retention_job
from gateway.runtime import Runtime, build_runtime
from gateway.storage.cursors import Cursors, exclusive
from gateway.storage.db import utcnow
from gateway.storage.tables import (
    acknowledgements,
    admin_audit,
    conversations,
    crm_links,
    customers,
    delivery_log,
    identities,
    inbox,
    messages,
    outbox,
    provider_statuses,
    sla_clocks,
    surveys,
    thread_keys,
)
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL, TWILIO_SID
from tests.fake_zendesk import FakeZendesk
from tests.helpers import zendesk_crm

ALL_30 = ("{raw_payloads_days: 30, provider_statuses_days: 30, attachments_days: 30, message_text_days: 30, "
          "delivery_logs_days: 30, dead_letters_days: 30")
CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
conversations: {{window_hours: 2000}}
retention: {ALL_30}{{extra}}}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
crms: {{crms}}
routes:
  - {{from: [sms-main], to: {{crm}}}}
"""
JSONL = "{trial: {type: jsonl, path: out/crm.jsonl}}"
CUSTOMER = "+14155550100"


def sms(n: int, body: str, sender: str = CUSTOMER) -> InboxItem:
    sid = f"SM{n:032x}"
    form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": TWILIO_SID, "From": sender, "To": "+15005550006",
            "Body": body, "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received"}
    return InboxItem(sid, urlencode(form).encode(), "application/x-www-form-urlencoded")


def status(n: int) -> InboxItem:
    sid = f"SM{n:032x}"
    form = {"MessageSid": sid, "MessageStatus": "delivered", "SmsStatus": "delivered", "AccountSid": TWILIO_SID}
    return InboxItem(f"{sid}:status:delivered", urlencode(form).encode(), "application/x-www-form-urlencoded",
                     "status")


def store(rt: Runtime, *items: InboxItem, days_ago: float = 0) -> None:
    rt.queues.store_inbox("sms-main", list(items), {"X-Twilio-Signature": "checked"},
                          f"{PUBLIC_URL}/hooks/sms-main", received_at=utcnow() - timedelta(days=days_ago))


def drain(rt: Runtime, *, deliver: bool = True) -> None:
    pipeline, delivery = PipelineWorker(rt, "test-p"), DeliveryWorker(rt, "test-d")
    while drain_once(pipeline) + (drain_once(delivery) if deliver else 0):
        pass


def count(rt: Runtime, table: Any, *where: Any) -> int:
    with rt.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def crm_texts(tmp_path: Path) -> list[str]:
    path = tmp_path / "out/crm.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [record["message"]["text"] for record in map(json.loads, lines) if "message" in record]


@pytest.fixture
def make_runtime(write_config: Callable[..., Path]) -> Iterator[Callable[..., Runtime]]:
    made: list[Runtime] = []

    def make(*, crms: str = JSONL, crm: str = "trial", extra: str = "", storage_url: str | None = None) -> Runtime:
        text = CONFIG.replace("{crms}", crms).replace("{crm}", crm).replace("{extra}", extra)
        runtime = build_runtime(load_config(write_config(text, storage_url=storage_url)), http=requests.Session())
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


def test_defaults_keep_text_and_conversations_and_bound_the_rest() -> None:
    defaults = RetentionConfig()
    assert (defaults.raw_payloads_days, defaults.provider_statuses_days, defaults.attachments_days) == (30, 30, 30)
    assert defaults.message_text_days is None and defaults.conversations_days is None
    assert defaults.batch_size == 500 and defaults.admin_audit_days == 365


def test_a_later_message_of_an_old_conversation_lands_on_the_same_ticket(make_runtime: Callable[..., Runtime]
                                                                          ) -> None:
    with FakeZendesk() as zendesk:
        rt = make_runtime(crms=zendesk_crm(zendesk.url), crm="desk")
        store(rt, sms(1, "my parcel 4711 never arrived"), status(1))
        drain(rt)
        assert len(zendesk.tickets()) == 1
        with rt.engine.connect() as conn:
            keys_before = conn.execute(select(thread_keys)).all()
            links_before = conn.execute(select(crm_links).order_by(crm_links.c.entity)).all()

        removed = retention_for(rt).run(now=utcnow() + timedelta(days=40))

        assert removed["raw_payloads"] == 2 and removed["provider_statuses"] == 1
        assert removed["message_text"] == 1 and removed["delivery_logs"] >= 1
        with rt.engine.connect() as conn:
            raw = conn.execute(select(inbox.c.body, inbox.c.headers, inbox.c.payload_removed_at)).all()
            stored = conn.execute(select(messages.c.data)).scalar_one()
            assert conn.execute(select(thread_keys)).all() == keys_before
            assert conn.execute(select(crm_links).order_by(crm_links.c.entity)).all() == links_before
        assert [(row.body, row.headers) for row in raw] == [(b"", {})], "the status row goes, the message's stays"
        assert raw[0].payload_removed_at is not None
        assert (stored["text"], stored["full_text"], stored["subject"]) == ("", "", None)
        assert stored["sender"]["identifiers"] == [{"kind": "phone", "value": CUSTOMER}]
        assert count(rt, provider_statuses) == 0 and count(rt, delivery_log) == 0

        store(rt, sms(1, "my parcel 4711 never arrived"))  # the provider retries the old message: still a duplicate
        store(rt, sms(2, "still waiting, forty days on"))
        drain(rt)
        tickets = zendesk.tickets()
        assert len(tickets) == 1, "the new message joined the old ticket"
        comments = [c["body"] for c in zendesk.ticket_comments(tickets[0]["id"])]
        assert any("forty days on" in body for body in comments)
        assert sum("4711" in body for body in comments) == 1, "the retried old message was not written again"
        assert count(rt, customers) == 1 and count(rt, conversations) == 1


def test_pending_and_undelivered_rows_are_kept_whatever_their_age(make_runtime: Callable[..., Runtime],
                                                                  tmp_path: Path) -> None:
    rt = make_runtime(extra=", conversations_days: 1")
    store(rt, sms(1, "processed but not yet delivered"), days_ago=400)
    drain(rt, deliver=False)
    store(rt, sms(2, "not even processed"), days_ago=400)

    removed = retention_for(rt).run(now=utcnow() + timedelta(days=400))

    assert set(removed.values()) == {0}
    with rt.engine.connect() as conn:
        bodies = conn.execute(select(inbox.c.body).order_by(inbox.c.id)).scalars().all()
    assert [b"delivered" in body for body in bodies] == [True, False] and all(bodies)
    assert count(rt, conversations) == 1 and count(rt, outbox, outbox.c.status == "pending") == 1
    drain(rt)
    assert crm_texts(tmp_path) == ["processed but not yet delivered", "not even processed"]


def test_attachments_go_once_delivered_and_files_no_message_uses_are_swept(make_runtime: Callable[..., Runtime]
                                                                           ) -> None:
    rt = make_runtime()
    store(rt, sms(1, "photo attached"), sms(2, "same photo again", sender="+14155550199"))
    drain(rt)
    store_ = rt.data_dir / "attachments"
    from gateway.attachments import AttachmentStore

    shared = AttachmentStore(store_).put(b"\x89PNG shared", "photo.png", "image/png")
    with rt.engine.begin() as conn:
        ids = conn.execute(select(messages.c.id, messages.c.data).order_by(messages.c.received_at)).all()
        for position, row in enumerate(ids):
            data = {**row.data, "attachments": [shared.model_dump(mode="json")]}
            at = utcnow() - timedelta(days=40 if position == 0 else 1)
            conn.execute(update(messages).where(messages.c.id == row.id).values(data=data, received_at=at))
    path = AttachmentStore(store_).path_for(shared.sha256 or "")

    removed = retention_for(rt).run(now=utcnow() + timedelta(days=2))
    assert removed["attachments"] == 1 and removed["attachment_files"] == 0, "the newer message still uses it"
    assert path.exists()

    removed = retention_for(rt).run(now=utcnow() + timedelta(days=35))
    assert removed["attachments"] == 1 and removed["attachment_files"] == 1
    assert not path.exists()
    with rt.engine.connect() as conn:
        kept = [data["attachments"] for data in conn.execute(select(messages.c.data)).scalars()]
    assert all(a[0]["location"] == "expired:" and a[0]["sha256"] == shared.sha256 for a in kept)


def test_expired_conversations_go_whole_and_the_customer_stays(make_runtime: Callable[..., Runtime],
                                                               tmp_path: Path) -> None:
    rt = make_runtime(extra=", conversations_days: 60")
    store(rt, sms(1, "an old question"), days_ago=90)
    store(rt, sms(2, "a recent one", sender="+14155550199"), days_ago=10)
    drain(rt)
    assert count(rt, conversations) == 2 and count(rt, thread_keys) == 0

    removed = retention_for(rt).run()

    assert removed["conversations"] == 1
    assert count(rt, conversations) == 1 and count(rt, messages) == 1 and count(rt, outbox) == 1
    assert count(rt, inbox) == 1 and count(rt, crm_links, crm_links.c.entity == "message") == 1
    assert count(rt, customers) == 2 and count(rt, identities) == 2, "people are forgotten on request only"
    store(rt, sms(3, "back after three months"))
    drain(rt)
    assert count(rt, conversations) == 2 and count(rt, customers) == 2
    assert crm_texts(tmp_path)[-1] == "back after three months"


def test_dry_run_changes_nothing_and_the_command_prints_what_it_removed(make_runtime: Callable[..., Runtime],
                                                                        tmp_path: Path) -> None:
    rt = make_runtime()
    store(rt, sms(1, "old enough"), status(1), days_ago=45)
    store(rt, sms(2, "recent"))
    drain(rt)
    rt.close()
    database = tmp_path / "gateway.db"

    def dump() -> list[str]:
        with sqlite3.connect(database) as conn:
            return list(conn.iterdump())

    before = dump()
    result = CliRunner().invoke(main, ["retention", "run", "--dry-run", "-c", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    assert dump() == before
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert lines["raw_payloads"].split()[1] == "2" and "would be" in lines["raw_payloads"]
    assert lines["message_text"].split()[1] == "1" and lines["conversations"].split()[1] == "0"

    result = CliRunner().invoke(main, ["retention", "run", "-c", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert lines["raw_payloads"].split()[1] == "2" and lines["provider_statuses"].split()[1] == "1"
    assert "would be" not in result.output and dump() != before


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_webhooks_arriving_during_a_run_are_all_kept_and_delivered(
        backend: str, make_runtime: Callable[..., Runtime], request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    rt = make_runtime(storage_url=url, extra=", conversations_days: 50, batch_size: 10")
    old = 100
    for n in range(old):
        store(rt, sms(n, f"old message {n}", sender=f"+1415555{2000 + n % 25}"), days_ago=60)
    drain(rt)
    arriving, half_stored, started = 40, threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            started.wait(timeout=60)
            for n in range(arriving):
                store(rt, sms(10_000 + n, f"new message {n}", sender=f"+1415555{2000 + n % 25}"))
                if n == arriving // 2:
                    half_stored.set()
        except BaseException as exc:
            errors.append(exc)
            half_stored.set()

    batches: list[str] = []

    def on_batch(kind: str) -> None:
        batches.append(kind)
        if len(batches) == 1:
            started.set()
            assert half_stored.wait(timeout=60)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        removed = Retention(rt.engine, rt.config.settings.retention, rt.data_dir / "attachments",
                            on_batch=on_batch).run()
    finally:
        started.set()
        thread.join(timeout=60)
    assert not errors and not thread.is_alive()
    assert len(batches) > 5, "the run was made of many small transactions"
    assert removed["conversations"] == 25 and removed["raw_payloads"] == old
    assert count(rt, inbox, inbox.c.status == "pending") == arriving
    drain(rt)
    texts = crm_texts(tmp_path)
    assert sorted(t for t in texts if t.startswith("new")) == sorted(f"new message {n}" for n in range(arriving))
    assert count(rt, messages) == arriving and count(rt, conversations) == 25


def test_the_daily_job_runs_once_a_day_and_in_one_process_at_a_time(make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime()
    store(rt, sms(1, "old"), status(1), days_ago=45)
    drain(rt)
    job = retention_job(rt)
    with exclusive(rt.engine, "retention", rt.data_dir / "locks") as held:
        assert held
        job()
    assert Cursors(rt.engine).get(LAST_RUN) is None and count(rt, provider_statuses) == 1
    job()
    last = Cursors(rt.engine).get(LAST_RUN)
    assert last is not None and last["removed"]["provider_statuses"] == 1
    store(rt, status(2), days_ago=45)
    drain(rt)
    job()
    assert Cursors(rt.engine).get(LAST_RUN) == last and count(rt, provider_statuses) == 1, "not again the same day"


def _outcomes(rt: Runtime, conversation_id: str, *, at: Any, finished: bool) -> None:
    """An acknowledgement, an escalation clock and a survey answer with a comment, as the pipeline leaves them."""
    message_id = next(iter(conversation_messages(rt, conversation_id)))
    with rt.engine.begin() as conn:
        conn.execute(acknowledgements.insert().values(
            conversation_id=conversation_id, customer_id="c" * 32, message_id=message_id, channel="sms-main",
            crm="trial", rule=0, status="sent" if finished else "waiting", acknowledged_at=at, created_at=at,
            updated_at=at))
        conn.execute(sla_clocks.insert().values(
            rule="first-reply", conversation_id=conversation_id, channel="sms-main",
            open_key=None if finished else f"first-reply:{conversation_id}",
            status="answered" if finished else "waiting", started_at=at, due_at=at, attempts=0, available_at=at,
            created_at=at))
        conn.execute(surveys.insert().values(
            crm="trial", conversation_id=conversation_id, customer_id="c" * 32, channel="sms-main", rule="csat",
            status="written" if finished else "answered", asked_at=at, answered_at=at, rating=2,
            comment="the courier left it at 12 Elm Street", attempts=0, available_at=at))


def conversation_messages(rt: Runtime, conversation_id: str) -> list[str]:
    with rt.engine.connect() as conn:
        return list(conn.execute(select(messages.c.id).where(messages.c.conversation_id == conversation_id)
                                 .order_by(messages.c.received_at)).scalars())


def conversation_of(rt: Runtime, sender: str) -> str:
    with rt.engine.connect() as conn:
        return str(conn.execute(select(messages.c.conversation_id).where(
            messages.c.data["sender"]["identifiers"][0]["value"].as_string() == sender)).scalars().first())


def test_message_text_period_blanks_personal_extras_file_names_and_survey_comments(
        make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime()
    store(rt, sms(1, "here is where I am"), sms(2, "still pending a survey write", sender="+14155550199"))
    drain(rt)
    now = utcnow()
    shared = {"location": {"latitude": 51.5, "longitude": -0.12, "address": "12 Elm Street"},
              "contacts": [{"name": {"formatted_name": "Bo Lind"}, "phones": [{"phone": "+14155550123"}]}],
              "Latitude": "51.5", "Longitude": "-0.12", "FromCity": "LONDON", "ButtonText": "Yes, my address"}
    attachment = {"filename": "passport-asha-rao.pdf", "content_type": "application/pdf", "size": 8,
                  "sha256": "a" * 64, "location": "https://api.twilio.com/media/ME1"}
    with rt.engine.begin() as conn:
        for row in conn.execute(select(messages.c.id, messages.c.data)).all():
            data = {**row.data, "extras": {**row.data["extras"], **shared}, "attachments": [attachment]}
            conn.execute(update(messages).where(messages.c.id == row.id).values(data=data))
        before = {row.id: row.data for row in conn.execute(select(messages.c.id, messages.c.data))}
    _outcomes(rt, conversation_of(rt, CUSTOMER), at=now, finished=True)
    _outcomes(rt, conversation_of(rt, "+14155550199"), at=now, finished=False)

    removed = retention_for(rt).run(now=now + timedelta(days=40))

    assert removed["message_text"] == 3, "two messages and one written survey's comment"
    with rt.engine.connect() as conn:
        after = {row.id: row.data for row in conn.execute(select(messages.c.id, messages.c.data))}
        comments = dict(conn.execute(select(surveys.c.status, surveys.c.comment)).all())
    for message_id, data in after.items():
        assert not set(shared) & set(data["extras"]), data["extras"]
        assert data["extras"]["AccountSid"] == before[message_id]["extras"]["AccountSid"]
        assert data["attachments"] == [{**attachment, "filename": ""}]
        for kept in ("id", "provider_message_id", "direction", "sent_at", "received_at", "sender", "raw"):
            assert data[kept] == before[message_id][kept]
    assert "12 Elm" not in json.dumps(after) and "passport" not in json.dumps(after)
    assert comments == {"written": None, "answered": "the courier left it at 12 Elm Street"}, "not yet written back"


def test_finished_acknowledgements_and_clocks_go_with_the_delivery_logs_and_the_audit_log_after_a_year(
        make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime()
    store(rt, sms(1, "first"), sms(2, "second", sender="+14155550199"))
    drain(rt)
    now = utcnow()
    finished, running = conversation_of(rt, CUSTOMER), conversation_of(rt, "+14155550199")
    _outcomes(rt, finished, at=now, finished=True)
    _outcomes(rt, running, at=now, finished=False)
    with rt.engine.begin() as conn:
        for days, target in ((400, "merge 1"), (300, "merge 2")):
            conn.execute(admin_audit.insert().values(at=now - timedelta(days=days), actor="ann", action="merge",
                                                     target=target, detail={"reason": "same person"}))

    removed = retention_for(rt).run(now=now + timedelta(days=40))

    assert removed["admin_audit"] == 1
    with rt.engine.connect() as conn:
        assert conn.execute(select(acknowledgements.c.conversation_id)).scalars().all() == [running]
        assert conn.execute(select(sla_clocks.c.conversation_id)).scalars().all() == [running]
        assert conn.execute(select(admin_audit.c.target)).scalars().all() == ["merge 2"]
    assert count(rt, surveys) == 2, "a survey's rating is kept with its conversation"


def test_a_removed_conversation_takes_its_acknowledgement_clocks_and_surveys(make_runtime: Callable[..., Runtime]
                                                                            ) -> None:
    rt = make_runtime(extra=", conversations_days: 60")
    store(rt, sms(1, "an old question"), days_ago=90)
    store(rt, sms(2, "a recent one", sender="+14155550199"), days_ago=10)
    drain(rt)
    old, recent = conversation_of(rt, CUSTOMER), conversation_of(rt, "+14155550199")
    for conversation_id in (old, recent):
        _outcomes(rt, conversation_id, at=utcnow() - timedelta(days=10), finished=True)

    assert retention_for(rt).run()["conversations"] == 1

    for table in (acknowledgements, sla_clocks, surveys):
        with rt.engine.connect() as conn:
            assert conn.execute(select(table.c.conversation_id)).scalars().all() == [recent], table.name
