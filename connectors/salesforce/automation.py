"""Salesforce and the gateway's automation: closed Cases found by the reply poll, Cases escalated, ratings written.

With ``poll_closed_cases: true`` each reply poll also asks for the gateway's Cases closed since its cursor
(``IsClosed = true``, one more SOQL query a poll); each is stored once under ``crm:NAME`` (kind
``salesforce_case_closed``) and becomes a ``TicketStatus``, which asks the customer for a rating.
Escalation raises ``Priority`` (the standard picklist: Low, Medium, High) and sets ``OwnerId`` to a queue or user;
Salesforce Cases have no tags. Ratings go to the Case fields the survey names (``CSAT__c``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from simple_salesforce.format import format_soql

from gateway.errors import PermanentError
from gateway.plugins import Escalation, InboxSink, LinkStore, Rating, TicketStatus
from gateway.records import InboxItem, RawRecord

if TYPE_CHECKING:
    from connectors.salesforce.connector import SalesforceCrm
    from connectors.salesforce.replies import Position

CLOSED_KIND = "salesforce_case_closed"
PRIORITY = {"low": "Low", "normal": "Medium", "high": "High", "urgent": "High"}
RANK = {"Low": 0, "Medium": 1, "High": 2}


def closed_cases_query(crm: SalesforceCrm, position: Position) -> str:
    where = ["IsClosed = true", format_soql("{:literal} != null", crm.config.case_external_id_field),
             position.condition()]
    return (f"SELECT Id, Status, ClosedDate, SystemModstamp FROM Case WHERE {' AND '.join(where)} "
            f"ORDER BY SystemModstamp, Id LIMIT {crm.config.reply_poll_limit}")


def poll_closed(crm: SalesforceCrm, sink: InboxSink, state: dict[str, Any], now: datetime) -> int:
    """Store the Cases closed since the cursor in ``state["Case"]`` (moved past every row read)."""
    from connectors.salesforce.replies import Position

    position = Position.load(state.get("Case"), now)
    rows = crm.api.query(closed_cases_query(crm, position))
    items = []
    for row in rows:
        position.advance(row)
        items.append(InboxItem(f"Case:{row['Id']}:closed", json.dumps(row, sort_keys=True).encode(),
                               "application/json", CLOSED_KIND))
    state["Case"] = position.dump()
    return sink.store(items) if items else 0


def ticket_statuses(record: RawRecord, links: LinkStore) -> list[TicketStatus]:
    if record.kind != CLOSED_KIND:
        return []
    try:
        case_id = str(json.loads(record.body)["Id"])
    except (ValueError, KeyError, TypeError):
        raise PermanentError("stored Salesforce Case row has no Id", code="malformed_row") from None
    conversation = links.find_local("conversation", case_id)
    if conversation is None:
        return []
    return [TicketStatus(conversation_id=conversation, status="closed", occurred_at=record.received_at)]


def _case_id(crm: SalesforceCrm, conversation_id: str, links: LinkStore) -> str:
    return crm.note_case(conversation_id, links)


def escalate(crm: SalesforceCrm, conversation_id: str, escalation: Escalation, links: LinkStore) -> str:
    """PATCH the Case (priority raised, never lowered; owner set) and add a private comment with the reason."""
    case_id = _case_id(crm, conversation_id, links)
    update: dict[str, Any] = {}
    done = []
    if escalation.priority is not None:
        case = crm.api.call("GET", f"sobjects/Case/{quote(case_id)}", params={"fields": "Priority"}) or {}
        current, wanted = case.get("Priority"), PRIORITY[escalation.priority]
        if RANK.get(wanted, 0) > RANK.get(str(current), -1):
            update["Priority"] = wanted
            done.append(f"Priority {current or 'none'} -> {wanted}")
    if escalation.group is not None:
        update["OwnerId"] = escalation.group
        done.append(f"owner {escalation.group}")
    if update:
        crm.api.call("PATCH", f"sobjects/Case/{quote(case_id)}", json=update)
    crm.post_note(conversation_id, escalation.note, links, key=escalation.key)
    return f"Case {case_id}: " + ("; ".join(done) or "note added")


def record_rating(crm: SalesforceCrm, conversation_id: str, rating: Rating, links: LinkStore) -> None:
    if rating.field is None:
        raise PermanentError("the survey names no Case field for the rating (surveys[].field, such as CSAT__c)",
                             code="no_rating_field")
    case_id = _case_id(crm, conversation_id, links)
    update: dict[str, Any] = {rating.field: rating.rating}
    if rating.comment_field is not None and rating.comment:
        update[rating.comment_field] = rating.comment
    crm.api.call("PATCH", f"sobjects/Case/{quote(case_id)}", json=update)
