"""Zendesk's two-way payloads for tests, shaped as its reference documents them, and a webhook signer.

Shapes: ticket comments (https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_comments/, JSON format,
attachments as in ticket-attachments), cursor pagination ``meta``/``links`` (api-reference/introduction/pagination),
users ``show_many``, the time-based ticket-event export with the ``comment_events`` sideload (its documented
``child_events`` comment example), webhooks and their ``signing_secret`` ({"algorithm": "SHA256", "secret"}),
triggers. Zendesk's OpenAPI file publishes no examples for these; the bodies follow the documented field tables.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from tests.connectors.test_zendesk import fixture

API = "https://acme.zendesk.com/api/v2"
TICKET_ID = 35436
REQUESTER_ID = 9873843  # the customer's end user (UserCreateResponseExample)
API_USER_ID = 35436  # CurrentUserResponseExample's id: the gateway's API user
AGENT_ID = 1902388
WEBHOOK_ID = "01GDXYD7ZTWYP6WHPH5AXBCD1D"
WEBHOOK_SECRET = "dGVzdC16ZW5kZXNrLXdlYmhvb2stc2VjcmV0"


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signed(body: bytes, *, secret: str = WEBHOOK_SECRET, when: datetime | None = None,
           invocation: str | None = "01HQ7ZK5W6R8Y3ND2C1B0A9F8E") -> dict[str, str]:
    """Headers as Zendesk sends them: base64(HMAC-SHA256(secret, timestamp + body)) and an ISO 8601 timestamp."""
    timestamp = iso(when or datetime.now(UTC))
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    headers = {"Content-Type": "application/json", "X-Zendesk-Webhook-Id": WEBHOOK_ID,
               "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
               "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode()}
    if invocation:
        headers["X-Zendesk-Webhook-Invocation-Id"] = invocation
    return headers


def hook_body(comment_id: int, ticket_id: int = TICKET_ID) -> bytes:
    """What the trigger ``gateway crm setup`` creates sends, its placeholders filled in."""
    return json.dumps({"event": "agent_reply", "ticket_id": str(ticket_id), "comment_id": str(comment_id)}).encode()


def attachment(attachment_id: int = 498483, name: str = "label.pdf") -> dict[str, Any]:
    url = f"https://acme.zendesk.com/attachments/token/6q0ktRuz2hNnZ2nKeBhAQ3/?name={name}"
    return {"id": attachment_id, "file_name": name, "content_url": url, "mapped_content_url": url,
            "content_type": "application/pdf", "size": 2532, "width": None, "height": None, "inline": False,
            "deleted": False, "malware_access_override": False, "malware_scan_result": "malware_not_found",
            "thumbnails": [], "url": f"{API}/attachments/{attachment_id}.json"}


def comment(comment_id: int, author_id: int, body: str, *, public: bool = True, channel: str = "web",
            attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": comment_id, "type": "Comment", "author_id": author_id, "body": body,
            "html_body": f'<div class="zd-comment" dir="auto"><p dir="auto">{body}</p></div>', "plain_body": body,
            "public": public, "attachments": attachments or [], "audit_id": comment_id + 1,
            "via": {"channel": channel, "source": {"from": {}, "rel": None, "to": {}}},
            "created_at": "2026-11-29T10:15:18Z",
            "metadata": {"system": {"client": "Mozilla/5.0", "ip_address": "192.0.2.10", "location": "Paris"},
                         "custom": {}}}


def comments_page(comments: list[dict[str, Any]], *, more: bool = False) -> dict[str, Any]:
    after = "eyJvIjoiLWNyZWF0ZWRfYXQiLCJ2IjoiYVFJQUFBQUFBQUFBIn0="
    next_url = f"{API}/tickets/{TICKET_ID}/comments.json?page[size]=100&page[after]={after}" if more else None
    return {"comments": comments, "meta": {"has_more": more, "after_cursor": after if more else None,
                                           "before_cursor": None}, "links": {"next": next_url, "prev": None}}


def user(user_id: int, role: str, name: str) -> dict[str, Any]:
    found = copy.deepcopy(fixture("users_me")["user"])
    found.update(id=user_id, role=role, name=name, url=f"{API}/users/{user_id}.json")
    return found


def users(*found: dict[str, Any]) -> dict[str, Any]:
    return {"users": list(found)}


def ticket(ticket_id: int = TICKET_ID, *, external_id: str | None = "c0ffee00c0ffee00c0ffee00c0ffee00",
           requester_id: int = REQUESTER_ID) -> dict[str, Any]:
    found = fixture("ticket_create")["ticket"]
    found.update(id=ticket_id, external_id=external_id, requester_id=requester_id)
    return found


def ticket_event(event_id: int, ticket_id: int, timestamp: int, children: list[dict[str, Any]],
                 channel: str = "web") -> dict[str, Any]:
    """A ticket event of the export: the audit's fields, its changes and comments in ``child_events``."""
    created = iso(datetime.fromtimestamp(timestamp, UTC))
    return {"id": event_id, "ticket_id": ticket_id, "timestamp": timestamp, "created_at": created,
            "updater_id": children[0].get("author_id") if children else None,
            "via": {"channel": channel, "source": {"from": {}, "rel": None, "to": {}}},
            "system": {"client": "Mozilla/5.0", "location": "Paris"}, "metadata": {"custom": {}, "system": {}},
            "event_type": "Audit", "merged_ticket_ids": [], "child_events": children}


def comment_event(comment_id: int, author_id: int, body: str, *, public: bool = True, channel: str = "web",
                  audit_id: int = 91048994468) -> dict[str, Any]:
    """A comment child event, as the ``comment_events`` sideload lists it."""
    return {"id": comment_id, "via": {"channel": channel, "source": {"from": {}, "to": {}, "rel": None}},
            "via_reference_id": None, "type": "Comment", "author_id": author_id, "body": body,
            "html_body": f'<div class="zd-comment"><p dir="auto">{body}</p></div>', "public": public,
            "attachments": [], "audit_id": audit_id, "created_at": "2026-11-29T10:15:18Z", "event_type": "Comment"}


def events_page(events: list[dict[str, Any]], end_time: int, *, end_of_stream: bool = True) -> dict[str, Any]:
    return {"ticket_events": events, "count": len(events), "end_time": end_time, "end_of_stream": end_of_stream,
            "next_page": f"{API}/incremental/ticket_events.json?start_time={end_time}"}
