"""Routing on every message: `routes[].when` chooses the CRM, the mapping sees the route, rules change tickets."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import responses
from sqlalchemy import select

from gateway.config import load_config
from gateway.crmfields import UPDATE_KEY
from gateway.delivery import DeliveryWorker
from gateway.mapping import Mapping
from gateway.pipeline import PipelineWorker
from gateway.records import InboxItem
from gateway.routing import has_keyword, priority_refusal
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import messages, outbox
from gateway.worker import drain_once
from gateway.yamlsource import ConfigError
from tests.conftest import PUBLIC_URL, TWILIO_SID

# Monday 5 January 2026: 10:00 and 22:00 in Kolkata
OPEN_TIME = datetime(2026, 1, 5, 4, 30, tzinfo=UTC)
CLOSED_TIME = datetime(2026, 1, 5, 16, 30, tzinfo=UTC)

ROUTED = f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
crms:
  kerala: {{type: jsonl, path: out/kerala.jsonl, mapping: labels.yaml}}
  night: {{type: jsonl, path: out/night.jsonl, mapping: labels.yaml}}
  main: {{type: jsonl, path: out/main.jsonl, mapping: labels.yaml}}
  audit: {{type: jsonl, path: out/audit.jsonl}}
business_hours:
  india: {{timezone: Asia/Kolkata, hours: {{mon-fri: ["09:00-18:00"]}}}}
routes:
  - {{name: malayalam, from: [sms-main], to: kerala, when: {{language: ml}}}}
  - {{name: after-hours, from: [sms-main], to: night, when: {{business_hours: {{india: closed}}}}}}
  - {{name: refunds, from: [sms-main], to: main, when: {{keywords: [refund, "रिफंड"]}}}}
  - {{name: general, from: [sms-main], to: main, otherwise: true}}
  - {{from: [sms-main], to: audit}}
"""
LABELS = """
crm: jsonl
fields:
  route: "{{ route.name }}"
  routes: "{{ route.names | join(',') }}"
"""


def sms(sid: str, sender: str, body: str) -> InboxItem:
    form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": TWILIO_SID, "From": sender, "To": "+15005550006",
            "Body": body, "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received"}
    return InboxItem(sid, urlencode(form).encode(), "application/x-www-form-urlencoded")


def store(rt: Runtime, item: InboxItem, at: datetime) -> None:
    rt.queues.store_inbox("sms-main", [item], {}, f"{PUBLIC_URL}/hooks/sms-main", received_at=at)


def run_pipeline(rt: Runtime) -> None:
    worker = PipelineWorker(rt, "test-p")
    while drain_once(worker):
        pass


def routed(rt: Runtime) -> list[tuple[str, str, str]]:
    """(crm, route.name, route.names) of every outbox row, in order."""
    with rt.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.crm, outbox.c.fields).order_by(outbox.c.id)).all()
    return [(crm, fields.get("route", "-"), fields.get("routes", "-")) for crm, fields in rows]


@pytest.fixture
def routed_runtime(write_config: Callable[..., Path], tmp_path: Path) -> Runtime:
    (tmp_path / "labels.yaml").write_text(LABELS, encoding="utf-8")
    (tmp_path / "labels.tests.yaml").write_text(
        'cases: [{name: any, input: {message: {}, customer: {}, conversation: {}}, expect: {route: ""}}]\n',
        encoding="utf-8")
    return build_runtime(load_config(write_config(ROUTED)), http=requests.Session())


# -- keywords ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "keywords", "expected"), [
    ("I want a REFUND now", ["refund"], True),
    ("Refund.", ["refund"], True),
    ("refunded already, thanks", ["refund"], False),  # whole words only
    ("nonrefundable ticket", ["refund"], False),
    ("I want my money back please", ["money back"], True),
    ("back money", ["money back"], False),
    ("मुझे रिफंड चाहिए", ["रिफंड"], True),  # Hindi: the vowel signs are part of the word
    ("मुझे रिफंडों की सूची", ["रिफंड"], False),
    ("എനിക്ക് റീഫണ്ട് വേണം", ["റീഫണ്ട്"], True),  # Malayalam, virama and all
    ("నాకు వాపసు కావాలి", ["వాపసు"], True),  # Telugu
    ("我要退款谢谢", ["退款"], True),  # Chinese is written without spaces: anywhere in the text
    ("Straße gesperrt", ["STRASSE"], True),  # case folding, not just lower-casing
])
def test_keywords_match_whole_words_in_any_script(text: str, keywords: list[str], expected: bool) -> None:
    assert has_keyword(text, keywords) is expected


# -- choosing the CRM -------------------------------------------------------------------------------------------
def test_language_keyword_and_business_hours_choose_the_crm(routed_runtime: Runtime) -> None:
    rt = routed_runtime
    store(rt, sms("SM" + "1" * 32, "+919847000001", "എന്റെ ഓർഡർ എവിടെ? ഇതുവരെ കിട്ടിയില്ല"), OPEN_TIME)
    store(rt, sms("SM" + "2" * 32, "+14155550101", "Where is my order? It has not arrived yet."), CLOSED_TIME)
    store(rt, sms("SM" + "3" * 32, "+14155550102", "I would like a refund for my order please."), OPEN_TIME)
    store(rt, sms("SM" + "4" * 32, "+14155550103", "Where is my order? It has not arrived yet."), OPEN_TIME)
    run_pipeline(rt)
    assert routed(rt) == [
        ("kerala", "malayalam", "malayalam"), ("audit", "-", "-"),
        ("night", "after-hours", "after-hours"), ("audit", "-", "-"),
        ("main", "refunds", "refunds"), ("audit", "-", "-"),
        ("main", "general", "general"), ("audit", "-", "-"),
    ]
    rt.close()


def test_a_conversation_stays_with_its_crm_and_the_mapping_sees_each_message_s_routes(
        routed_runtime: Runtime) -> None:
    rt = routed_runtime
    store(rt, sms("SM" + "5" * 32, "+14155550104", "Where is my order? It has not arrived yet."), OPEN_TIME)
    run_pipeline(rt)
    # the same conversation, after hours and asking for a refund: still the main CRM's ticket, now labelled refunds
    store(rt, sms("SM" + "6" * 32, "+14155550104", "Still nothing. I want a refund."), CLOSED_TIME)
    run_pipeline(rt)
    assert routed(rt) == [("main", "general", "general"), ("audit", "-", "-"),
                          ("main", "refunds", "refunds"), ("audit", "-", "-")]
    rt.close()


def test_a_replayed_row_is_rendered_with_its_route(routed_runtime: Runtime) -> None:
    rt = routed_runtime
    store(rt, sms("SM" + "7" * 32, "+14155550105", "refund please"), OPEN_TIME)
    run_pipeline(rt)
    with rt.engine.begin() as conn:  # as a row dead-lettered by a mapping error and replayed is left
        conn.execute(outbox.update().where(outbox.c.crm == "main").values(fields=None))
    worker = DeliveryWorker(rt, "test-d")
    while drain_once(worker):
        pass
    lines = [json.loads(line) for line in (Path(rt.config.base_dir) / "out/main.jsonl").read_text().splitlines()]
    assert [line["fields"]["route"] for line in lines] == ["refunds"]
    rt.close()


def test_route_conditions_are_checked_with_the_config(write_config: Callable[..., Path]) -> None:
    bad = ROUTED.replace("{india: closed}", "{indai: closed}").replace("to: kerala, when: {language: ml}",
                                                                     "to: kerala, when: {channel: [smss]}")
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(bad))
    text = str(raised.value)
    assert "routes[1].when.business_hours.indai: no calendar named 'indai' in business_hours" in text
    assert "routes[0].when.channel[0]: no channel or channel type named 'smss'" in text
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(ROUTED.replace("when: {language: ml}", "when: {langauge: ml}")))
    assert "routes[0].when.langauge: unknown key" in str(raised.value)


# -- rules on every message -------------------------------------------------------------------------------------
def write_mapping(tmp_path: Path, rules: str) -> Path:
    path = tmp_path / "desk.yaml"
    path.write_text("crm: zendesk\nfields: {comment: '{{ message.text }}', priority: normal, tags: [gw]}\n"
                    f"rules:\n{rules}", encoding="utf-8")
    return path


def context(text: str) -> dict[str, Any]:
    return {"message": {"text": text, "channel": "sms"}, "customer": {}, "conversation": {},
            "route": {"name": "", "names": []}}


def test_a_rule_says_which_fields_change_an_existing_ticket(tmp_path: Path) -> None:
    mapping = Mapping.load(write_mapping(tmp_path, """
  - when: "'refund' in message.text | lower"
    set: {priority: high, group_id: "360001"}
    add_tags: [refund]
    update: [priority, tags]
  - when: "'invoice' in message.text | lower"
    set: {type: task}
    on: every_message
  - when: "'hello' in message.text | lower"
    set: {priority: low}
"""))
    fields = mapping.apply(context("A REFUND for this invoice"))
    assert fields[UPDATE_KEY] == {"priority": "high", "type": "task"}  # group_id: on a new ticket only
    assert fields["group_id"] == "360001" and "refund" in fields["tags"]
    # a rule without `on` stays as before: its fields go on a new ticket only
    assert UPDATE_KEY not in mapping.apply(context("hello"))


def test_update_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        Mapping.load(write_mapping(tmp_path, """
  - when: "true"
    set: {priority: high}
    update: [priorty]
"""))
    assert "update names 'priorty', which the rule does not set" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        Mapping.load(write_mapping(tmp_path, """
  - when: "true"
    set: {priority: high}
    on: create
    update: [priority]
"""))
    assert "leave `on` out or write on: every_message" in str(raised.value)


def test_priorities_only_rise() -> None:
    order = ["low", "normal", "high", "urgent"]
    assert priority_refusal(None, "high", order) is None
    assert priority_refusal("normal", "high", order) is None
    assert priority_refusal("high", "high", order) is None
    assert priority_refusal("urgent", "high", order) == \
        "priority stays 'urgent': a rule asked for 'high', and a priority never falls"
    assert priority_refusal("High", "Medium", ["Low", "Medium", "High"]) is not None
    assert "cannot be ranked" in str(priority_refusal("P1", "high", order))


# -- the refund case, end to end --------------------------------------------------------------------------------
DESK = f"""
storage: {{url: "{{storage_url}}"}}
server: {{public_url: "{PUBLIC_URL}"}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "test-token"}}
crms:
  desk: {{type: zendesk, subdomain: acme, email: agent@example.com, api_token: test-zd-token, mapping: desk.yaml,
          reply_poll_seconds: 0}}
routes:
  - {{from: [sms-main], to: desk}}
"""
API = "https://acme.zendesk.com/api/v2"


@responses.activate
def test_a_refund_on_a_later_message_raises_the_existing_ticket_s_priority(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    write_mapping(tmp_path, """
  - when: "'refund' in message.text | lower"
    set: {priority: high}
    add_tags: [refund]
    on: every_message
""")
    (tmp_path / "desk.tests.yaml").write_text("cases: []\n", encoding="utf-8")
    rt = build_runtime(load_config(write_config(DESK)), http=requests.Session())
    responses.get(f"{API}/users/search", json={"users": [], "count": 0, "next_page": None, "previous_page": None})
    responses.post(f"{API}/users/create_or_update", status=201, json={"user": {"id": 7}})
    created = responses.post(f"{API}/tickets", status=201, json={"ticket": {
        "id": 9, "status": "new", "priority": "normal", "updated_at": "2026-01-05T04:30:01Z",
        "tags": ["channel-gateway", "sms", "agent-tag"]}})
    updated = responses.put(f"{API}/tickets/9", json={"ticket": {
        "id": 9, "status": "open", "priority": "high", "updated_at": "2026-01-05T04:40:00Z"}})
    pipeline, delivery = PipelineWorker(rt, "test-p"), DeliveryWorker(rt, "test-d")
    store(rt, sms("SM" + "8" * 32, "+14155550106", "Where is my order?"), OPEN_TIME)
    while drain_once(pipeline) + drain_once(delivery):
        pass
    store(rt, sms("SM" + "9" * 32, "+14155550106", "Forget it, I want a refund."), OPEN_TIME)
    while drain_once(pipeline) + drain_once(delivery):
        pass
    assert json.loads(created.calls[0].request.body)["ticket"]["priority"] == "normal"
    ticket = json.loads(updated.calls[0].request.body)["ticket"]
    assert ticket["priority"] == "high"
    # Update Ticket's ``tags`` is the whole list: the one the creation answered, plus the rule's tag
    assert ticket["tags"][:3] == ["channel-gateway", "sms", "agent-tag"] and "refund" in ticket["tags"]
    assert ticket["safe_update"] is True and ticket["updated_stamp"] == "2026-01-05T04:30:01Z"
    rt.close()


def test_in_one_batch_a_conversation_also_stays_with_the_crm_its_earlier_message_went_to(
        routed_runtime: Runtime) -> None:
    """The earlier message's outbox row is not inserted yet when the later one is routed (they go in together)."""
    rt = routed_runtime
    store(rt, sms("SM" + "5" * 32, "+14155550104", "Where is my order? It has not arrived yet."), OPEN_TIME)
    store(rt, sms("SM" + "6" * 32, "+14155550104", "Still nothing. I want a refund."), CLOSED_TIME)
    worker = PipelineWorker(rt, "test-p")
    claimed = worker.claim()
    assert [len(rows) for rows in claimed] == [2]
    worker.process(claimed[0])
    assert routed(rt) == [("main", "general", "general"), ("audit", "-", "-"),
                          ("main", "refunds", "refunds"), ("audit", "-", "-")]
    rt.close()


def test_a_batch_s_outbox_rows_keep_the_order_of_their_messages_around_a_mapping_error(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "failing.yaml").write_text('crm: jsonl\nfields:\n  n: "{{ 1 // (0 if \'boom\' in message.text '
                                           'else 1) }}"\n', encoding="utf-8")
    (tmp_path / "failing.tests.yaml").write_text(
        'cases: [{name: any, input: {message: {text: ok}, customer: {}, conversation: {}}, expect: {n: "1"}}]\n',
        encoding="utf-8")
    rt = build_runtime(load_config(write_config(ROUTED.replace("mapping: labels.yaml", "mapping: failing.yaml"))),
                       http=requests.Session())
    texts = ["Where is my order?", "boom", "Still nothing.", "boom again", "Hello?"]
    for index, text in enumerate(texts):
        store(rt, sms(f"SM{index:032d}", "+14155550104", text), OPEN_TIME + timedelta(minutes=index))
    run_pipeline(rt)
    with rt.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.status, messages.c.data)
                            .join(messages, messages.c.id == outbox.c.message_id)
                            .where(outbox.c.crm == "main").order_by(outbox.c.id)).all()
    rt.close()
    assert [data["text"] for _, data in rows] == texts
    assert [status for status, _ in rows] == ["pending", "dead", "pending", "dead", "pending"]
