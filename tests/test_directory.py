"""The CRM directory: existing contacts are adopted, not duplicated; a record holding two identifiers joins them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
import requests
import responses
from responses import matchers
from sqlalchemy import select

from connectors.zendesk import ZendeskConfig, ZendeskCrm
from gateway.directory import CrmDirectory
from gateway.identity import IdentityRules, resolve_customer
from gateway.identity.merges import live_customer_id
from gateway.model import Identifier, IdentifierKind, Party
from gateway.plugins import ConnectorContext, CustomerView
from gateway.runtime import Runtime
from gateway.storage.cursors import Cursors
from gateway.storage.db import utcnow
from gateway.storage.links import DbLinkStore
from gateway.storage.tables import crm_links, merge_suggestions, merges
from tests.conformance.crm import delivery_item, twilio_sms

API = "https://acme.zendesk.com/api/v2"
RULES = IdentityRules(default_region="US")


def end_user(user_id: int, **fields: object) -> dict[str, object]:
    base = {"active": True, "id": user_id, "name": f"User {user_id}", "role": "end-user", "suspended": False,
            "shared_phone_number": False, "email": None, "phone": None}
    return {**base, **fields}


@pytest.fixture
def zendesk(runtime: Runtime) -> ZendeskCrm:
    config = ZendeskConfig(type="zendesk", subdomain="acme", email="agent@example.com", api_token="test-zd-token",
                          search_before_create=False)
    return ZendeskCrm("helpdesk", config, ConnectorContext(http=requests.Session()))


@pytest.fixture
def directory(runtime: Runtime) -> CrmDirectory:
    return CrmDirectory(runtime.engine, "helpdesk", RULES)


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


def test_sync_imports_end_users_page_by_page_and_resumes_from_its_cursor(
        zendesk: ZendeskCrm, directory: CrmDirectory, runtime: Runtime, mocked: responses.RequestsMock) -> None:
    mocked.get(f"{API}/incremental/users/cursor", match=[matchers.query_param_matcher({"start_time": "0"})], json={
        "users": [end_user(1, email="Asha@Example.com", phone="+1 (415) 555-0100"),
                  end_user(2, phone="+14155550199", shared_phone_number=True),
                  end_user(3, email="agent@acme.test", role="agent")],
        "after_cursor": "c1", "after_url": f"{API}/incremental/users/cursor.json?cursor=c1",
        "before_cursor": None, "before_url": None, "end_of_stream": False})
    mocked.get(f"{API}/incremental/users/cursor", match=[matchers.query_param_matcher({"cursor": "c1"})], json={
        "users": [end_user(4, email="ravi@example.in", suspended=True)],
        "after_cursor": "c2", "after_url": None, "before_cursor": "c1", "before_url": None, "end_of_stream": True})
    cursors = Cursors(runtime.engine)
    assert zendesk.sync_directory(directory, cursors) == 2
    assert directory.find("email", "asha@example.com") == ["1"]
    assert directory.find("phone", "+14155550100") == ["1"]
    assert directory.find("phone", "+14155550199") == [], "a shared number identifies nobody"
    assert directory.find("email", "agent@acme.test") == [], "agents are not customers"
    assert directory.find("email", "ravi@example.in") == []
    assert cursors.get("zendesk-directory:helpdesk") == {"cursor": "c2"}
    mocked.get(f"{API}/incremental/users/cursor", match=[matchers.query_param_matcher({"cursor": "c2"})], json={
        "users": [end_user(1, email="asha.rao@example.com")], "after_cursor": "c3", "end_of_stream": True})
    zendesk.sync_directory(directory, cursors)
    assert directory.find("phone", "+14155550100") == [], "a changed record drops what it no longer holds"
    assert directory.find("email", "asha.rao@example.com") == ["1"]


def test_an_existing_user_is_adopted_instead_of_created(
        zendesk: ZendeskCrm, directory: CrmDirectory, runtime: Runtime, mocked: responses.RequestsMock) -> None:
    directory.replace_record("9001", [("phone", "+14155550100")])
    item = delivery_item(twilio_sms("Where is my order?"), crm="helpdesk")
    item = replace(item, customer=CustomerView("c1", None, (("phone", "+14155550100"),)))
    created = mocked.post(f"{API}/tickets", status=201, json={"ticket": {"id": 77, "status": "new"}})
    result = zendesk.deliver(item, DbLinkStore(runtime.engine, "helpdesk", directory))
    assert result.remote_id == "77"
    sent = json.loads(created.calls[0].request.body)["ticket"]
    assert sent["requester_id"] == 9001 and sent["comment"]["author_id"] == 9001
    assert [c.request.url.split("/api/v2")[1] for c in mocked.calls] == ["/tickets"], "no user was created"
    with runtime.engine.connect() as conn:
        link = conn.execute(select(crm_links).where(crm_links.c.entity == "customer")).one()
    assert (link.local_id, link.remote_id, link.data) == ("c1", "9001", {"adopted": True})


def test_an_ambiguous_identifier_adopts_nobody(zendesk: ZendeskCrm, directory: CrmDirectory, runtime: Runtime,
                                               mocked: responses.RequestsMock) -> None:
    directory.replace_record("1", [("email", "asha@example.com")])
    directory.replace_record("2", [("phone", "+14155550100")])
    item = replace(delivery_item(twilio_sms("hi"), crm="helpdesk"),
                   customer=CustomerView("c1", None, (("phone", "+14155550100"), ("email", "asha@example.com"))))
    mocked.post(f"{API}/users/create_or_update", status=201, json={"user": {"id": 55}})
    mocked.post(f"{API}/tickets", status=201, json={"ticket": {"id": 77, "status": "new"}})
    zendesk.deliver(item, DbLinkStore(runtime.engine, "helpdesk", directory))
    assert json.loads(mocked.calls[1].request.body)["ticket"]["requester_id"] == 55


def party(*pairs: tuple[str, str]) -> Party:
    return Party(identifiers=tuple(Identifier(kind=IdentifierKind(k), value=v) for k, v in pairs))


def test_a_crm_record_holding_two_identifiers_merges_their_customers(runtime: Runtime,
                                                                     directory: CrmDirectory) -> None:
    with runtime.engine.begin() as conn:
        by_phone = resolve_customer(conn, party(("phone", "+14155550100")), message_id="m1").customer_id
        by_email = resolve_customer(conn, party(("email", "asha@example.com")), message_id="m2").customer_id
    directory.replace_record("9001", [("phone", "415-555-0100"), ("email", "asha@example.com")])
    with runtime.engine.connect() as conn:
        assert live_customer_id(conn, by_email) == by_phone
        record = conn.execute(select(merges)).one()
    assert record.evidence == "crm_record"
    assert record.detail["record"] == "9001" and record.detail["crm"] == "helpdesk"


def test_a_crm_record_never_joins_customers_linked_to_other_records(runtime: Runtime,
                                                                   directory: CrmDirectory) -> None:
    with runtime.engine.begin() as conn:
        a = resolve_customer(conn, party(("phone", "+14155550100")), message_id="m1").customer_id
        b = resolve_customer(conn, party(("email", "asha@example.com")), message_id="m2").customer_id
        for local, remote in ((a, "1"), (b, "2")):
            conn.execute(crm_links.insert().values(crm="helpdesk", entity="customer", local_id=local,
                                                   remote_id=remote, data={}, updated_at=utcnow()))
    directory.replace_record("3", [("phone", "+14155550100"), ("email", "asha@example.com")])
    with runtime.engine.connect() as conn:
        assert live_customer_id(conn, b) == b
        assert conn.execute(select(merges)).first() is None
        assert "different records" in conn.execute(select(merge_suggestions.c.reason)).scalar_one()




def test_an_identifier_several_records_hold_joins_nobody(runtime: Runtime, directory: CrmDirectory) -> None:
    """A family phone on two CRM records (Alice's and Bob's) is evidence for neither."""
    with runtime.engine.begin() as conn:
        alice = resolve_customer(conn, party(("email", "alice@example.com")), message_id="m1").customer_id
        bob = resolve_customer(conn, party(("email", "bob@example.com")), message_id="m2").customer_id
        phone = resolve_customer(conn, party(("phone", "+14155550100")), message_id="m3").customer_id
    directory.replace_records([("7", [("email", "alice@example.com"), ("phone", "+14155550100")]),
                               ("8", [("email", "bob@example.com"), ("phone", "+14155550100")])])
    with runtime.engine.connect() as conn:
        assert {live_customer_id(conn, c) for c in (alice, bob)} == {alice, bob}
        assert live_customer_id(conn, bob) != live_customer_id(conn, alice)
    with runtime.engine.begin() as conn:
        new_sender = resolve_customer(conn, party(("phone", "+14155550100")), message_id="m4").customer_id
    assert new_sender == phone


def test_a_role_address_on_a_crm_record_joins_nobody(runtime: Runtime, directory: CrmDirectory) -> None:
    rules = IdentityRules(role_local_parts=frozenset({"sales"}))
    with runtime.engine.begin() as conn:
        jane = resolve_customer(conn, party(("phone", "+14155550100")), message_id="m1", rules=rules).customer_id
    directory.replace_record("9", [("phone", "+14155550100"), ("email", "sales@acme.example")])
    with runtime.engine.begin() as conn:
        sender = resolve_customer(conn, party(("email", "sales@acme.example")), message_id="m2",
                                  rules=rules).customer_id
    assert sender != jane


def test_an_email_about_an_order_first_texted_about_lands_on_the_same_conversation(
        runtime: Runtime, directory: CrmDirectory) -> None:
    """The CRM's record holds the customer's phone and address: the email joins the SMS conversation."""
    from datetime import UTC, datetime, timedelta

    from gateway.config import ConversationsConfig
    from gateway.conversations import assign_conversation
    from gateway.model import ChannelType, Message, RawRef

    directory.replace_record("9001", [("phone", "+14155550100"), ("email", "asha@example.com")])
    texted = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

    def message(channel: ChannelType, ident: tuple[str, str], at: datetime) -> Message:
        return Message(channel=channel, connector=channel.value, connector_type="test", provider_message_id=str(at),
                       sender=party(ident), text="order #1042", sent_at=at, received_at=at,
                       raw=RawRef(inbox_id=1, connector=channel.value))

    with runtime.engine.begin() as conn:
        sms = message(ChannelType.SMS, ("phone", "+14155550100"), texted)
        first = resolve_customer(conn, sms.sender, message_id="m1").customer_id
        opened = assign_conversation(conn, sms, first, ConversationsConfig())
        mail = message(ChannelType.EMAIL, ("email", "asha@example.com"), texted + timedelta(hours=5))
        second = resolve_customer(conn, mail.sender, message_id="m2").customer_id
        joined = assign_conversation(conn, mail, second, ConversationsConfig())
    assert second == first
    assert (joined.conversation_id, joined.rule) == (opened.conversation_id, "continuity")
