"""Two-way conversations through the core: an agent's reply reaches the customer once, and the agent hears of trouble.

The CRM is the jsonl connector taking signed replies on /crm-hooks/trial; the channel is Twilio's inbound side with
a scripted provider (tests/scripted_channel.py) so timeouts, crashes and refusals happen exactly when a test says.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from gateway import signed_replies
from gateway.cli import main
from gateway.config import load_config
from gateway.delivery import DeliveryWorker
from gateway.notes import NoteWorker
from gateway.pipeline import PipelineWorker
from gateway.plugins import Registry
from gateway.records import InboxItem
from gateway.runtime import Runtime, build_runtime
from gateway.sending import SendWorker
from gateway.storage.db import utcnow
from gateway.storage.tables import crm_notes, inbox, messages, outbox, send_log, sends
from gateway.web import create_app
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL, TWILIO_SID
from tests.scripted_channel import ScriptedChannel, ScriptedProvider, registry_with_scripted
from tests.test_pipeline import sms

REPLY_SECRET = "test-reply-secret"
CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
workers: {{retry: {{max_attempts: 3, initial_seconds: 3600, max_seconds: 3600, jitter_seconds: 0}}}}
channels:
  sms-main: {{type: scripted, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl, reply_secret: "{REPLY_SECRET}"}}
routes:
  - {{from: [sms-main], to: trial}}
"""
CUSTOMER = "+14155550100"


@pytest.fixture
def provider() -> Iterator[ScriptedProvider]:
    ScriptedChannel.provider = ScriptedProvider()
    yield ScriptedChannel.provider


@pytest.fixture
def rt(write_config: Any, provider: ScriptedProvider) -> Iterator[Runtime]:
    registry = registry_with_scripted()
    runtime = build_runtime(load_config(write_config(CONFIG), registry), registry)
    yield runtime
    runtime.close()


@pytest.fixture
def client(rt: Runtime) -> FlaskClient:
    return create_app(rt).test_client()


def work(rt: Runtime) -> None:
    """Run every stage until all queues are idle (retries wait an hour: only ``make_due`` brings them back)."""
    stages = [PipelineWorker(rt, "t-p"), DeliveryWorker(rt, "t-d"), SendWorker(rt, "t-s"), NoteWorker(rt, "t-n")]
    while sum(drain_once(stage) for stage in stages):
        pass


def make_due(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(sends).values(available_at=utcnow() - timedelta(seconds=1)))


def customer_writes(rt: Runtime, text: str = "Where is my order?", sid: str = "SM" + "1" * 32) -> str:
    rt.queues.store_inbox("sms-main", [sms(sid, CUSTOMER, text)], {}, f"{PUBLIC_URL}/hooks/sms-main")
    work(rt)
    with rt.engine.connect() as conn:
        return conn.execute(select(messages.c.conversation_id)
                            .where(messages.c.provider_message_id == sid)).scalar_one()


def post_reply(client: FlaskClient, conversation_id: str, text: str, reply_id: str = "c-1",
               secret: str = REPLY_SECRET, timestamp: int | None = None) -> Any:
    body = json.dumps({"conversation_id": conversation_id, "reply_id": reply_id, "text": text,
                       "author": "Ann Agent", "author_id": "42"}).encode()
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    return client.post("/crm-hooks/trial", data=body, headers={
        "Content-Type": "application/json", signed_replies.TIMESTAMP_HEADER: stamp,
        signed_replies.SIGNATURE_HEADER: signed_replies.sign(secret, stamp, body)})


def crm_records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "out/crm.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def notes(tmp_path: Path) -> list[str]:
    return [record["note"]["text"] for record in crm_records(tmp_path) if "note" in record]


def count(rt: Runtime, table: Any, *where: Any) -> int:
    with rt.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def send_row(rt: Runtime) -> Any:
    with rt.engine.connect() as conn:
        return conn.execute(select(sends)).one()


# -- the happy path ---------------------------------------------------------------------------------------------------

def test_an_agent_reply_reaches_the_customer_once_in_the_same_conversation(
        rt: Runtime, client: FlaskClient, provider: ScriptedProvider, tmp_path: Path) -> None:
    conversation = customer_writes(rt)
    assert post_reply(client, conversation, "It ships today.").status_code == 200
    assert post_reply(client, conversation, "It ships today.").status_code == 200  # the CRM retried its webhook
    work(rt)
    assert [(to, text.split(" [")[0]) for _sid, to, text in provider.accepted] == [(CUSTOMER, "It ships today.")]
    row = send_row(rt)
    assert (row.status, row.provider_message_id, row.attempt_started_at) == ("sent", provider.accepted[0][0], None)
    with rt.engine.connect() as conn:
        stored = conn.execute(select(messages.c.direction, messages.c.conversation_id, messages.c.data)
                              .where(messages.c.id == row.message_id)).one()
    assert (stored.direction, stored.conversation_id) == ("outbound", conversation)
    assert stored.data["recipients"][0]["identifiers"][0]["value"] == CUSTOMER
    assert stored.data["sender"]["display_name"] == "Ann Agent"
    # nothing the gateway sent is written back to the CRM: no loop
    assert count(rt, outbox) == 1 and len([r for r in crm_records(tmp_path) if "message" in r]) == 1


def test_the_same_reply_reached_by_two_paths_is_sent_once(rt: Runtime, client: FlaskClient,
                                                           provider: ScriptedProvider) -> None:
    conversation = customer_writes(rt)
    post_reply(client, conversation, "Once only", reply_id="c-7")
    # the same reply as a poll would store it: another inbox key, the same reply id
    body = json.dumps({"conversation_id": conversation, "reply_id": "c-7", "text": "Once only"}).encode()
    rt.queues.store_inbox("crm:trial", [InboxItem("poll:c-7", body, "application/json")], {}, "")
    work(rt)
    assert len(provider.accepted) == 1
    assert count(rt, inbox, inbox.c.connector == "crm:trial") == 2


def test_replies_of_one_conversation_go_out_in_order(rt: Runtime, client: FlaskClient,
                                                      provider: ScriptedProvider) -> None:
    conversation = customer_writes(rt)
    provider.steps = ["throttle"]
    post_reply(client, conversation, "first", reply_id="c-1")
    post_reply(client, conversation, "second", reply_id="c-2")
    work(rt)
    assert provider.accepted == [], "the second reply waits behind the first, which waits out its retry"
    make_due(rt)
    work(rt)
    assert [text.split(" [")[0] for _sid, _to, text in provider.accepted] == ["first", "second"]


# -- exactly once after trouble ------------------------------------------------------------------------------------

def test_an_answer_lost_after_the_provider_took_the_reply_is_reconciled_never_resent(
        rt: Runtime, client: FlaskClient, provider: ScriptedProvider) -> None:
    conversation = customer_writes(rt)
    provider.steps = ["accept_then_timeout"]
    post_reply(client, conversation, "Are you there?")
    work(rt)
    row = send_row(rt)
    assert row.status == "pending" and row.attempt_started_at is not None, "the unknown attempt stays recorded"
    make_due(rt)
    work(rt)
    assert len(provider.accepted) == 1, "the customer got it once"
    assert provider.reconcile_calls == 1
    row = send_row(rt)
    assert (row.status, row.provider_message_id) == ("sent", provider.accepted[0][0])
    with rt.engine.connect() as conn:
        outcomes = [r.outcome for r in conn.execute(select(send_log).order_by(send_log.c.id))]
    assert outcomes == ["uncertain", "reconciled"]


def test_a_reply_lost_before_the_provider_got_it_is_sent_after_reconciliation(
        rt: Runtime, client: FlaskClient, provider: ScriptedProvider) -> None:
    conversation = customer_writes(rt)
    provider.steps = ["timeout"]
    post_reply(client, conversation, "Hello again")
    work(rt)
    make_due(rt)
    work(rt)
    assert len(provider.accepted) == 1 and provider.reconcile_calls == 1
    assert send_row(rt).status == "sent"


def test_a_crash_between_the_call_and_the_commit_is_reconciled(rt: Runtime, client: FlaskClient,
                                                               provider: ScriptedProvider,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    conversation = customer_writes(rt)
    post_reply(client, conversation, "Crash test")

    class Killed(BaseException):
        pass

    def die(*_args: Any, **_kwargs: Any) -> None:
        raise Killed  # the process dies after the provider accepted, before the outcome is committed

    monkeypatch.setattr(SendWorker, "_sent", die)
    with pytest.raises(Killed):
        work(rt)
    monkeypatch.undo()
    with rt.engine.begin() as conn:  # the dead worker's lease runs out
        conn.execute(update(sends).values(lease_until=utcnow() - timedelta(seconds=1)))
    work(rt)
    assert len(provider.accepted) == 1 and send_row(rt).status == "sent"


def test_a_provider_that_cannot_tell_is_asked_again_later_without_sending(
        rt: Runtime, client: FlaskClient, provider: ScriptedProvider) -> None:
    conversation = customer_writes(rt)
    provider.steps = ["timeout"]
    provider.lookup = "cannot_tell"
    post_reply(client, conversation, "Wait for it")
    work(rt)
    make_due(rt)
    work(rt)
    assert provider.accepted == [] and send_row(rt).status == "pending"
    provider.lookup = "exact"
    make_due(rt)
    work(rt)
    assert len(provider.accepted) == 1


def test_an_unknowable_outcome_is_never_resent_and_the_agent_is_told(
        rt: Runtime, client: FlaskClient, provider: ScriptedProvider, tmp_path: Path) -> None:
    conversation = customer_writes(rt)
    provider.steps = ["accept_then_timeout"]
    provider.lookup = "unknown"
    post_reply(client, conversation, "Maybe")
    work(rt)
    make_due(rt)
    work(rt)
    assert len(provider.accepted) == 1
    assert send_row(rt).status == "dead"
    [note] = notes(tmp_path)
    assert note.startswith("Perhaps not delivered") and "at most once" in note


# -- the agent hears why -------------------------------------------------------------------------------------------

def test_a_refusal_becomes_an_internal_note_in_words_an_agent_understands(
        rt: Runtime, client: FlaskClient, provider: ScriptedProvider, tmp_path: Path) -> None:
    conversation = customer_writes(rt)
    provider.steps = ["refuse"]
    post_reply(client, conversation, "Late answer")
    work(rt)
    assert provider.accepted == [] and send_row(rt).status == "dead"
    [note] = notes(tmp_path)
    assert note == "Not delivered: the customer's WhatsApp window closed 26 h ago; send a template"
    [record] = [r for r in crm_records(tmp_path) if "note" in r]
    assert record["note"]["internal"] is True and record["note"]["conversation_id"] == conversation
    [letter] = rt.queues.list_dead_letters()
    assert (letter.stage, letter.error_code) == ("send", "63016")


def test_a_customer_who_texted_stop_is_not_messaged(rt: Runtime, client: FlaskClient,
                                                    provider: ScriptedProvider, tmp_path: Path) -> None:
    conversation = customer_writes(rt)
    customer_writes(rt, "Stop", sid="SM" + "2" * 32)
    post_reply(client, conversation, "Can we help?")
    work(rt)
    assert provider.accepted == [] and send_row(rt).status == "blocked"
    [note] = notes(tmp_path)
    assert "opted out" in note and "START" in note
    customer_writes(rt, "START", sid="SM" + "3" * 32)
    post_reply(client, conversation, "Welcome back", reply_id="c-2")
    work(rt)
    assert [text.split(" [")[0] for _sid, _to, text in provider.accepted] == ["Welcome back"]


def test_an_opt_out_reported_by_the_provider_is_remembered(rt: Runtime, client: FlaskClient,
                                                           provider: ScriptedProvider, tmp_path: Path) -> None:
    conversation = customer_writes(rt)
    provider.steps = ["opted_out"]
    post_reply(client, conversation, "First", reply_id="c-1")
    work(rt)
    post_reply(client, conversation, "Second", reply_id="c-2")
    work(rt)
    assert provider.accepted == []
    with rt.engine.connect() as conn:
        statuses = [r.status for r in conn.execute(select(sends.c.status).order_by(sends.c.id))]
    assert statuses == ["dead", "blocked"], "the second reply is not even tried"


def test_retries_spent_dead_letter_then_replay_reconciles_first(rt: Runtime, client: FlaskClient,
                                                                provider: ScriptedProvider, tmp_path: Path) -> None:
    conversation = customer_writes(rt)
    provider.steps = ["accept_then_timeout", "timeout", "timeout"]
    provider.lookup = "cannot_tell"
    post_reply(client, conversation, "Persistent")
    for _ in range(3):
        work(rt)
        make_due(rt)
    assert send_row(rt).status == "dead"
    assert "may have reached the customer" in notes(tmp_path)[0]
    [letter] = rt.queues.list_dead_letters()
    provider.lookup = "exact"
    assert rt.queues.resolve_dead_letter(letter.id, "replayed")
    work(rt)
    assert len(provider.accepted) == 1, "the replay found the first attempt and sent nothing more"
    assert send_row(rt).status == "sent"


def test_a_failed_delivery_status_becomes_a_note(rt: Runtime, client: FlaskClient, provider: ScriptedProvider,
                                                 tmp_path: Path) -> None:
    conversation = customer_writes(rt)
    post_reply(client, conversation, "Status test")
    work(rt)
    sid = send_row(rt).provider_message_id
    status = sms(f"{sid}:status:undelivered", "+15005550006", "", MessageSid=sid, MessageStatus="undelivered",
                 SmsStatus="undelivered", ErrorCode="30003", To=CUSTOMER)
    rt.queues.store_inbox("sms-main", [InboxItem(status.provider_id, status.body,
                                                                status.content_type, "status")], {}, "")
    work(rt)
    [note] = notes(tmp_path)
    assert "undelivered" in note and "30003" in note and "unreachable" in note


# -- the reply endpoint -------------------------------------------------------------------------------------------

def test_the_reply_endpoint_refuses_what_it_cannot_trust(rt: Runtime, client: FlaskClient) -> None:
    conversation = customer_writes(rt)
    assert post_reply(client, conversation, "x", secret="not-the-secret").status_code == 401
    assert post_reply(client, conversation, "x", timestamp=1_000_000_000).status_code == 401
    known, unknown = client.post("/crm-hooks/trial", data=b"{}"), client.post("/crm-hooks/nobody", data=b"{}")
    assert known.status_code == 401  # and a name that takes no replies is answered the same: names cannot be guessed
    assert (unknown.status_code, unknown.get_data()) == (known.status_code, known.get_data())
    stamp = "2000000000"
    body = b'{"conversation_id": "x", "reply_id": "1", "text": "hi", "surprise": 1}'
    assert count(rt, inbox, inbox.c.connector == "crm:trial") == 0
    response = client.post("/crm-hooks/trial", data=body, headers={
        signed_replies.TIMESTAMP_HEADER: stamp, signed_replies.SIGNATURE_HEADER: signed_replies.sign(
            REPLY_SECRET, stamp, body)})
    assert response.status_code == 401, "stale, whatever the body"


@pytest.mark.parametrize("headers", [
    {signed_replies.TIMESTAMP_HEADER: "\u00b2\u00b3", signed_replies.SIGNATURE_HEADER: "sha256=00"},
    {signed_replies.SIGNATURE_HEADER: "sha256=\u00e9\u00e9"},
    {signed_replies.TIMESTAMP_HEADER: "9" * 400, signed_replies.SIGNATURE_HEADER: "sha256=00"},
])
def test_odd_reply_headers_are_4xx_not_503(rt: Runtime, client: FlaskClient, headers: dict[str, str]) -> None:
    """Superscript digits pass str.isdigit() but not int(); a non-ASCII signature made compare_digest raise."""
    stamp = str(int(time.time()))
    body = b'{"conversation_id": "x", "reply_id": "1", "text": "hi"}'
    response = client.post("/crm-hooks/trial", data=body, headers={
        signed_replies.TIMESTAMP_HEADER: stamp, **headers})
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert count(rt, inbox, inbox.c.connector == "crm:trial") == 0


@pytest.mark.parametrize(("body", "status"), [
    (b'{"conversation_id": "x", "reply_id": "1", "text": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400),
    (b'{"conversation_id": "x", "reply_id": "1", "text": "half an emoji \\ud83d"}', 200),
])
def test_signed_replies_that_json_cannot_hold_are_not_503(rt: Runtime, client: FlaskClient, body: bytes,
                                                          status: int) -> None:
    stamp = str(int(time.time()))
    response = client.post("/crm-hooks/trial", data=body, headers={
        signed_replies.TIMESTAMP_HEADER: stamp,
        signed_replies.SIGNATURE_HEADER: signed_replies.sign(REPLY_SECRET, stamp, body)})
    assert response.status_code == status, response.get_data(as_text=True)


def test_a_signed_reply_the_crm_connector_fails_on_is_kept_and_replayable(
        rt: Runtime, client: FlaskClient, provider: ScriptedProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    conversation = customer_writes(rt)
    crm = rt.crms["trial"]
    real_split = crm.split_reply_hook  # type: ignore[attr-defined]

    def broken(request: Any) -> list[InboxItem]:
        raise AttributeError("a bug in the connector")

    monkeypatch.setattr(crm, "split_reply_hook", broken)
    assert post_reply(client, conversation, "Your refund is on its way").status_code == 200
    work(rt)
    [letter] = rt.queues.list_dead_letters()
    assert (letter.error_class, letter.error_code, letter.target) == ("quarantined", "split_failed", "crm:trial")
    monkeypatch.setattr(crm, "split_reply_hook", real_split)
    assert rt.queues.resolve_dead_letter(letter.id, "replayed")
    work(rt)
    assert [text.startswith("Your refund is on its way") for _, _, text in provider.accepted] == [True]


def test_a_reply_for_an_unknown_conversation_sends_nothing(rt: Runtime, client: FlaskClient,
                                                           provider: ScriptedProvider) -> None:
    customer_writes(rt)
    assert post_reply(client, "f" * 32, "lost").status_code == 200
    work(rt)
    assert provider.accepted == [] and count(rt, sends) == 0
    assert count(rt, inbox, inbox.c.connector == "crm:trial", inbox.c.status == "ignored") == 1


def test_customers_show_lists_the_conversation_both_ways(rt: Runtime, client: FlaskClient,
                                                         provider: ScriptedProvider,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    registry = registry_with_scripted()
    monkeypatch.setattr(Registry, "from_entry_points", classmethod(lambda _cls: registry))
    conversation = customer_writes(rt)
    post_reply(client, conversation, "Both ways")
    work(rt)
    result = CliRunner().invoke(main, ["customers", "show", "-c", str(rt.config.path), CUSTOMER])
    assert result.exit_code == 0, result.output
    [shown] = json.loads(result.stdout)
    directions = [(m["direction"], m["text"]) for m in shown["messages"]]
    assert directions == [("inbound", "Where is my order?"), ("outbound", "Both ways")]
    assert shown["messages"][1]["send"]["status"] == "sent"


def test_notes_are_counted_once_per_key(rt: Runtime) -> None:
    from gateway.notes import queue_note

    with rt.engine.begin() as conn:
        queue_note(conn, "trial", "c" * 32, "k", "one")
        queue_note(conn, "trial", "c" * 32, "k", "one again")
    assert count(rt, crm_notes) == 1


def test_network_errors_name_the_host_only_and_a_refused_connection_is_surely_not_sent() -> None:
    import requests

    from gateway.errors import as_delivery_error, never_reached

    session = requests.Session()
    with pytest.raises(requests.ConnectionError) as refused:
        session.post("http://127.0.0.1:9/Messages.json?To=%2B14155550100", timeout=2)
    error = as_delivery_error(refused.value)
    assert str(error) == "ConnectionError talking to 127.0.0.1" and error.retryable
    assert "4155550100" not in str(error)
    assert never_reached(refused.value)
    assert not never_reached(requests.ReadTimeout("read timed out"))
