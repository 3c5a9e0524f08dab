"""Zendesk users the gateway did not create: looked up before a user is created, and renamed from a placeholder.

User objects follow Zendesk's documented User schema (id, name, email, phone, role, active, suspended,
shared_phone_number, external_id); ``GET /api/v2/users/search`` answers ``{"users": [...], "count", "next_page",
"previous_page"}`` (https://developer.zendesk.com/api-reference/ticketing/users/users/#search-users).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from connectors.zendesk import ZendeskConfig, ZendeskCrm
from gateway.plugins import ConnectorContext, CustomerView
from tests.conformance.crm import CUSTOMER_ID, CUSTOMER_PHONE, MemoryLinkStore, delivery_item
from tests.connectors.test_zendesk import API, answer_from, fixture
from tests.connectors.test_zendesk_bulk import item as bulk_item
from tests.connectors.test_zendesk_bulk import phone as bulk_phone
from tests.fake_zendesk import FakeZendesk

AGENT_MADE = 4242


def zendesk(**settings: Any) -> ZendeskCrm:
    config = ZendeskConfig(subdomain="acme", email="agent@example.com", api_token="test-zendesk-token", **settings)
    crm = ZendeskCrm("helpdesk", config, ConnectorContext(http=requests.Session()))
    crm.client.sleep = lambda _seconds: None
    return crm


def user(user_id: int, **fields: Any) -> dict[str, Any]:
    return {"id": user_id, "url": f"{API}/users/{user_id}.json", "name": "Asha Rao", "email": None, "phone": None,
            "role": "end-user", "active": True, "suspended": False, "shared_phone_number": False,
            "external_id": None, **fields}


def search_answer(*users: dict[str, Any]) -> dict[str, Any]:
    return {"users": list(users), "count": len(users), "next_page": None, "previous_page": None}


def ticket_mock(mocked: responses.RequestsMock) -> Any:
    return mocked.post(f"{API}/tickets", json=fixture("ticket_create"), status=201)


@pytest.fixture
def mocked() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def test_a_user_an_agent_just_created_is_found_by_phone_and_adopted(mocked: responses.RequestsMock) -> None:
    search = mocked.get(f"{API}/users/search", match=[matchers.query_param_matcher(
        {"query": "role:end-user phone:*4017122661"})], json=search_answer(
        user(AGENT_MADE, phone="(401) 712-2661"), user(77, phone="+1 212 401 7122661")))  # a suffix, not the number
    tickets = ticket_mock(mocked)
    links = MemoryLinkStore()
    zendesk().deliver(delivery_item(crm="helpdesk"), links)
    assert search.call_count == tickets.call_count == 1
    assert links.get("customer", CUSTOMER_ID) == (str(AGENT_MADE), {"adopted": True})
    assert not [c for c in mocked.calls if "create_or_update" in c.request.url]


def test_a_customer_zendesk_does_not_know_is_created_after_one_search_by_email(
        mocked: responses.RequestsMock) -> None:
    item = delivery_item(crm="helpdesk")
    item = replace(item, customer=CustomerView(CUSTOMER_ID, "Asha Rao", (("email", "asha@example.com"),
                                                                          ("phone", CUSTOMER_PHONE))))
    search = mocked.get(f"{API}/users/search", match=[matchers.query_param_matcher(
        {"query": "email:asha@example.com"})], json=search_answer())
    create = mocked.post(f"{API}/users/create_or_update", json=fixture("user_create_or_update"), status=201)
    ticket_mock(mocked)
    links = MemoryLinkStore()
    zendesk().deliver(item, links)
    assert search.call_count == create.call_count == 1
    assert links.get("customer", CUSTOMER_ID) == ("9873843", {}), "a real name is no placeholder"


def test_two_users_holding_the_number_adopt_neither(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{API}/users/search", json=search_answer(user(1, phone=CUSTOMER_PHONE), user(2, phone=CUSTOMER_PHONE)))
    create = mocked.post(f"{API}/users/create_or_update", json=fixture("user_create_or_update"), status=201)
    ticket_mock(mocked)
    zendesk().deliver(delivery_item(crm="helpdesk"), MemoryLinkStore())
    assert create.call_count == 1


def test_the_user_an_earlier_attempt_created_is_linked_as_ours(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{API}/users/search", json=search_answer(user(5, phone=CUSTOMER_PHONE, external_id=CUSTOMER_ID,
                                                              name=CUSTOMER_PHONE)))
    ticket_mock(mocked)
    links = MemoryLinkStore()
    zendesk().deliver(delivery_item(crm="helpdesk"), links)
    assert links.get("customer", CUSTOMER_ID) == ("5", {})


def named(name: str | None) -> Any:
    return replace(delivery_item(crm="helpdesk", opened=False),
                   customer=CustomerView(CUSTOMER_ID, name, (("phone", CUSTOMER_PHONE),)))


def linked_with(data: dict[str, Any]) -> MemoryLinkStore:
    links = MemoryLinkStore()
    links.put("customer", CUSTOMER_ID, "5", data)
    return links


def test_a_placeholder_name_is_replaced_once_the_customer_has_a_name(mocked: responses.RequestsMock) -> None:
    read = mocked.get(f"{API}/users/5", json={"user": user(5, name=CUSTOMER_PHONE, phone=CUSTOMER_PHONE)})
    rename = mocked.put(f"{API}/users/5", json={"user": user(5, name="Asha Rao")},
                        match=[matchers.json_params_matcher({"user": {"name": "Asha Rao"}}, strict_match=True)])
    tickets = mocked.post(f"{API}/tickets", json=fixture("ticket_create"), status=201)
    links = linked_with({"placeholder": CUSTOMER_PHONE})
    crm = zendesk()
    crm.deliver(named("Asha Rao"), links)
    assert read.call_count == rename.call_count == 1
    assert links.get("customer", CUSTOMER_ID) == ("5", {})
    crm.deliver(replace(named("Asha Rao"), conversation=replace(named(None).conversation, id="c2")), links)
    assert read.call_count == rename.call_count == 1 and tickets.call_count == 2, "renamed once"


def test_a_name_an_agent_gave_is_never_overwritten(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{API}/users/5", json={"user": user(5, name="Asha R. (VIP)", phone=CUSTOMER_PHONE)})
    ticket_mock(mocked)
    links = linked_with({"placeholder": CUSTOMER_PHONE})
    zendesk().deliver(named("Asha Rao"), links)
    assert not [c for c in mocked.calls if c.request.method == "PUT"]
    assert links.get("customer", CUSTOMER_ID) == ("5", {})


def test_an_adopted_user_and_a_customer_still_without_a_name_are_left_alone(mocked: responses.RequestsMock) -> None:
    tickets = ticket_mock(mocked)
    zendesk().deliver(named("Asha Rao"), linked_with({"adopted": True}))
    zendesk().deliver(named(None), linked_with({"placeholder": CUSTOMER_PHONE}))
    assert tickets.call_count == 2 and len(mocked.calls) == 2, "no user read, no rename"


def test_a_failed_rename_keeps_the_placeholder_for_the_next_message(mocked: responses.RequestsMock) -> None:
    mocked.get(f"{API}/users/5", status=503)
    ticket_mock(mocked)
    links = linked_with({"placeholder": CUSTOMER_PHONE})
    zendesk().deliver(named("Asha Rao"), links)
    assert links.get("customer", CUSTOMER_ID) == ("5", {"placeholder": CUSTOMER_PHONE})


def test_the_batch_path_leaves_the_search_to_the_directory_sync() -> None:
    """Under a backlog one search per new customer would multiply the calls tenfold (0.2 instead of 0.02 a message
    for 2,000 messages from 400 customers): the batched path adopts from the directory, and
    ``create_or_update_many`` matches by email; the one-by-one path searches."""
    fake = FakeZendesk(job_delay_seconds=0.0)
    fake.close()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        answer_from(fake, mocked)
        links = MemoryLinkStore()
        outcomes = zendesk(bulk_threshold=2).deliver_groups([[bulk_item(1)], [bulk_item(2), bulk_item(2, 1)]], links)
        searches = [c for c in mocked.calls if "/users/search" in c.request.url]
    assert len(outcomes) == 3 and searches == []
    assert links.get("customer", "cust-2")[1] == {"placeholder": bulk_phone(2)}
    assert fake.write_counts()["users_many"] == 1
