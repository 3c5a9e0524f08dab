"""Zendesk and the gateway's automation: solved tickets reported, tickets escalated, satisfaction ratings written.

``gateway crm setup`` adds a second trigger beside the agent-reply one: when a ticket's status changes to solved,
it notifies the same webhook with ``{"event": "ticket_solved", "ticket_id": ...}``; the request is verified and
stored like a reply event (kind ``zendesk_status``) and becomes a ``TicketStatus``.

Ratings are written as a custom ticket field and/or a ``csat_N`` tag, with the comment as an internal note: Zendesk's
own ``POST /tickets/{id}/satisfaction_rating`` only takes a rating from the ticket's requester, authenticated as that
end user, which the gateway's API user is not
(https://developer.zendesk.com/api-reference/ticketing/ticket-management/satisfaction_ratings/).

Tags: the Update Ticket endpoint (``PUT /tickets/{id}``) documents only ``tags``, the ticket's whole list, which
replaces the one it has ("If you use the Update Ticket endpoint to add one or more tags to a ticket, the new tags
replace any existing tags",
https://developer.zendesk.com/documentation/ticketing/managing-tickets/adding-tags-to-tickets-without-overwriting-existing-tags/).
``additional_tags`` and ``remove_tags`` are documented for ``PUT /tickets/update_many.json?ids=`` only. So the ticket
is read, and the update sends its list with our tags added (or the other csat tags taken out) under ``safe_update``
with the ``updated_stamp`` read: if anyone changed the ticket in between, Zendesk answers 409 and nothing is written
(https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#protecting-against-ticket-update-collisions);
the write is tried again later.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from connectors.zendesk.replies import _INVOCATION, INVOCATION_HEADER, STATUS_KIND, positive_id
from gateway.errors import MalformedRequest, PermanentError
from gateway.plugins import PRIORITIES, Escalation, LinkStore, Rating, TicketStatus
from gateway.records import InboxItem, RawRecord
from gateway.webhooks import HookRequest

if TYPE_CHECKING:
    from connectors.zendesk.connector import ZendeskCrm

log = logging.getLogger(__name__)
SOLVED_EVENT = "ticket_solved"
SOLVED_BODY = {"event": SOLVED_EVENT, "ticket_id": "{{ticket.id}}"}
CSAT_TAGS = tuple(f"csat_{n}" for n in range(1, 6))


def solved_trigger_title(crm_name: str) -> str:
    return f"Channel gateway: ticket solved, ask the customer for a rating ({crm_name})"


def solved_trigger_payload(crm: ZendeskCrm, webhook_id: str) -> dict[str, Any]:
    return {"trigger": {
        "title": solved_trigger_title(crm.name), "active": True,
        "description": "Created by `gateway crm setup`: the gateway asks the customer for a 1-5 rating on the channel "
                       "they wrote from (when `surveys:` is configured).",
        "conditions": {"all": [{"field": "status", "operator": "changed_to", "value": "solved"}], "any": []},
        "actions": [{"field": "notification_webhook", "value": [webhook_id, json.dumps(SOLVED_BODY)]}]}}


def solved_trigger_line(crm: ZendeskCrm, webhook_id: str | None, dry_run: bool) -> str:
    """Create (or point at our webhook) the trigger reporting solved tickets; one line saying what was done."""
    from connectors.zendesk.setup import _notified_webhook, _pages

    title = solved_trigger_title(crm.name)
    trigger = next((t for t in _pages(crm, "/triggers/search", {"query": title}, "triggers")
                    if t.get("title") == title), None)
    if trigger is None:
        if dry_run or webhook_id is None:
            return f"trigger {title!r}: would create"
        created = crm.client.call("POST", "/triggers", json=solved_trigger_payload(crm, webhook_id))
        return f"trigger {title!r}: created (id {created['trigger']['id']})"
    if webhook_id is not None and _notified_webhook(trigger) == webhook_id:
        return f"trigger {title!r}: exists (id {trigger['id']})"
    if dry_run or webhook_id is None:
        return f"trigger {title!r}: would update it to notify the gateway's webhook"
    crm.client.call("PUT", f"/triggers/{trigger['id']}", json=solved_trigger_payload(crm, webhook_id))
    return f"trigger {title!r}: updated to notify webhook {webhook_id} (id {trigger['id']})"


def split_status(request: HookRequest, data: dict[str, Any]) -> list[InboxItem]:
    """A solved-ticket notification, keyed by its invocation id (or the ticket: it is asked once anyway)."""
    ticket_id = positive_id(data.get("ticket_id"))
    if ticket_id is None:
        raise MalformedRequest("ticket_id is missing or not an id: the trigger must send {{ticket.id}}")
    invocation = request.headers.get(INVOCATION_HEADER, "").strip()
    key = f"hook:{invocation}" if _INVOCATION.match(invocation) else f"hook:ticket:{ticket_id}:solved"
    return [InboxItem(key, request.body, "application/json", STATUS_KIND)]


def status_event(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object when it is a solved-ticket notification, else None."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("event") == SOLVED_EVENT else None


def ticket_statuses(record: RawRecord, links: LinkStore) -> list[TicketStatus]:
    if record.kind != STATUS_KIND:
        return []
    data = status_event(record.body) or {}
    ticket_id = positive_id(data.get("ticket_id"))
    conversation = links.find_local("conversation", ticket_id) if ticket_id else None
    if conversation is None:
        return []
    return [TicketStatus(conversation_id=conversation, status="solved", occurred_at=record.received_at)]


def _ticket_id(conversation_id: str, links: LinkStore) -> str:
    link = links.get("conversation", conversation_id)
    if link is None:
        raise PermanentError(f"conversation {conversation_id} has no Zendesk ticket yet", code="no_ticket")
    return link[0]


def tag_list(ticket: dict[str, Any], add: list[str], remove: tuple[str, ...] = ()) -> list[str] | None:
    """The ticket's tags with ``add`` added and ``remove`` taken out, in their order; None when that changes nothing
    (or when the ticket came without its tags or its stamp: a list not read would replace them)."""
    if not isinstance(ticket.get("tags"), list) or not ticket.get("updated_at"):
        log.warning("ticket %s came without its tags or updated_at: %s not written", ticket.get("id"), ", ".join(add))
        return None
    current = [str(tag) for tag in ticket["tags"]]
    wanted = [tag for tag in current if tag not in remove or tag in add]
    wanted += [tag for tag in dict.fromkeys(add) if tag not in wanted]
    return None if wanted == current else wanted


def safe_stamp(ticket: dict[str, Any]) -> dict[str, Any]:
    """``safe_update`` with the ``updated_stamp`` of the ticket as read: a write over a change made since is refused."""
    return {"safe_update": True, "updated_stamp": ticket["updated_at"]}


def escalate(crm: ZendeskCrm, conversation_id: str, escalation: Escalation, links: LinkStore) -> str:
    """One ``PUT /tickets/{id}``: priority raised (never lowered), tags added, group set, an internal note."""
    ticket_id = _ticket_id(conversation_id, links)
    ticket = crm.client.call("GET", f"/tickets/{ticket_id}").get("ticket") or {}
    update: dict[str, Any] = {"comment": {"body": escalation.note, "public": False}}
    done = []
    current = ticket.get("priority") if ticket.get("priority") in PRIORITIES else None
    wanted = escalation.priority
    if wanted is not None and (current is None or PRIORITIES.index(wanted) > PRIORITIES.index(current)):
        update["priority"] = wanted
        done.append(f"priority {current or 'none'} -> {wanted}")
    tags = tag_list(ticket, list(escalation.tags)) if escalation.tags else None
    if tags is not None:
        update.update(tags=tags, **safe_stamp(ticket))
        done.append("tags " + ", ".join(escalation.tags))
    if escalation.group is not None:
        update["group_id"] = int(escalation.group) if escalation.group.isdigit() else escalation.group
        done.append(f"group {escalation.group}")
    crm.client.call("PUT", f"/tickets/{ticket_id}", json={"ticket": update})
    return f"ticket {ticket_id}: " + ("; ".join(done) or "note added")


def record_rating(crm: ZendeskCrm, conversation_id: str, rating: Rating, links: LinkStore) -> None:
    """The rating as a custom field and/or a ``csat_N`` tag (other csat tags removed), the comment as a note."""
    ticket_id = _ticket_id(conversation_id, links)
    update: dict[str, Any] = {}
    if rating.tags:
        ticket = crm.client.call("GET", f"/tickets/{ticket_id}").get("ticket") or {}
        tags = tag_list(ticket, [f"csat_{rating.rating}"], CSAT_TAGS)
        if tags is not None:
            update.update(tags=tags, **safe_stamp(ticket))
    if rating.field is not None:
        update["custom_fields"] = [{"id": int(rating.field) if rating.field.isdigit() else rating.field,
                                    "value": rating.rating}]
    note = f"The customer rated this ticket {rating.rating}/5 (satisfaction survey)."
    if rating.comment:
        note += f" Their comment: {rating.comment}"
    update["comment"] = {"body": note, "public": False}
    crm.client.call("PUT", f"/tickets/{ticket_id}", json={"ticket": update})
