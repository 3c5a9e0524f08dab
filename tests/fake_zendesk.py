"""A small local stand-in for the Zendesk Support API, for tests that run the gateway as real processes.

It serves the endpoints the ``zendesk`` connector uses, with bodies shaped like Zendesk's documented ones
(https://developer.zendesk.com/api-reference/ticketing/): users ``create_or_update`` (matched on external_id, case
insensitive, or email; 201 when created, 200 when found), ticket creation honouring ``Idempotency-Key``
(``x-idempotency-lookup: miss|hit``, 400 ``IdempotentRequestError`` for a different body), ticket updates
(422 on a closed ticket, 404 on an unknown one), tickets by ``external_id`` and audits with cursor pagination,
each audit carrying the write's ``metadata`` as ``metadata.custom``.

Every write is recorded in ``writes``; ``delay_seconds`` slows each request down (applied after a write has taken
effect and before the answer, the harshest case for a client that dies mid-request). ``hold_next_comment()`` makes
the next comment write take effect and then withholds the answer until ``release`` is set: a client killed then
has written without knowing it.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MARKER = "gateway_message_id"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Write:
    """One write request as the fake saw it."""

    method: str
    path: str
    status: int
    body: dict[str, Any]
    idempotency_key: str | None = None
    lookup: str | None = None  # x-idempotency-lookup of a ticket creation: miss or hit


@dataclass
class FakeState:
    """Everything the fake holds; read it under ``lock``."""

    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    tickets: dict[int, dict[str, Any]] = field(default_factory=dict)
    audits: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    requests: int = 0


class FakeZendesk:
    """The fake server: ``start()`` it on a free port, point ``base_url`` at ``url``, ``stop()`` it afterwards."""

    def __init__(self, *, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds
        self.state = FakeState()
        self.lock = threading.Lock()
        self._ids = itertools.count(1001)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-zendesk", daemon=True)
        self.held = threading.Event()  # set once a held comment has been written
        self.release = threading.Event()
        self._hold_next = False
        self.held_write: Write | None = None
        self._local = threading.local()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeZendesk:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeZendesk:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- what tests read -----------------------------------------------------------------------------------------
    def comment_counts(self) -> Counter[str]:
        """How many comments were written per gateway message id (the metadata marker of the write)."""
        with self.lock:
            return Counter(c["metadata"].get(MARKER) for cs in self.state.comments.values() for c in cs)

    def comment_count(self) -> int:
        with self.lock:
            return sum(len(cs) for cs in self.state.comments.values())

    def write_counts(self) -> Counter[str]:
        """Writes per kind: ``user``, ``ticket`` (created), ``ticket_hit`` (idempotent replay), ``comment``."""
        counts: Counter[str] = Counter()
        with self.lock:
            for write in self.state.writes:
                if write.path.endswith("/users/create_or_update"):
                    counts["user"] += 1
                elif write.method == "POST" and write.path == "/api/v2/tickets":
                    counts["ticket_hit" if write.lookup == "hit" else "ticket"] += 1
                elif write.method == "PUT":
                    counts["comment" if write.status == 200 else f"put_{write.status}"] += 1
        return counts

    def tickets(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(t) for t in self.state.tickets.values()]

    def users(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(u) for u in self.state.users.values()]

    def ticket_comments(self, ticket_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.state.comments.get(ticket_id, []))

    def hold_next_comment(self) -> None:
        """Write the next comment added by PUT, then keep its answer back until ``release`` is set."""
        with self.lock:
            self._hold_next = True

    def close_ticket(self, ticket_id: int) -> None:
        with self.lock:
            self.state.tickets[ticket_id]["status"] = "closed"

    # -- the API -------------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            self.state.requests += 1
            if method == "GET" and path == "/api/v2/users/me":
                return 200, {"user": {"id": 1, "name": "Test Agent", "role": "admin", "email": "agent@example.com"}}, {}
            if method == "POST" and path == "/api/v2/users/create_or_update":
                return self._user(body)
            if method == "POST" and path == "/api/v2/tickets":
                return self._create_ticket(body, headers.get("idempotency-key"))
            if method == "GET" and path == "/api/v2/tickets":
                external_id = (query.get("external_id") or [""])[0]
                found = [dict(t) for t in self.state.tickets.values() if t["external_id"] == external_id]
                return 200, {"tickets": found, "count": len(found), "next_page": None, "previous_page": None}, {}
            match = re.fullmatch(r"/api/v2/tickets/(\d+)(/audits)?", path)
            if match and method == "PUT" and not match.group(2):
                return self._update_ticket(int(match.group(1)), body)
            if match and method == "GET" and match.group(2):
                return self._audits(int(match.group(1)), query)
            return 404, {"error": "InvalidEndpoint", "description": "Not found"}, {}

    def _record(self, method: str, path: str, status: int, body: dict[str, Any], **extra: Any) -> None:
        self.state.writes.append(Write(method, path, status, body, **extra))

    def _user(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        given = body.get("user") or {}
        external_id = str(given.get("external_id") or "")
        email = given.get("email")
        user = next((u for u in self.state.users.values()
                     if (external_id and str(u.get("external_id") or "").lower() == external_id.lower())
                     or (email and u.get("email") == email)), None)
        status = 200
        if user is None:
            status = 201
            user_id = next(self._ids)
            user = {"id": user_id, "url": f"{self.url}/api/v2/users/{user_id}.json", "role": "end-user",
                    "role_type": None, "active": True, "verified": False, "shared_phone_number": False,
                    "created_at": _now(), "email": None, "phone": None, "external_id": None, "tags": []}
            self.state.users[user_id] = user
        user.update({k: v for k, v in given.items() if k in ("name", "email", "phone", "external_id")})
        user["updated_at"] = _now()
        self._record("POST", "/api/v2/users/create_or_update", status, body)
        return status, {"user": dict(user)}, {"Location": f"/api/v2/users/{user['id']}.json"}

    def _audit(self, ticket_id: int, author_id: int, events: list[dict[str, Any]],
               metadata: dict[str, Any] | None) -> dict[str, Any]:
        audit = {"id": next(self._ids), "ticket_id": ticket_id, "created_at": _now(), "author_id": author_id,
                 "via": {"channel": "api"}, "events": events,
                 "metadata": {"custom": dict(metadata or {}), "system": {"client": "channel-gateway tests"}}}
        self.state.audits.setdefault(ticket_id, []).append(audit)
        return audit

    def _comment(self, ticket_id: int, comment: dict[str, Any], metadata: dict[str, Any] | None,
                 requester_id: int) -> dict[str, Any]:
        event = {"id": next(self._ids), "type": "Comment", "body": comment.get("body", ""),
                 "html_body": f"<p>{comment.get('body', '')}</p>", "public": comment.get("public", True),
                 "author_id": comment.get("author_id", requester_id), "attachments": []}
        self.state.comments.setdefault(ticket_id, []).append({**event, "metadata": dict(metadata or {})})
        return event

    def _create_ticket(self, body: dict[str, Any], key: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        given = body.get("ticket") or {}
        canonical = json.dumps(body, sort_keys=True)
        if key is not None and key in self.state.idempotency:
            stored_body, status, answer = self.state.idempotency[key]
            if stored_body != canonical:
                self._record("POST", "/api/v2/tickets", 400, body, idempotency_key=key)
                return 400, {"error": "IdempotentRequestError",
                             "description": "Request parameters don't match the given idempotency key"}, {}
            self._record("POST", "/api/v2/tickets", status, body, idempotency_key=key, lookup="hit")
            return status, answer, {"x-idempotency-lookup": "hit"}
        comment = given.get("comment")
        if not isinstance(comment, dict) or not comment.get("body"):
            details = {"comment": [{"description": "Comment: cannot be blank", "error": "BlankValue"}]}
            self._record("POST", "/api/v2/tickets", 422, body, idempotency_key=key)
            return 422, {"error": "RecordInvalid", "description": "Record validation errors", "details": details}, {}
        ticket_id = next(self._ids)
        requester_id = int(given.get("requester_id") or 1)
        ticket = {
            "id": ticket_id, "url": f"{self.url}/api/v2/tickets/{ticket_id}.json", "external_id":
            given.get("external_id"), "subject": given.get("subject"), "raw_subject": given.get("subject"),
            "description": comment["body"], "status": given.get("status") or "new", "priority":
            given.get("priority"), "type": given.get("type"), "tags": list(given.get("tags") or []),
            "requester_id": requester_id, "submitter_id": requester_id, "assignee_id": None,
            "custom_fields": list(given.get("custom_fields") or []), "via": {"channel": "api"},
            "via_followup_source_id": given.get("via_followup_source_id"), "created_at": _now(),
            "updated_at": _now(), "from_messaging_channel": False,
        }
        self.state.tickets[ticket_id] = ticket
        events = [{"id": next(self._ids), "type": "Create", "field_name": "subject", "value": ticket["subject"]},
                  self._comment(ticket_id, comment, given.get("metadata"), requester_id),
                  {"id": next(self._ids), "type": "Create", "field_name": "status", "value": ticket["status"]}]
        audit = self._audit(ticket_id, requester_id, events, given.get("metadata"))
        answer = {"ticket": dict(ticket), "audit": audit}
        if key is not None:
            self.state.idempotency[key] = (canonical, 201, answer)
        self._record("POST", "/api/v2/tickets", 201, body, idempotency_key=key, lookup="miss" if key else None)
        return 201, answer, {"x-idempotency-lookup": "miss"} if key else {}

    def _update_ticket(self, ticket_id: int, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        ticket = self.state.tickets.get(ticket_id)
        path = f"/api/v2/tickets/{ticket_id}"
        if ticket is None:
            self._record("PUT", path, 404, body)
            return 404, {"error": "RecordNotFound", "description": "Not found"}, {}
        if ticket["status"] == "closed":
            self._record("PUT", path, 422, body)
            details = {"status": [{"description": "Status: closed prevents ticket update"}]}
            return 422, {"error": "RecordInvalid", "description": "Record validation errors", "details": details}, {}
        given = body.get("ticket") or {}
        events = []
        if isinstance(given.get("comment"), dict):
            events.append(self._comment(ticket_id, given["comment"], given.get("metadata"), ticket["requester_id"]))
        if ticket["status"] == "new":
            events.append({"id": next(self._ids), "type": "Change", "field_name": "status", "value": "open",
                           "previous_value": "new"})
            ticket["status"] = "open"
        ticket["updated_at"] = _now()
        audit = self._audit(ticket_id, int((given.get("comment") or {}).get("author_id") or 1), events,
                            given.get("metadata"))
        self._record("PUT", path, 200, body)
        if self._hold_next and events:
            self._hold_next = False
            self.held_write = self.state.writes[-1]
            self._local.hold = True
        return 200, {"ticket": dict(ticket), "audit": audit}, {}

    def _audits(self, ticket_id: int, query: dict[str, list[str]]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if ticket_id not in self.state.tickets:
            return 404, {"error": "RecordNotFound", "description": "Not found"}, {}
        audits = self.state.audits.get(ticket_id, [])
        size = min(int((query.get("page[size]") or ["100"])[0]), 100)
        start = int((query.get("page[after]") or ["0"])[0])
        page = audits[start:start + size]
        has_more = start + size < len(audits)
        base = f"{self.url}/api/v2/tickets/{ticket_id}/audits?page[size]={size}"
        return 200, {
            "audits": page,
            "meta": {"has_more": has_more, "after_cursor": str(start + size) if has_more else None,
                     "before_cursor": str(start) if start else None},
            "links": {"next": f"{base}&page[after]={start + size}" if has_more else None,
                      "prev": f"{base}&page[before]={start}" if start else None},
        }, {}


def _handler_for(fake: FakeZendesk) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not self._authorized():
                self._answer(401, {"error": "Couldn't authenticate you"}, {})
                return
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                self._answer(400, {"error": "InvalidJSON", "description": "body is not JSON"}, {})
                return
            parts = urlsplit(self.path)
            path = parts.path.removesuffix(".json")
            headers = {key.lower(): value for key, value in self.headers.items()}
            fake._local.hold = False
            status, answer, extra = fake.handle(self.command, path, parse_qs(parts.query), headers, body)
            if fake._local.hold:
                fake.held.set()
                fake.release.wait(60)
            if fake.delay_seconds:
                time.sleep(fake.delay_seconds)
            self._answer(status, answer, extra)

        def _authorized(self) -> bool:
            value = self.headers.get("Authorization", "")
            if value.startswith("Bearer "):
                return len(value) > len("Bearer ")
            if not value.startswith("Basic "):
                return False
            user, _, token = base64.b64decode(value[6:]).decode().partition(":")
            return user.endswith("/token") and bool(token)

        def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (a killed worker): the write itself has already happened

        do_GET = do_POST = do_PUT = _serve

    return Handler
