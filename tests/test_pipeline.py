"""Pipeline and delivery workers on SQLite: customers, conversations, retries, dead letters and replays."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
import responses
from click.testing import CliRunner
from sqlalchemy import func, select, update

from gateway.cli import main
from gateway.config import RetryConfig, load_config
from gateway.delivery import DeliveryWorker
from gateway.pipeline import PipelineWorker
from gateway.records import InboxItem
from gateway.retry import RetryPolicy
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import (
    conversations,
    customers,
    dead_letters,
    delivery_log,
    identities,
    inbox,
    outbox,
    provider_statuses,
)
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL, TWILIO_SID

HOOK_URL = "https://crm.example.net/hook"
WEBHOOK_CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
workers: {{retry: {{max_attempts: 3, initial_seconds: 60, max_seconds: 120, jitter_seconds: 0}}}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
crms:
  hook: {{type: webhook, url: "{HOOK_URL}", secret: "test-hook-secret"}}
routes:
  - {{from: [sms-main], to: hook}}
"""


def sms(sid: str, sender: str, body: str, **extra: str) -> InboxItem:
    form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": TWILIO_SID, "From": sender, "To": "+15005550006",
            "Body": body, "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received", **extra}
    return InboxItem(sid, urlencode(form).encode(), "application/x-www-form-urlencoded")


def store(rt: Runtime, *items: InboxItem) -> None:
    rt.queues.store_inbox("sms-main", list(items), {}, f"{PUBLIC_URL}/hooks/sms-main")


def drain(rt: Runtime) -> None:
    """Run pipeline and delivery until both queues are idle."""
    pipeline, delivery = PipelineWorker(rt, "test-p"), DeliveryWorker(rt, "test-d")
    while drain_once(pipeline) + drain_once(delivery):
        pass


def count(rt: Runtime, table, *where) -> int:  # type: ignore[no-untyped-def]
    with rt.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def make_due(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(outbox).values(available_at=utcnow() - timedelta(seconds=1)))
        conn.execute(update(inbox).values(available_at=utcnow() - timedelta(seconds=1)))


def test_same_number_in_two_forms_is_one_customer_and_one_conversation(runtime: Runtime, tmp_path: Path) -> None:
    store(runtime, sms("SM" + "1" * 32, "+14155550100", "My order has not arrived"),
          sms("SM" + "2" * 32, "(415) 555-0100", "Any news?"))
    drain(runtime)
    assert count(runtime, customers) == 1
    assert count(runtime, conversations) == 1
    assert count(runtime, identities) == 1
    lines = [json.loads(line) for line in (tmp_path / "out/crm.jsonl").read_text().splitlines()]
    assert [line["message"]["text"] for line in lines] == ["My order has not arrived", "Any news?"]
    assert {line["customer"]["identifiers"][0]["value"] for line in lines} == {"+14155550100"}
    assert lines[0]["message"]["sender"]["identifiers"] == [{"kind": "phone", "value": "+14155550100"}]


def test_whatsapp_and_sms_from_one_number_are_one_customer(runtime: Runtime) -> None:
    store(runtime, sms("SM" + "3" * 32, "+919847000001", "hello by sms"),
          sms("SM" + "4" * 32, "whatsapp:+919847000001", "hello by whatsapp", ProfileName="Anil"))
    drain(runtime)
    assert count(runtime, customers) == 1
    with runtime.engine.connect() as conn:
        kinds = sorted(conn.execute(select(identities.c.kind)).scalars())
        name = conn.execute(select(customers.c.display_name)).scalar_one()
    assert kinds == ["phone", "whatsapp"]
    assert name == "Anil"


def test_conversation_ends_after_the_continuity_window(runtime: Runtime) -> None:
    store(runtime, sms("SM" + "5" * 32, "+14155550100", "first"))
    drain(runtime)
    with runtime.engine.begin() as conn:
        conn.execute(update(conversations).values(last_activity_at=utcnow() - timedelta(hours=73)))
    store(runtime, sms("SM" + "6" * 32, "+14155550100", "weeks later"))
    drain(runtime)
    assert count(runtime, customers) == 1
    assert count(runtime, conversations) == 2


def test_status_callbacks_are_stored_but_make_no_message(runtime: Runtime) -> None:
    form = {"MessageSid": "SM" + "7" * 32, "MessageStatus": "delivered", "SmsStatus": "delivered",
            "AccountSid": TWILIO_SID}
    store(runtime, InboxItem("SM" + "7" * 32 + ":status:delivered", urlencode(form).encode(),
                             "application/x-www-form-urlencoded", "status"))
    drain(runtime)
    assert count(runtime, outbox) == 0
    with runtime.engine.connect() as conn:
        recorded = conn.execute(select(provider_statuses.c.provider_message_id, provider_statuses.c.status)).all()
    assert recorded == [("SM" + "7" * 32, "delivered")]
    drain(runtime)
    store(runtime, InboxItem("SM" + "7" * 32 + ":status:delivered", urlencode(form).encode(),
                             "application/x-www-form-urlencoded", "status"))
    assert count(runtime, provider_statuses) == 1, "a repeated callback is recorded once"


def test_unparseable_message_is_quarantined_and_can_be_replayed_or_discarded(
        runtime: Runtime, config) -> None:  # type: ignore[no-untyped-def]
    store(runtime, sms("SM" + "8" * 32, "not-a-number", "hi"), sms("SM" + "9" * 32, "+14155550100", "fine"))
    drain(runtime)
    assert count(runtime, outbox, outbox.c.status == "done") == 1, "the poller moves on past a broken item"
    [letter] = runtime.queues.list_dead_letters()
    assert (letter.stage, letter.error_class, letter.error_code) == ("pipeline", "quarantined", "normalize_failed")
    assert "From 'not-…mber'" in letter.reason  # the sender masked; the raw body below keeps it
    cli = CliRunner()
    listing = cli.invoke(main, ["dlq", "list", "-c", str(config.path)])
    assert listing.exit_code == 0 and "normalize_failed" in listing.output
    shown = cli.invoke(main, ["dlq", "show", "-c", str(config.path), str(letter.id)])
    assert shown.exit_code == 0 and "not-a-number" in json.loads(shown.output)["source"]["body"]
    replayed = cli.invoke(main, ["dlq", "replay", "-c", str(config.path), str(letter.id)])
    assert replayed.exit_code == 0, replayed.output
    assert count(runtime, inbox, inbox.c.status == "pending") == 1
    drain(runtime)  # still broken: quarantined again, as a new dead letter
    assert len(runtime.queues.list_dead_letters()) == 1
    [again] = runtime.queues.list_dead_letters()
    discarded = cli.invoke(main, ["dlq", "discard", "-c", str(config.path), str(again.id)])
    assert discarded.exit_code == 0
    assert runtime.queues.list_dead_letters() == []
    assert cli.invoke(main, ["dlq", "discard", "-c", str(config.path), str(again.id)]).exit_code == 1


@pytest.fixture
def webhook_runtime(write_config: Callable[..., Path]) -> Runtime:
    return build_runtime(load_config(write_config(WEBHOOK_CONFIG)), http=requests.Session())


@responses.activate
def test_retryable_failure_is_retried_and_delivered_once(webhook_runtime: Runtime) -> None:
    rt = webhook_runtime
    responses.post(HOOK_URL, status=503, headers={"Retry-After": "0"})
    responses.post(HOOK_URL, status=200)
    store(rt, sms("SM" + "a" * 32, "+14155550100", "hello"))
    drain(rt)
    assert count(rt, outbox, outbox.c.status == "pending") == 1
    make_due(rt)
    drain(rt)
    assert count(rt, outbox, outbox.c.status == "done") == 1
    assert len(responses.calls) == 2
    keys = {call.request.headers["Idempotency-Key"] for call in responses.calls}
    assert len(keys) == 1, "a retry carries the same idempotency key"
    with rt.engine.connect() as conn:
        outcomes = list(conn.execute(select(delivery_log.c.outcome).order_by(delivery_log.c.id)).scalars())
    assert outcomes == ["retry", "delivered"]


@responses.activate
def test_retry_after_is_honoured(webhook_runtime: Runtime) -> None:
    rt = webhook_runtime
    responses.post(HOOK_URL, status=429, headers={"Retry-After": "120"})
    store(rt, sms("SM" + "b" * 32, "+14155550100", "hello"))
    before = utcnow()
    drain(rt)
    with rt.engine.connect() as conn:
        available_at = conn.execute(select(outbox.c.available_at)).scalar_one()
    assert available_at >= before + timedelta(seconds=119)


@responses.activate
def test_permanent_failure_goes_to_dead_letters_and_replays(webhook_runtime: Runtime) -> None:
    rt = webhook_runtime
    responses.post(HOOK_URL, status=422, body="bad field")
    store(rt, sms("SM" + "c" * 32, "+14155550100", "hello"))
    drain(rt)
    [letter] = rt.queues.list_dead_letters()
    assert (letter.stage, letter.error_class, letter.error_code) == ("delivery", "permanent", "422")
    assert len(responses.calls) == 1, "a permanent error is not retried"
    responses.replace(responses.POST, HOOK_URL, status=200)
    assert rt.queues.resolve_dead_letter(letter.id, "replayed")
    drain(rt)
    assert count(rt, outbox, outbox.c.status == "done") == 1
    assert count(rt, dead_letters, dead_letters.c.resolution.is_(None)) == 0


@responses.activate
def test_retry_budget_exhausted_goes_to_dead_letters(webhook_runtime: Runtime) -> None:
    rt = webhook_runtime
    responses.post(HOOK_URL, status=500)
    store(rt, sms("SM" + "d" * 32, "+14155550100", "hello"))
    for _ in range(3):
        drain(rt)
        make_due(rt)
    [letter] = rt.queues.list_dead_letters()
    assert (letter.error_class, letter.attempts) == ("exhausted", 3)
    assert len(responses.calls) == 3


@responses.activate
def test_conversation_order_is_kept_when_the_first_write_waits(webhook_runtime: Runtime) -> None:
    rt = webhook_runtime
    responses.post(HOOK_URL, status=503)
    responses.post(HOOK_URL, status=200)
    responses.post(HOOK_URL, status=200)
    store(rt, sms("SM" + "e" * 32, "+14155550100", "first"), sms("SM" + "f" * 32, "+14155550100", "second"))
    drain(rt)
    assert len(responses.calls) == 1, "the second message waits behind the first"
    make_due(rt)
    drain(rt)
    texts = [json.loads(call.request.body)["message"]["text"] for call in responses.calls]
    assert texts == ["first", "first", "second"]


def test_mapping_error_is_dead_lettered_with_the_field(write_config: Callable[..., Path], tmp_path: Path) -> None:
    # passes every check (a sample message's text is longer), fails on this message's five characters
    (tmp_path / "m.yaml").write_text("crm: jsonl\nfields:\n  title: '{{ 100 // (message.text | length - 5) }}'\n")
    path = write_config(f"""
        storage: {{url: "sqlite:///{tmp_path}/g.db"}}
        channels:
          sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
        crms:
          trial: {{type: jsonl, path: out.jsonl, mapping: m.yaml}}
        routes:
          - {{from: [sms-main], to: trial}}
    """)
    rt = build_runtime(load_config(path))
    store(rt, sms("SM" + "0" * 31 + "9", "+14155550100", "hello"))
    drain(rt)
    [letter] = rt.queues.list_dead_letters()
    assert (letter.stage, letter.error_code, letter.field) == ("delivery", "mapping_error", "title")


def test_media_that_cannot_be_fetched_delays_the_message_then_lets_it_through(runtime: Runtime, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.pipeline import ENRICH_ATTEMPTS

    def broken_enrich(message):  # type: ignore[no-untyped-def]
        raise ConnectionError("media host unreachable")

    monkeypatch.setattr(runtime.channels["sms-main"], "enrich", broken_enrich)
    # retries wait an hour, so only make_due decides when the next attempt runs (not how fast this machine is)
    hour = RetryPolicy(RetryConfig(initial_seconds=3600, max_seconds=3600, jitter_seconds=0))
    monkeypatch.setattr(Runtime, "retry_policy", property(lambda _self: hour))
    store(runtime, sms("SM" + "0" * 31 + "7", "+14155550100", "photo attached", NumMedia="1",
                       MediaUrl0=f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages/MM1/Media/ME1",
                       MediaContentType0="image/jpeg"))
    for attempt in range(1, ENRICH_ATTEMPTS):
        drain(runtime)
        assert count(runtime, outbox) == 0, f"attempt {attempt} waits for the media"
        make_due(runtime)
    drain(runtime)
    [line] = [json.loads(x) for x in (tmp_path / "out/crm.jsonl").read_text().splitlines()]
    assert line["message"]["extras"]["enrich_error"] == "ConnectionError"
    assert runtime.queues.list_dead_letters() == []
