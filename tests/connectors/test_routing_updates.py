"""Rules that change an existing ticket: the exact Zendesk and Salesforce calls, and priorities that only rise.

Zendesk: ``PUT /api/v2/tickets/{id}`` and ``PUT /api/v2/tickets/update_many`` take ``priority``, ``group_id`` and
``tags`` beside the comment (https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/); ``tags`` is
the whole list and replaces the ticket's ("If you use the Update Ticket endpoint to add one or more tags to a ticket,
the new tags replace any existing tags"; ``additional_tags`` is documented for ``update_many.json?ids=`` only,
https://developer.zendesk.com/documentation/ticketing/managing-tickets/adding-tags-to-tickets-without-overwriting-existing-tags/),
so it is sent only with ``safe_update``; a ``safe_update`` with a stale ``updated_stamp`` is answered 409.
Salesforce: ``GET sobjects/Case/{id}?fields=`` reads the Case, a ``PATCH sobjects/Case/{id}`` subrequest changes it
(204, no body) in the same ``composite`` call.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from connectors.salesforce import MARKER_PREFIX
from connectors.zendesk import ZendeskConfig, ZendeskCrm
from gateway.crmfields import UPDATE_KEY
from gateway.plugins import ConnectorContext, DeliveryItem
from tests.conformance.crm import CONVERSATION_ID, CUSTOMER_ID, MemoryLinkStore, delivery_item, twilio_sms
from tests.connectors.test_salesforce import (
    CASE_ID,
    CONTACT_ID,
    DATA,
    JSON_CT,
    LIMIT,
    composite_answer,
    salesforce,
    sent,
)
from tests.connectors.test_zendesk_bulk import FakeTime, item, job_status, linked, ops, poll, queued, zendesk

API = "https://acme.zendesk.com/api/v2"
STAMP = "2026-01-05T04:30:01Z"
TAGS = ["channel-gateway", "sms"]  # what every message of the conversation tags its ticket with


@pytest.fixture
def mocked() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def later(text: str, changes: dict[str, Any]) -> DeliveryItem:
    """A later message of the conversation whose mapping rules change the ticket (``on: every_message``)."""
    base = delivery_item(twilio_sms(text, sid="SM" + "2" * 32), crm="desk", opened=False)
    return replace(base, fields={**base.fields, **changes, UPDATE_KEY: changes})


def desk() -> ZendeskCrm:
    config = ZendeskConfig(type="zendesk", subdomain="acme", email="agent@example.com", api_token="test-zd-token")
    return ZendeskCrm("desk", config, ConnectorContext(http=requests.Session()))


def ticket_links(**known: Any) -> MemoryLinkStore:
    links = MemoryLinkStore()
    links.put("customer", CUSTOMER_ID, "7")
    links.put("conversation", CONVERSATION_ID, "9", {"status": "open", "updated_at": STAMP, "tags": TAGS, **known})
    return links


def answer(priority: str | None, stamp: str = "2026-01-05T05:00:00Z", tags: list[str] = TAGS) -> dict[str, Any]:
    return {"ticket": {"id": 9, "status": "open", "priority": priority, "updated_at": stamp, "tags": tags}}


# -- Zendesk, one conversation ------------------------------------------------------------------------------------
def test_a_rule_raises_the_priority_and_moves_the_group_of_the_existing_ticket(
        mocked: responses.RequestsMock) -> None:
    put = mocked.put(f"{API}/tickets/9", json=answer("high"))
    links = ticket_links(priority="normal")
    result = desk().deliver(later("I want a refund", {"priority": "high", "group_id": "360001"}), links)
    ticket = json.loads(put.calls[0].request.body)["ticket"]
    assert (ticket["priority"], ticket["group_id"]) == ("high", 360001)
    assert (ticket["safe_update"], ticket["updated_stamp"]) == (True, STAMP)
    assert ticket["comment"]["body"] == "I want a refund"
    assert result.operation == "comment_added"
    assert links.get("conversation", CONVERSATION_ID)[1]["priority"] == "high"


def test_a_lower_priority_is_not_applied_and_is_logged(mocked: responses.RequestsMock,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    put = mocked.put(f"{API}/tickets/9", json=answer("high"))
    with caplog.at_level(logging.INFO, logger="connectors.zendesk.connector"):
        desk().deliver(later("thanks", {"priority": "low"}), ticket_links(priority="high"))
    assert "priority" not in json.loads(put.calls[0].request.body)["ticket"]
    assert f"conversation {CONVERSATION_ID}: priority stays 'high': a rule asked for 'low', and a priority never " \
           "falls" in caplog.text


def test_an_agent_s_urgent_is_kept_when_the_ticket_changed_since_our_write(mocked: responses.RequestsMock) -> None:
    first = mocked.put(f"{API}/tickets/9", status=409, json={"error": "UpdateConflict"},
                       match=[matchers.json_params_matcher({"ticket": {"priority": "high"}}, strict_match=False)])
    current = mocked.get(f"{API}/tickets/9", json=answer("urgent", "2026-01-05T04:50:00Z"))
    again = mocked.put(f"{API}/tickets/9", json=answer("urgent"))
    desk().deliver(later("refund!", {"priority": "high"}), ticket_links(priority="normal"))
    assert (first.call_count, current.call_count, again.call_count) == (1, 1, 1)
    body = json.loads(again.calls[0].request.body)["ticket"]
    assert "priority" not in body and "safe_update" not in body


def test_a_ticket_whose_priority_is_not_known_is_read_first(mocked: responses.RequestsMock) -> None:
    read = mocked.get(f"{API}/tickets/9", json=answer("low", STAMP))
    put = mocked.put(f"{API}/tickets/9", json=answer("high"))
    desk().deliver(later("refund", {"priority": "high"}), ticket_links())  # linked before priorities were kept
    assert read.call_count == 1
    assert json.loads(put.calls[0].request.body)["ticket"]["priority"] == "high"


def test_fields_of_create_only_rules_leave_the_existing_ticket_alone(mocked: responses.RequestsMock) -> None:
    put = mocked.put(f"{API}/tickets/9", json=answer("normal"))
    base = delivery_item(twilio_sms("refund", sid="SM" + "2" * 32), crm="desk", opened=False)
    desk().deliver(replace(base, fields={**base.fields, "priority": "high", "tags": ["gw", "refund"]}),
                   ticket_links(priority="normal"))
    ticket = json.loads(put.calls[0].request.body)["ticket"]
    assert "priority" not in ticket and ticket["tags"] == [*TAGS, "gw", "refund"]  # the list known, plus the new
    assert (ticket["safe_update"], ticket["updated_stamp"]) == (True, STAMP) and "additional_tags" not in ticket


def test_tags_the_ticket_has_are_not_sent_again(mocked: responses.RequestsMock) -> None:
    put = mocked.put(f"{API}/tickets/9", json=answer("normal"))
    desk().deliver(later("hello again", {}), ticket_links(priority="normal"))
    assert "tags" not in json.loads(put.calls[0].request.body)["ticket"]


def test_a_ticket_whose_tags_are_not_known_is_read_and_its_list_kept(mocked: responses.RequestsMock) -> None:
    links = MemoryLinkStore()
    links.put("customer", CUSTOMER_ID, "7")
    links.put("conversation", CONVERSATION_ID, "9", {"status": "open", "updated_at": STAMP, "priority": "normal"})
    read = mocked.get(f"{API}/tickets/9", json=answer("normal", "2026-01-05T04:40:00Z", ["vip", "sms"]))
    put = mocked.put(f"{API}/tickets/9", json=answer("normal", tags=["vip", "sms", "channel-gateway"]))
    desk().deliver(later("hello again", {}), links)  # linked before the link kept tags
    assert read.call_count == 1
    ticket = json.loads(put.calls[0].request.body)["ticket"]
    assert ticket["tags"] == ["vip", "sms", "channel-gateway"]  # the agent's vip kept
    assert (ticket["safe_update"], ticket["updated_stamp"]) == (True, "2026-01-05T04:40:00Z")
    assert links.get("conversation", CONVERSATION_ID)[1]["tags"] == ["vip", "sms", "channel-gateway"]


def test_a_read_that_does_not_give_the_tags_adds_none_rather_than_replace_them(
        mocked: responses.RequestsMock) -> None:
    links = MemoryLinkStore()
    links.put("customer", CUSTOMER_ID, "7")
    links.put("conversation", CONVERSATION_ID, "9", {"status": "open", "priority": "normal"})
    mocked.get(f"{API}/tickets/9", json={"ticket": {"id": 9, "status": "open", "priority": "normal"}})
    put = mocked.put(f"{API}/tickets/9", json=answer("normal"))
    assert desk().deliver(later("hello again", {}), links).operation == "comment_added"
    assert not {"tags", "additional_tags"} & json.loads(put.calls[0].request.body)["ticket"].keys()


# -- Zendesk, batched ---------------------------------------------------------------------------------------------
def test_update_many_carries_each_ticket_s_changes(mocked: responses.RequestsMock) -> None:
    raised = replace(item(1, 1, text="refund"), fields={**item(1, 1).fields, UPDATE_KEY: {"priority": "urgent"}})
    kept = replace(item(2, 1, text="ok"), fields={**item(2, 1).fields, UPDATE_KEY: {"priority": "low"}})
    links = linked(1, 2)
    links.put("conversation", "conv-1", "801", {"status": "open", "priority": "normal", "tags": TAGS})
    links.put("conversation", "conv-2", "802", {"status": "open", "priority": "high", "tags": TAGS})
    many = mocked.put(f"{API}/tickets/update_many", json=queued("t1", 2))
    poll(mocked, "t1", job_status("t1", results=[
        {"id": 801, "action": "update", "success": True, "status": "Updated"},
        {"id": 802, "action": "update", "success": True, "status": "Updated"}], total=2))
    outcomes = zendesk(FakeTime()).deliver_groups([[raised], [kept]], links)
    assert ops(outcomes) == {101: "comment_added", 201: "comment_added"}
    tickets = json.loads(many.calls[0].request.body)["tickets"]
    assert [(t["id"], t.get("priority")) for t in tickets] == [(801, "urgent"), (802, None)]


# -- Salesforce ---------------------------------------------------------------------------------------------------
def case_links() -> MemoryLinkStore:
    links = MemoryLinkStore()
    links.put("customer", CUSTOMER_ID, CONTACT_ID)
    links.put("conversation", CONVERSATION_ID, CASE_ID)
    return links


def sf_later(changes: dict[str, Any]) -> DeliveryItem:
    base = delivery_item(twilio_sms("I want a refund", sid="SM" + "2" * 32), crm="sf", opened=False,
                         fields={"comment": "I want a refund", "public": False, **changes})
    return replace(base, fields={**base.fields, UPDATE_KEY: changes})


def read_case(mocked: responses.RequestsMock, priority: str) -> Any:
    return mocked.get(f"{DATA}/sobjects/Case/{CASE_ID}", headers={**LIMIT, **JSON_CT}, json={
        "attributes": {"type": "Case", "url": f"/services/data/v59.0/sobjects/Case/{CASE_ID}"},
        "Priority": priority, "Id": CASE_ID}, match=[matchers.query_param_matcher({"fields": "Priority"})])


def composite_ok(mocked: responses.RequestsMock, changed: bool) -> Any:
    entries = [{"body": None, "httpHeaders": {}, "httpStatusCode": 204, "referenceId": "caseChanges"}] \
        if changed else []
    return mocked.post(f"{DATA}/composite", headers=LIMIT, json=composite_answer(*entries, {
        "body": {"id": "00aR0000000AbCeIAK", "success": True, "errors": []}, "httpHeaders": {},
        "httpStatusCode": 201, "referenceId": "message"}))


def test_salesforce_raises_the_case_priority_and_owner_in_the_same_composite_call(
        mocked: responses.RequestsMock) -> None:
    read = read_case(mocked, "Medium")
    call = composite_ok(mocked, changed=True)
    item = sf_later({"case.Priority": "High", "case.OwnerId": "00G5e000001AbCdEAK"})
    result = salesforce().deliver(item, case_links())
    assert read.call_count == 1
    assert (result.operation, result.calls) == ("case_changed", 2)
    assert sent(call.calls[0])["compositeRequest"] == [
        {"method": "PATCH", "referenceId": "caseChanges", "url": f"/services/data/v59.0/sobjects/Case/{CASE_ID}",
         "body": {"Priority": "High", "OwnerId": "00G5e000001AbCdEAK"}},
        {"method": "POST", "referenceId": "message", "url": "/services/data/v59.0/sobjects/CaseComment",
         "body": {"ParentId": CASE_ID, "CommentBody": f"I want a refund\n\n{MARKER_PREFIX}{item.message.id}",
                  "IsPublished": False}}]


def test_salesforce_never_lowers_a_case_priority(mocked: responses.RequestsMock) -> None:
    read_case(mocked, "High")
    call = composite_ok(mocked, changed=False)
    result = salesforce().deliver(sf_later({"case.Priority": "Medium"}), case_links())
    assert result.operation == "message_added"
    assert [sub["referenceId"] for sub in sent(call.calls[0])["compositeRequest"]] == ["message"]


def test_salesforce_priority_order_follows_the_org_s_picklist(mocked: responses.RequestsMock) -> None:
    read_case(mocked, "P3")
    call = composite_ok(mocked, changed=True)
    salesforce(priority_order=["P4", "P3", "P2", "P1"]).deliver(sf_later({"case.Priority": "P1"}), case_links())
    assert sent(call.calls[0])["compositeRequest"][0]["body"] == {"Priority": "P1"}
