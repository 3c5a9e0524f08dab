"""Salesforce and the automation: closed Cases found by the reply poll, Cases escalated, ratings on Case fields.

The org is ``tests/fake_salesforce.py`` (SOQL evaluated on its records); a Case is read and updated through the
sObject resource (``GET``/``PATCH /services/data/v59.0/sobjects/Case/{id}``, 204 on update), as documented.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
import responses

from connectors.salesforce import automation
from gateway.errors import PermanentError
from gateway.plugins import Escalation, Rating, TicketStatus, abilities
from tests.conformance.crm import CONVERSATION_ID
from tests.connectors.test_salesforce import CASE_ID, DATA
from tests.connectors.test_salesforce_replies import EXT, OTHER_CASE, MemoryCursors, Sink, connector, linked, row
from tests.fake_salesforce import ReplyOrg, sf_datetime

CASE_URL = f"{DATA}/sobjects/Case/{CASE_ID}"


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def org(mocked: responses.RequestsMock) -> ReplyOrg:
    org = ReplyOrg()
    org.install(mocked)
    org.records["Case"] = {CASE_ID: {"Id": CASE_ID, EXT: CONVERSATION_ID}, OTHER_CASE: {"Id": OTHER_CASE, EXT: None}}
    return org


def test_declares_the_automation_abilities() -> None:
    from connectors.salesforce import SalesforceCrm

    assert {"ticket_statuses", "ticket_escalation", "satisfaction_ratings"} <= set(abilities(SalesforceCrm))


def test_the_reply_poll_finds_each_gateway_case_closed_since_the_cursor_once(org: ReplyOrg) -> None:
    crm = connector(org, poll_closed_cases=True, case_external_id_field=EXT)
    sink, cursors = Sink(), MemoryCursors()
    crm.poll_replies(sink, cursors)  # the first poll starts the cursor now
    org.now += timedelta(minutes=1)
    for case_id in (CASE_ID, OTHER_CASE):  # OTHER_CASE is no gateway Case (its external id is empty)
        org.records["Case"][case_id].update(IsClosed=True, Status="Closed", SystemModstamp=sf_datetime(org.now))
    org.now += timedelta(minutes=1)
    crm.poll_replies(sink, cursors)
    crm.poll_replies(sink, cursors)
    assert sink.ids() == [f"Case:{CASE_ID}:closed"]
    [item] = sink.items
    assert item.kind == automation.CLOSED_KIND
    record = row(item)
    assert crm.ticket_statuses(record, linked()) == [TicketStatus(CONVERSATION_ID, "closed", record.received_at)]
    assert crm.agent_replies(record, linked()) == []  # a closed Case is no agent reply


def test_without_the_setting_no_case_query_is_made(org: ReplyOrg) -> None:
    crm = connector(org, case_external_id_field=EXT)
    crm.poll_replies(Sink(), MemoryCursors())
    assert not [q for q in org.queries if "FROM Case " in q and "IsClosed" in q]


@pytest.mark.parametrize(("current", "wanted", "patched"), [
    ("Medium", "urgent", {"Priority": "High", "OwnerId": "00G5e000001AbCdEAK"}),
    ("High", "normal", {"OwnerId": "00G5e000001AbCdEAK"}),  # never lowered
])
def test_escalation_raises_the_priority_sets_the_owner_and_leaves_a_private_comment(
        org: ReplyOrg, mocked: responses.RequestsMock, current: str, wanted: str, patched: dict[str, str]) -> None:
    crm = connector(org, case_external_id_field=EXT)
    mocked.get(CASE_URL, json={"attributes": {"type": "Case"}, "Id": CASE_ID, "Priority": current})
    mocked.patch(CASE_URL, status=204)
    line = crm.escalate(CONVERSATION_ID, Escalation(key="gw-escalation-1", note="Waited too long.", priority=wanted,
                                                    tags=("sla",), group="00G5e000001AbCdEAK"), linked())
    [update] = [json.loads(c.request.body) for c in mocked.calls if c.request.method == "PATCH"]
    assert update == patched and line.startswith(f"Case {CASE_ID}:")
    [note] = list(org.comments())
    assert note["IsPublished"] is False and note["CommentBody"].startswith("Waited too long.")


def test_a_rating_goes_to_the_configured_case_fields(org: ReplyOrg, mocked: responses.RequestsMock) -> None:
    crm = connector(org, case_external_id_field=EXT)
    mocked.patch(CASE_URL, status=204)
    crm.record_rating(CONVERSATION_ID, Rating(key="k", rating=5, comment="Lovely", field="CSAT__c",
                                              comment_field="CSAT_Comment__c"), linked())
    [call] = [c for c in mocked.calls if c.request.method == "PATCH"]
    assert json.loads(call.request.body) == {"CSAT__c": 5, "CSAT_Comment__c": "Lovely"}
    with pytest.raises(PermanentError, match="surveys"):
        crm.record_rating(CONVERSATION_ID, Rating(key="k", rating=5), linked())
