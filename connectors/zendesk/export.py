"""The safety net behind the webhook: agents' public comments found in the incremental ticket-event export.

A webhook request can be lost (the gateway was down past Zendesk's retries, the trigger was switched off). Every
``reply_poll_seconds`` the export is read from a cursor, a few pages per run, within both the account's request
budget and the export's own limit of 10 requests a minute. Each public agent comment on a ticket the gateway created
is stored as a ``zendesk_ticket_event`` inbox item keyed by its comment id; ``ZendeskReplies.agent_replies`` then
checks it exactly as it checks a webhook's comment, and the core sends a comment once whichever path found it.

https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/#incremental-ticket-event-export
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from connectors.zendesk.replies import EVENT_KIND, is_comment, positive_id
from gateway.plugins import CursorStore, InboxSink
from gateway.records import InboxItem

if TYPE_CHECKING:
    from connectors.zendesk.connector import ZendeskCrm

log = logging.getLogger(__name__)
MAX_PAGES_PER_RUN = 3
MAX_EVENTS_PER_PAGE = 1000  # the export's own page size
MAX_CHILD_EVENTS = 100
FIRST_LOOKBACK_SECONDS = 900  # a first poll looks this far back, never at the whole history
# the export leaves out the last minute and refuses a start_time inside it
TOO_RECENT_SECONDS = 60


def cursor_key(crm_name: str) -> str:
    return f"zendesk-replies:{crm_name}"


def poll(crm: ZendeskCrm, sink: InboxSink, cursors: CursorStore, *, now: float | None = None,
         max_pages: int = MAX_PAGES_PER_RUN) -> int:
    """Store the agent comments since the cursor, page by page, advancing the cursor after each stored page."""
    now = time.time() if now is None else now
    key = cursor_key(crm.name)
    state = cursors.get(key) or {}
    start = state.get("start_time")
    if not isinstance(start, int):
        start = int(now) - FIRST_LOOKBACK_SECONDS
        cursors.put(key, {"start_time": start})
    stored = 0
    for _ in range(max_pages):
        if start > now - TOO_RECENT_SECONDS:
            break
        crm.replies.export_limiter.acquire()
        body = crm.client.call("GET", "/incremental/ticket_events",
                               params={"start_time": start, "include": "comment_events"})
        events = [e for e in (body.get("ticket_events") or [])[:MAX_EVENTS_PER_PAGE] if isinstance(e, dict)]
        items = agent_comment_items(crm, events)
        if items:
            stored += sink.store(items)
        end = body.get("end_time")
        if not isinstance(end, int) or end <= start:
            if events and not body.get("end_of_stream"):
                log.warning("%s: a full export page shares one second (%s); the next poll reads it again",
                            crm.name, start)
            break
        cursors.put(key, {"start_time": end})
        start = end
        if body.get("end_of_stream", True):
            break
    return stored


def agent_comment_items(crm: ZendeskCrm, events: list[dict[str, Any]]) -> list[InboxItem]:
    """The public agent comments of a page on gateway tickets, one inbox item each (the event, that comment only)."""
    candidates: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for event in events:
        ticket_id = positive_id(event.get("ticket_id"))
        for child in (event.get("child_events") or [])[:MAX_CHILD_EVENTS]:
            if ticket_id and is_comment(child) and child.get("public") is True \
                    and positive_id(child.get("author_id")):
                candidates.append((ticket_id, child, event))
    if not candidates:
        return []
    tickets = gateway_tickets(crm, {ticket_id for ticket_id, _, _ in candidates})
    me = crm.replies.me()
    kept = [(ticket_id, child, event) for ticket_id, child, event in candidates if ticket_id in tickets
            and str(child["author_id"]) not in (me, tickets[ticket_id])]  # the requester is the customer
    roles = crm.replies.users(str(child["author_id"]) for _, child, _ in kept)
    items = []
    for ticket_id, child, event in kept:
        if (roles.get(str(child["author_id"])) or {}).get("role") not in ("agent", "admin"):
            continue
        stored = {k: v for k, v in event.items() if k != "child_events"} | {"ticket_id": int(ticket_id),
                                                                               "child_events": [child]}
        items.append(InboxItem(f"poll:comment:{child['id']}", json.dumps(stored).encode(), "application/json",
                               EVENT_KIND))
    return items


def gateway_tickets(crm: ZendeskCrm, ticket_ids: set[str]) -> dict[str, str]:
    """Of these tickets, the gateway's (they carry a conversation id as ``external_id``): id -> requester id."""
    found: dict[str, str] = {}
    ordered = sorted(ticket_ids, key=int)
    for start in range(0, len(ordered), 100):
        body = crm.client.call("GET", "/tickets/show_many", params={"ids": ",".join(ordered[start:start + 100])})
        for ticket in body.get("tickets") or []:
            if isinstance(ticket, dict) and ticket.get("external_id") and positive_id(ticket.get("id")):
                found[str(ticket["id"])] = str(ticket.get("requester_id") or "")
    return found
