"""The two-way half of the fake Zendesk (mixed into ``tests.fake_zendesk.FakeZendesk``).

Endpoints, with bodies shaped like Zendesk's documented ones: webhooks (create, list with ``filter[name_contains]``
and cursor pagination, ``PATCH``, ``signing_secret``), triggers (create, ``search``, list, update), a ticket's
comments (cursor pagination, ``sort``), users (``{id}``, ``show_many``), tickets ``show_many``, and the time-based
incremental ticket-event export with the ``comment_events`` sideload (unlike Zendesk, the fake does not hold back the
last minute).

``add_agent()`` makes an agent; ``agent_comment()`` adds a comment by a user as Zendesk's web interface would, then
runs the triggers the way Zendesk does: every active trigger whose conditions hold (``comment_is_public``, ``role``,
``current_via_id``) notifies its webhook with its JSON body, placeholders filled in, signed like Zendesk signs
(``X-Zendesk-Webhook-Signature`` = base64(HMAC-SHA256(secret, timestamp + body)), an ISO 8601
``X-Zendesk-Webhook-Signature-Timestamp``, an ``X-Zendesk-Webhook-Invocation-Id``). The requests are handed to the
``post`` callable given (a test client, say) or sent with ``requests``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

Answer = tuple[int, dict[str, Any] | str, dict[str, str]]
API_USER_ID = 1  # the user /users/me answers
_PLACEHOLDER = re.compile(r"{{\s*([\w.]+)\s*}}")
_NOT_FOUND: Answer = (404, {"error": "RecordNotFound", "description": "Not found"}, {})


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


@dataclass
class Invocation:
    """One webhook request the fake sent (or handed to ``post``), and the status it got back."""

    url: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None


class RepliesApi:
    """Needs the host's ``state``, ``lock``, ``url``, ``_ids`` and ``_record``; call ``_init_replies`` first."""

    state: Any
    lock: Any
    url: str
    _ids: Iterator[int]
    _record: Callable[..., None]

    def _init_replies(self) -> None:
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.webhook_secrets: dict[str, str] = {}
        self.triggers: dict[int, dict[str, Any]] = {}
        self.invocations: list[Invocation] = []

    # -- what tests do -----------------------------------------------------------------------------------------------
    def add_agent(self, name: str = "Ann Agent", email: str = "ann@example.com", role: str = "agent") -> int:
        with self.lock:
            user_id = next(self._ids)
            self.state.users[user_id] = {
                "id": user_id, "url": f"{self.url}/api/v2/users/{user_id}.json", "name": name, "email": email,
                "role": role, "active": True, "verified": True, "shared_phone_number": False, "phone": None,
                "external_id": None, "tags": [], "created_at": _iso(datetime.now(UTC)),
                "updated_at": _iso(datetime.now(UTC))}
            return user_id

    def agent_comment(self, ticket_id: int, author_id: int, body: str, *, public: bool = True, via: str = "web",
                      attachments: list[dict[str, Any]] | None = None,
                      post: Callable[[str, dict[str, str], bytes], int] | None = None,
                      ) -> tuple[dict[str, Any], list[Invocation]]:
        """Add a comment as ``author_id`` through ``via``; run the triggers; deliver their webhook requests."""
        with self.lock:
            ticket = self.state.tickets[ticket_id]
            now = datetime.now(UTC)
            comment = {"id": next(self._ids), "type": "Comment", "author_id": author_id, "body": body,
                       "html_body": f"<p>{body}</p>", "plain_body": body, "public": public,
                       "attachments": list(attachments or []), "audit_id": None, "created_at": _iso(now),
                       "via": {"channel": via, "source": {"from": {}, "to": {}, "rel": None}}, "metadata": {}}
            self.state.comments.setdefault(ticket_id, []).append(comment)
            audit = {"id": next(self._ids), "ticket_id": ticket_id, "created_at": _iso(now), "author_id": author_id,
                     "via": {"channel": via}, "events": [comment], "metadata": {"custom": {}, "system": {}}}
            comment["audit_id"] = audit["id"]
            self.state.audits.setdefault(ticket_id, []).append(audit)
            ticket["updated_at"] = _iso(now)
            role = self._role(author_id)
            pending = [self._invocation(trigger, ticket, comment, author_id) for trigger in self.triggers.values()
                       if self._fires(trigger, comment, role, via)]
        for invocation in pending:
            if invocation is None:
                continue
            invocation.status = (post or _http_post)(invocation.url, invocation.headers, invocation.body)
            with self.lock:
                self.invocations.append(invocation)
        return comment, [i for i in pending if i is not None]

    def _role(self, user_id: int) -> str | None:
        if user_id == API_USER_ID:
            return "admin"
        return (self.state.users.get(user_id) or {}).get("role")

    @staticmethod
    def _fires(trigger: dict[str, Any], comment: dict[str, Any], role: str | None, via: str) -> bool:
        if not trigger.get("active", True):
            return False
        facts = {"comment_is_public": "true" if comment["public"] else "false",
                 "role": "agent" if role in ("agent", "admin") else "end_user",
                 "current_via_id": "5" if via == "api" else "0"}
        for condition in (trigger.get("conditions") or {}).get("all") or []:
            actual = facts.get(condition.get("field"))
            same = actual == str(condition.get("value"))
            if actual is None or same != (condition.get("operator") == "is"):
                return False
        return True

    def _invocation(self, trigger: dict[str, Any], ticket: dict[str, Any], comment: dict[str, Any],
                    author_id: int) -> Invocation | None:
        action = next((a for a in trigger.get("actions") or [] if a.get("field") == "notification_webhook"), None)
        hook = self.webhooks.get(str(action["value"][0])) if action else None
        if action is None or hook is None or hook["status"] != "active":
            return None
        values = {"ticket.id": ticket["id"], "ticket.latest_comment.id": comment["id"],
                  "ticket.external_id": ticket.get("external_id") or "", "current_user.id": author_id}
        body = _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), "")), str(action["value"][1])).encode()
        timestamp = _iso(datetime.now(UTC))
        digest = hmac.new(self.webhook_secrets[hook["id"]].encode(), timestamp.encode() + body, hashlib.sha256)
        headers = {"Content-Type": "application/json", "X-Zendesk-Webhook-Id": hook["id"],
                   "X-Zendesk-Webhook-Invocation-Id": uuid.uuid4().hex[:26].upper(),
                   "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
                   "X-Zendesk-Webhook-Signature": base64.b64encode(digest.digest()).decode()}
        return Invocation(hook["endpoint"], headers, body)

    # -- the API -----------------------------------------------------------------------------------------------------
    def _route_replies(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]
                       ) -> Answer | None:
        """The answer for a two-way endpoint; None for every other path."""
        one = {key: values[0] for key, values in query.items()}
        if method == "GET" and path == "/api/v2/users/show_many":
            ids = [int(i) for i in one.get("ids", "").split(",") if i.isdigit()]
            return 200, {"users": [dict(self.state.users[i]) for i in ids if i in self.state.users]}, {}
        if method == "GET" and path == "/api/v2/tickets/show_many":
            ids = [int(i) for i in one.get("ids", "").split(",") if i.isdigit()]
            return 200, {"tickets": [dict(self.state.tickets[i]) for i in ids if i in self.state.tickets]}, {}
        if method == "GET" and (user := re.fullmatch(r"/api/v2/users/(\d+)", path)):
            found = self.state.users.get(int(user.group(1)))
            return (200, {"user": dict(found)}, {}) if found else _NOT_FOUND
        if method == "GET" and (comments := re.fullmatch(r"/api/v2/tickets/(\d+)/comments", path)):
            return self._comments(int(comments.group(1)), one)
        if method == "GET" and path == "/api/v2/incremental/ticket_events":
            return self._ticket_events(one)
        if path == "/api/v2/webhooks" and method in ("GET", "POST"):
            return self._create_webhook(body) if method == "POST" else self._list_webhooks(one)
        if hook := re.fullmatch(r"/api/v2/webhooks/([0-9A-Z]+)(/signing_secret)?", path):
            found = self.webhooks.get(hook.group(1))
            if found is None:
                return _NOT_FOUND
            if method == "GET" and hook.group(2):
                return 200, {"signing_secret": {"algorithm": "SHA256",
                                                "secret": self.webhook_secrets[found["id"]]}}, {}
            if method == "PATCH" and not hook.group(2):
                found.update({k: v for k, v in (body.get("webhook") or {}).items() if k in ("endpoint", "status")})
                self._record("PATCH", path, 204, body)
                return 204, "", {}
        if path in ("/api/v2/triggers", "/api/v2/triggers/search") and method == "GET":
            wanted = one.get("query", "").lower()
            found_triggers = [dict(t) for t in self.triggers.values() if wanted in t["title"].lower()]
            return 200, {"triggers": found_triggers, "count": len(found_triggers), "next_page": None,
                         "previous_page": None}, {}
        if path == "/api/v2/triggers" and method == "POST":
            return self._save_trigger(None, body)
        if method == "PUT" and (trigger := re.fullmatch(r"/api/v2/triggers/(\d+)", path)):
            return self._save_trigger(int(trigger.group(1)), body)
        return None

    def _create_webhook(self, body: dict[str, Any]) -> Answer:
        given = body.get("webhook") or {}
        missing = [k for k in ("name", "endpoint", "http_method", "request_format", "status") if not given.get(k)]
        if missing:
            return 400, {"errors": [{"code": "InvalidInput", "title": f"{missing[0]} is required"}]}, {}
        hook_id = uuid.uuid4().hex[:26].upper()
        now = _iso(datetime.now(UTC))
        hook = {**{k: given[k] for k in ("name", "endpoint", "http_method", "request_format", "status")},
                "id": hook_id, "subscriptions": list(given.get("subscriptions") or []),
                "description": given.get("description"), "created_at": now, "created_by": str(API_USER_ID),
                "updated_at": now}
        self.webhooks[hook_id] = hook
        self.webhook_secrets[hook_id] = secrets.token_urlsafe(32)
        self._record("POST", "/api/v2/webhooks", 201, body)
        return 201, {"webhook": dict(hook)}, {}

    def _list_webhooks(self, query: dict[str, str]) -> Answer:
        wanted = query.get("filter[name_contains]", "").lower()
        hooks = [dict(h) for h in self.webhooks.values() if wanted in h["name"].lower()]
        return self._cursor_page(hooks, query, "webhooks", "/api/v2/webhooks")

    def _cursor_page(self, items: list[dict[str, Any]], query: dict[str, str], key: str, path: str) -> Answer:
        size = min(int(query.get("page[size]", "100")), 100)
        start = int(query.get("page[after]", "0"))
        page = items[start:start + size]
        more = start + size < len(items)
        return 200, {key: page, "meta": {"has_more": more, "after_cursor": str(start + size) if more else None,
                                         "before_cursor": str(start) if start else None},
                     "links": {"next": f"{self.url}{path}?page[size]={size}&page[after]={start + size}" if more
                               else None, "prev": None}}, {}

    def _save_trigger(self, trigger_id: int | None, body: dict[str, Any]) -> Answer:
        given = body.get("trigger") or {}
        if trigger_id is not None and trigger_id not in self.triggers:
            return _NOT_FOUND
        if not given.get("title") or not given.get("actions") or not given.get("conditions"):
            details = {"base": [{"description": "Title, conditions and actions are required"}]}
            return 422, {"error": "RecordInvalid", "description": "Record validation errors",
                         "details": details}, {}
        trigger_id = trigger_id or next(self._ids)
        now = _iso(datetime.now(UTC))
        trigger = {"id": trigger_id, "url": f"{self.url}/api/v2/triggers/{trigger_id}.json",
                   "title": given["title"], "raw_title": given["title"], "active": given.get("active", True),
                   "description": given.get("description"), "conditions": given["conditions"],
                   "actions": given["actions"], "position": len(self.triggers) + 1, "default": False,
                   "created_at": self.triggers.get(trigger_id, {}).get("created_at", now), "updated_at": now}
        created = trigger_id not in self.triggers
        self.triggers[trigger_id] = trigger
        path = "/api/v2/triggers" if created else f"/api/v2/triggers/{trigger_id}"
        self._record("POST" if created else "PUT", path, 201 if created else 200, body)
        return (201 if created else 200), {"trigger": dict(trigger)}, {}

    def _comments(self, ticket_id: int, query: dict[str, str]) -> Answer:
        if ticket_id not in self.state.tickets:
            return _NOT_FOUND
        comments = [dict(c) for c in self.state.comments.get(ticket_id, [])]
        comments = [{k: v for k, v in c.items() if k != "metadata"} | {"metadata": {}} for c in comments]
        if query.get("sort") == "-created_at":
            comments.reverse()
        return self._cursor_page(comments, query, "comments", f"/api/v2/tickets/{ticket_id}/comments")

    def _ticket_events(self, query: dict[str, str]) -> Answer:
        """Time-based export: every audit at or after ``start_time`` as a ticket event, 1,000 a page."""
        if not query.get("start_time", "").isdigit():
            return 400, {"error": "InvalidValue", "description": "start_time is required"}, {}
        start = int(query["start_time"])
        comments = query.get("include") == "comment_events"
        events = []
        for ticket_id, audits in self.state.audits.items():
            for audit in audits:
                timestamp = _epoch(audit["created_at"])
                if timestamp >= start:
                    events.append({"id": audit["id"], "ticket_id": ticket_id, "timestamp": timestamp,
                                   "created_at": audit["created_at"], "updater_id": audit["author_id"],
                                   "via": audit["via"], "system": {}, "metadata": audit["metadata"],
                                   "event_type": "Audit", "merged_ticket_ids": [],
                                   "child_events": [self._child(e, audit, comments) for e in audit["events"]]})
        events.sort(key=lambda e: (e["timestamp"], e["id"]))
        page = events[:1000]
        end = page[-1]["timestamp"] if page else start
        return 200, {"ticket_events": page, "count": len(page), "end_time": end, "end_of_stream": len(events) <= 1000,
                     "next_page": f"{self.url}/api/v2/incremental/ticket_events.json?start_time={end}"}, {}

    @staticmethod
    def _child(event: dict[str, Any], audit: dict[str, Any], comments: bool) -> dict[str, Any]:
        if event.get("type") != "Comment":
            return {k: v for k, v in event.items() if k != "type"} | {"event_type": event.get("type"),
                                                                      "via": audit["via"]}
        if not comments:
            return {"id": event["id"], "event_type": "Comment", "comment_present": True,
                    "comment_public": event.get("public", True)}
        return {"id": event["id"], "via": event.get("via") or audit["via"], "via_reference_id": None,
                "type": "Comment", "author_id": event["author_id"], "body": event.get("body", ""),
                "html_body": event.get("html_body", ""), "public": event.get("public", True),
                "attachments": event.get("attachments", []), "audit_id": audit["id"],
                "created_at": event.get("created_at") or audit["created_at"], "event_type": "Comment"}


def _http_post(url: str, headers: dict[str, str], body: bytes) -> int:
    return requests.post(url, data=body, headers=headers, timeout=10).status_code
