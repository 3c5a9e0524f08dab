"""A small local stand-in for the Zendesk Support API, for tests and benchmarks that run the gateway for real.

It serves the endpoints the ``zendesk`` connector uses, with bodies shaped like Zendesk's documented ones
(https://developer.zendesk.com/api-reference/ticketing/): users ``create_or_update`` (matched on external_id, case
insensitive, or email; 201 when created, 200 when found), ticket creation honouring ``Idempotency-Key``
(``x-idempotency-lookup: miss|hit``, 400 ``IdempotentRequestError`` for a different body), ticket updates
(422 on a closed ticket, 404 on an unknown one, 409 when ``safe_update`` carries a stale ``updated_stamp``;
``tags`` replaces the ticket's list, as Update Ticket documents; ``additional_tags``/``remove_tags``, which Zendesk
documents for ``update_many`` only, are refused with 400 here: the fake's own strictness, so a client sending
them to a single ticket is caught),
tickets by ``external_id``, audits with cursor pagination (each audit carrying the write's ``metadata`` as
``metadata.custom``), uploads, and the incremental user export.

Batch endpoints: ``users/create_or_update_many``, ``tickets/create_many`` and ``tickets/update_many`` answer a
``job_status`` (``JobStatusObject``: id, job_type, message, progress, results, status, total, url) that is
``queued`` until ``job_delay_seconds`` have passed; the job then takes effect and reads ``completed``. Results are
the documented ones: creations carry ``{id, index}`` (``CreateResourceResult``), updates
``{id, action, success, status}`` (``UpdateResourceResult``), and an update the job could not make (a closed or
unknown ticket, a stale stamp) a ``FailedResult`` ``{id, action, error, details, success: false}``. Zendesk
documents the shape of a failed result but not its error codes; the codes used here are the fake's own. Job statuses
are read with ``job_statuses/show_many?ids=`` or ``job_statuses/{id}``. ``bulk_users=False`` refuses
``create_or_update_many`` with 403, as Zendesk does until the account owner asks for bulk user imports.

``requests_per_minute`` holds every request (all endpoints, 429s excluded) to that many in any sliding 60 s
window; a request over it gets 429 with ``Retry-After`` (whole seconds until the window has room) and a text body,
as Zendesk's rate-limit guide shows. ``throttled`` counts the 429s served.

``outage(seconds)`` answers every request 503 (a plain-text body, no ``Retry-After``) for that long, as Zendesk does
during an incident; ``unavailable`` counts those answers.

Every write is recorded in ``writes``; ``delay_seconds`` slows each request down (applied after a write has taken
effect and before the answer, the harshest case for a client that dies mid-request). ``hold_next_comment()`` makes
the next comment write take effect and then withholds the answer until ``release`` is set: a client killed then
has written without knowing it. ``lose_next_answer(method, path)`` makes the next such request take effect and then
closes its connection without an answer (the client sees ``RemoteDisconnected``); ``lost`` lists them.

A comment's marker (``metadata.gateway_message_id``) is the comma-joined list of the gateway message ids it carries
(several pending messages of a conversation are written as one comment); ``comment_counts()`` and
``ticket_markers()`` read it message by message.

Two-way endpoints (webhooks, triggers, comments, users, the ticket-event export) and agents who reply are in
``tests.fake_zendesk_replies``.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_zendesk_replies import API_USER_ID, RepliesApi
from tests.local_server import LocalServer

MARKER = "gateway_message_id"
Answer = tuple[int, dict[str, Any] | str, dict[str, str]]
_ID = re.compile(r"/(\d+|[0-9a-f]{32})(?=/|$)")
FORBIDDEN = "You do not have access to this page. Please contact the account owner of this help desk for further help."


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def marker_ids(metadata: dict[str, Any] | None) -> list[str]:
    """The gateway message ids a write's metadata names (a comma-joined marker holds several), in order."""
    value = (metadata or {}).get(MARKER)
    return [part for part in str(value).split(",") if part] if value else []


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
class Job:
    """A queued batch job: what it was asked to do, and its results once it has run."""

    id: str
    job_type: str
    kind: str  # users | create | update
    items: list[dict[str, Any]]
    due: float
    results: list[dict[str, Any]] | None = None


@dataclass
class FakeState:
    """Everything the fake holds; read it under ``lock``."""

    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    tickets: dict[int, dict[str, Any]] = field(default_factory=dict)
    audits: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    requests: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    unavailable: int = 0
    outage_until: float = float("-inf")


class FakeZendesk(RepliesApi, LocalServer):
    """The fake server: ``start()`` it on a free port, point ``base_url`` at ``url``, ``stop()`` it afterwards."""

    def __init__(self, *, delay_seconds: float = 0.0, job_delay_seconds: float = 0.2,
                 requests_per_minute: int | None = None, bulk_users: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.delay_seconds = delay_seconds
        self.job_delay_seconds = job_delay_seconds
        self.requests_per_minute = requests_per_minute
        self.bulk_users = bulk_users
        self.clock = clock
        self.state = FakeState()
        self.lock = threading.Lock()
        self._ids = itertools.count(1001)
        self._window: deque[float] = deque()
        self.serve(_handler_for(self), "fake-zendesk")
        self.held = threading.Event()  # set once a held comment has been written
        self._hold_next = False
        self.held_write: Write | None = None
        self._to_lose: list[tuple[str, str, int]] = []
        self.lost: list[str] = []
        self._local = threading.local()
        self._init_replies()

    def close(self) -> None:
        """Free the port of a fake that is never started: one whose ``handle`` answers in process."""
        self._server.server_close()

    # -- what tests read -----------------------------------------------------------------------------------------
    def comment_counts(self) -> Counter[str]:
        """How many comments carry each gateway message id (a comma-joined marker counts for each of its ids)."""
        with self.lock:
            self._run_due_jobs()
            return Counter(mid for cs in self.state.comments.values() for c in cs
                           for mid in marker_ids(c["metadata"]))

    def comment_count(self) -> int:
        """Comments written (a coalesced comment counts once)."""
        with self.lock:
            self._run_due_jobs()
            return sum(len(cs) for cs in self.state.comments.values())

    def message_count(self) -> int:
        """Gateway messages written, counting every id of every marker (a message written twice counts twice)."""
        return sum(self.comment_counts().values())

    def ticket_markers(self, ticket_id: int) -> list[str]:
        """The gateway message ids on a ticket's comments, in the order they were written."""
        return [mid for c in self.ticket_comments(ticket_id) for mid in marker_ids(c["metadata"])]

    def write_counts(self) -> Counter[str]:
        """Writes per kind: ``user``, ``ticket`` (created), ``ticket_hit`` (idempotent replay), ``comment``, and for
        the batch endpoints ``users_many``, ``tickets_many``, ``update_many``."""
        counts: Counter[str] = Counter()
        with self.lock:
            for write in self.state.writes:
                if write.path.endswith("/users/create_or_update"):
                    counts["user"] += 1
                elif write.path.endswith("/users/create_or_update_many"):
                    counts["users_many"] += 1
                elif write.path.endswith("/tickets/create_many"):
                    counts["tickets_many"] += 1
                elif write.path.endswith("/tickets/update_many"):
                    counts["update_many"] += 1
                elif write.method == "POST" and write.path == "/api/v2/tickets":
                    counts["ticket_hit" if write.lookup == "hit" else "ticket"] += 1
                elif write.method == "PUT":
                    counts["comment" if write.status == 200 else f"put_{write.status}"] += 1
        return counts

    def request_count(self) -> int:
        """Requests answered, 429s included."""
        with self.lock:
            return self.state.requests

    def endpoint_counts(self) -> Counter[str]:
        """Requests per ``METHOD path`` (ids replaced by ``{id}``), 429s included."""
        with self.lock:
            return Counter(self.state.by_endpoint)

    @property
    def throttled(self) -> int:
        """429 answers served."""
        with self.lock:
            return self.state.throttled

    @property
    def unavailable(self) -> int:
        """503 answers served during outages."""
        with self.lock:
            return self.state.unavailable

    def tickets(self) -> list[dict[str, Any]]:
        with self.lock:
            self._run_due_jobs()
            return [dict(t) for t in self.state.tickets.values()]

    def users(self) -> list[dict[str, Any]]:
        with self.lock:
            self._run_due_jobs()
            return [dict(u) for u in self.state.users.values()]

    def ticket_comments(self, ticket_id: int) -> list[dict[str, Any]]:
        with self.lock:
            self._run_due_jobs()
            return list(self.state.comments.get(ticket_id, []))

    def hold_next_comment(self) -> None:
        """Write the next comment added by PUT, then keep its answer back until ``release`` is set."""
        with self.lock:
            self._hold_next = True

    def outage(self, seconds: float) -> None:
        """Answer every request 503 for ``seconds`` from now (by the fake's clock)."""
        with self.lock:
            self.state.outage_until = self.clock() + seconds

    def lose_next_answer(self, method: str, path: str, *, after: int = 0) -> None:
        """Carry out the next ``method`` request to ``path`` (``/api/v2/...``) but ``after`` more, then close the
        connection unanswered."""
        with self.lock:
            self._to_lose.append((method, path, after))

    def user_by_external_id(self, external_id: str) -> dict[str, Any]:
        with self.lock:
            (user,) = [u for u in self.state.users.values()
                       if str(u.get("external_id") or "").lower() == external_id.lower()]
            return dict(user)

    def rename_user(self, external_id: str, name: str) -> None:
        """An agent edits the user's name in Zendesk."""
        with self.lock:
            for user in self.state.users.values():
                if str(user.get("external_id") or "").lower() == external_id.lower():
                    user.update(name=name, updated_at=_now())

    def close_ticket(self, ticket_id: int) -> None:
        with self.lock:
            self.state.tickets[ticket_id]["status"] = "closed"

    # -- the API -------------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: dict[str, Any], raw: bytes = b"") -> Answer:
        with self.lock:
            self.state.requests += 1
            self.state.by_endpoint[method + " " + _ID.sub("/{id}", path)] += 1
            throttled = self._throttle()
            if throttled is not None:
                return throttled
            if self.clock() < self.state.outage_until:
                self.state.unavailable += 1
                return 503, "Service Unavailable", {"Content-Type": "text/plain; charset=utf-8"}
            self._run_due_jobs()
            answer = self._route(method, path, query, headers, body, raw)
            for index, (lose_method, lose_path, after) in enumerate(self._to_lose):
                if (lose_method, lose_path) == (method, path):
                    if after:
                        self._to_lose[index] = (method, path, after - 1)
                    else:
                        del self._to_lose[index]
                        self.lost.append(f"{method} {path}")
                        self._local.lose = True
                    break
            return answer

    def _throttle(self) -> Answer | None:
        if self.requests_per_minute is None:
            return None
        now = self.clock()
        while self._window and self._window[0] <= now - 60.0:
            self._window.popleft()
        if len(self._window) < self.requests_per_minute:
            self._window.append(now)
            return None
        self.state.throttled += 1
        wait = max(1, math.ceil(self._window[0] + 60.0 - now))
        return 429, "Rate limit exceeded, please wait before making more requests", {
            "Retry-After": str(wait), "Content-Type": "text/html; charset=utf-8",
            "X-Rate-Limit": str(self.requests_per_minute), "X-Rate-Limit-Remaining": "0"}

    def _route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: dict[str, Any], raw: bytes) -> Answer:
        two_way = self._route_replies(method, path, query, body)
        if two_way is not None:
            return two_way
        if method == "GET" and path == "/api/v2/users/me":
            return 200, {"user": {"id": API_USER_ID, "name": "Test Agent", "role": "admin",
                                  "email": "agent@example.com"}}, {}
        if method == "POST" and path == "/api/v2/users/create_or_update":
            return self._user(body)
        if method == "GET" and path == "/api/v2/users/search" and "external_id" in query:
            wanted = query["external_id"][0].lower()
            found = [dict(u) for u in self.state.users.values() if str(u.get("external_id") or "").lower() == wanted]
            return 200, {"users": found, "next_page": None, "previous_page": None, "count": len(found)}, {}
        if method == "GET" and path == "/api/v2/users/search":
            return self._search_users((query.get("query") or [""])[0])
        if method == "PUT" and (user_path := re.fullmatch(r"/api/v2/users/(\d+)", path)):
            found = self.state.users.get(int(user_path.group(1)))
            if found is None:
                return 404, {"error": "RecordNotFound", "description": "Not found"}, {}
            found.update({k: v for k, v in (body.get("user") or {}).items() if k in ("name", "email", "phone")})
            self._record("PUT", path, 200, body)
            return 200, {"user": dict(found)}, {}
        if method == "POST" and path == "/api/v2/users/create_or_update_many":
            return self._queue("users", "bulk_create_or_update_users", path, body.get("users"), body)
        if method == "POST" and path == "/api/v2/tickets/create_many":
            return self._queue("create", "bulk_create_tickets", path, body.get("tickets"), body)
        if method == "PUT" and path == "/api/v2/tickets/update_many":
            return self._queue("update", "bulk_update_tickets", path, body.get("tickets"), body)
        if method == "GET" and path == "/api/v2/job_statuses/show_many":
            ids = [i for i in (query.get("ids") or [""])[0].split(",") if i]
            return 200, {"job_statuses": [self._job_status(self.state.jobs[i]) for i in ids
                                          if i in self.state.jobs]}, {}
        job = re.fullmatch(r"/api/v2/job_statuses/([0-9a-f]+)", path)
        if method == "GET" and job:
            found = self.state.jobs.get(job.group(1))
            if found is None:
                return 404, {"error": "RecordNotFound", "description": "Not found"}, {}
            return 200, {"job_status": self._job_status(found)}, {}
        if method == "POST" and path == "/api/v2/uploads":
            return self._upload(query, headers, raw)
        if method == "GET" and path == "/api/v2/incremental/users/cursor":
            return self._export_users(query)
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
        if match and method == "GET":
            ticket = self.state.tickets.get(int(match.group(1)))
            if ticket is None:
                return 404, {"error": "RecordNotFound", "description": "Not found"}, {}
            return 200, {"ticket": dict(ticket)}, {}
        return 404, {"error": "InvalidEndpoint", "description": "Not found"}, {}

    def _record(self, method: str, path: str, status: int, body: dict[str, Any], **extra: Any) -> None:
        self.state.writes.append(Write(method, path, status, body, **extra))

    # -- users ---------------------------------------------------------------------------------------------------
    def _upsert_user(self, given: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        external_id = str(given.get("external_id") or "")
        email = given.get("email")
        user = next((u for u in self.state.users.values()
                     if (external_id and str(u.get("external_id") or "").lower() == external_id.lower())
                     or (email and u.get("email") == email)), None)
        created = user is None
        if user is None:
            user_id = next(self._ids)
            user = {"id": user_id, "url": f"{self.url}/api/v2/users/{user_id}.json", "role": "end-user",
                    "role_type": None, "active": True, "verified": False, "shared_phone_number": False,
                    "created_at": _now(), "email": None, "phone": None, "external_id": None, "tags": []}
            self.state.users[user_id] = user
        user.update({k: v for k, v in given.items() if k in ("name", "email", "phone", "external_id")})
        user["updated_at"] = _now()
        return user, created

    def _user(self, body: dict[str, Any]) -> Answer:
        user, created = self._upsert_user(body.get("user") or {})
        status = 201 if created else 200
        self._record("POST", "/api/v2/users/create_or_update", status, body)
        return status, {"user": dict(user)}, {"Location": f"/api/v2/users/{user['id']}.json"}

    def _search_users(self, query: str) -> Answer:
        """``users/search`` for the two forms the gateway sends: ``email:ADDRESS`` (case-insensitive) and
        ``role:end-user phone:*DIGITS`` (a suffix of the number's digits)."""
        terms = dict(term.split(":", 1) for term in query.split() if ":" in term)
        found = []
        for user in self.state.users.values():
            if "email" in terms and str(user.get("email") or "").lower() != terms["email"].lower():
                continue
            digits = "".join(ch for ch in str(user.get("phone") or "") if ch.isdigit())
            if "phone" in terms and not (digits and digits.endswith(terms["phone"].lstrip("*"))):
                continue
            if "role" in terms and user.get("role") != terms["role"]:
                continue
            found.append(dict(user))
        return 200, {"users": found, "count": len(found), "next_page": None, "previous_page": None}, {}

    def _export_users(self, query: dict[str, list[str]]) -> Answer:
        """Incremental user export (cursor-based): users in creation order after the cursor, 100 a page."""
        start = int((query.get("cursor") or ["0"])[0] or 0)
        users = list(self.state.users.values())
        page = [dict(u) for u in users[start:start + 100]]
        after = start + len(page)
        base = f"{self.url}/api/v2/incremental/users/cursor.json"
        return 200, {"users": page, "after_cursor": str(after), "after_url": f"{base}?cursor={after}",
                     "before_cursor": None, "before_url": None, "end_of_stream": after >= len(users)}, {}

    # -- jobs ----------------------------------------------------------------------------------------------------
    def _queue(self, kind: str, job_type: str, path: str, items: Any, body: dict[str, Any]) -> Answer:
        method = "PUT" if kind == "update" else "POST"
        if kind == "users" and not self.bulk_users:
            self._record(method, path, 403, body)
            return 403, {"error": "Forbidden", "description": FORBIDDEN}, {}
        if not isinstance(items, list) or not items or len(items) > 100:
            self._record(method, path, 400, body)
            return 400, {"error": "InvalidValue", "description": "between 1 and 100 objects are accepted"}, {}
        job = Job(uuid.uuid4().hex, job_type, kind, [dict(item) for item in items],
                  self.clock() + self.job_delay_seconds)
        self.state.jobs[job.id] = job
        self._record(method, path, 200, body)
        return 200, {"job_status": self._job_status(job)}, {}

    def _job_status(self, job: Job) -> dict[str, Any]:
        done = job.results is not None
        return {"id": job.id, "job_type": job.job_type, "message": f"Completed at {_now()}" if done else None,
                "progress": len(job.items) if done else None, "results": job.results, "status":
                "completed" if done else "queued", "total": len(job.items),
                "url": f"{self.url}/api/v2/job_statuses/{job.id}.json"}

    def _run_due_jobs(self) -> None:
        now = self.clock()
        for job in self.state.jobs.values():
            if job.results is None and job.due <= now:
                job.results = [self._run_item(job.kind, index, item) for index, item in enumerate(job.items)]

    def _run_item(self, kind: str, index: int, item: dict[str, Any]) -> dict[str, Any]:
        if kind == "users":
            user, _ = self._upsert_user(item)
            return {"id": user["id"], "index": index}
        if kind == "create":
            status, answer, _ = self._new_ticket(item)
            if status != 201 or not isinstance(answer, dict):
                error = answer.get("error") if isinstance(answer, dict) else None
                return {"id": None, "index": index, "action": "create", "success": False,
                        "error": error or "TicketCreateFailed", "details": json.dumps(answer)}
            return {"id": answer["ticket"]["id"], "index": index}
        ticket_id = int(item.get("id") or 0)
        status, answer, _ = self._apply_update(ticket_id, item)
        if status != 200 or not isinstance(answer, dict):
            details = answer.get("details") if isinstance(answer, dict) else None
            description = "; ".join(d["description"] for ds in (details or {}).values() for d in ds) if details \
                else (answer.get("description", "") if isinstance(answer, dict) else "")
            error = {404: "RecordNotFound", 409: "UpdateConflict", 422: "TicketUpdateFailed"}.get(status, "Failed")
            return {"id": ticket_id, "action": "update", "success": False, "error": error, "details": description}
        return {"id": ticket_id, "action": "update", "success": True, "status": "Updated"}

    # -- tickets -------------------------------------------------------------------------------------------------
    def _audit(self, ticket_id: int, author_id: int, events: list[dict[str, Any]],
               metadata: dict[str, Any] | None) -> dict[str, Any]:
        audit = {"id": next(self._ids), "ticket_id": ticket_id, "created_at": _now(), "author_id": author_id,
                 "via": {"channel": "api"}, "events": events,
                 "metadata": {"custom": dict(metadata or {}), "system": {"client": "channel-gateway tests"}}}
        self.state.audits.setdefault(ticket_id, []).append(audit)
        return audit

    def _comment(self, ticket_id: int, comment: dict[str, Any], metadata: dict[str, Any] | None,
                 requester_id: int) -> dict[str, Any]:
        attachments = [self.state.uploads[token] for token in comment.get("uploads") or []
                       if token in self.state.uploads]
        event = {"id": next(self._ids), "type": "Comment", "body": comment.get("body", ""),
                 "html_body": f"<p>{comment.get('body', '')}</p>", "public": comment.get("public", True),
                 "author_id": comment.get("author_id", requester_id), "attachments": attachments,
                 "plain_body": comment.get("body", ""), "created_at": _now(), "via": {"channel": "api"}}
        self.state.comments.setdefault(ticket_id, []).append({**event, "metadata": dict(metadata or {})})
        return event

    def _create_ticket(self, body: dict[str, Any], key: str | None) -> Answer:
        canonical = json.dumps(body, sort_keys=True)
        if key is not None and key in self.state.idempotency:
            stored_body, status, answer = self.state.idempotency[key]
            if stored_body != canonical:
                self._record("POST", "/api/v2/tickets", 400, body, idempotency_key=key)
                return 400, {"error": "IdempotentRequestError",
                             "description": "Request parameters don't match the given idempotency key"}, {}
            self._record("POST", "/api/v2/tickets", status, body, idempotency_key=key, lookup="hit")
            return status, answer, {"x-idempotency-lookup": "hit"}
        status, answer, _ = self._new_ticket(body.get("ticket") or {})
        if status == 201 and key is not None and isinstance(answer, dict):
            self.state.idempotency[key] = (canonical, 201, answer)
        self._record("POST", "/api/v2/tickets", status, body, idempotency_key=key,
                     lookup="miss" if key and status == 201 else None)
        return status, answer, {"x-idempotency-lookup": "miss"} if key and status == 201 else {}

    def _new_ticket(self, given: dict[str, Any]) -> Answer:
        comment = given.get("comment")
        if not isinstance(comment, dict) or not comment.get("body"):
            details = {"comment": [{"description": "Comment: cannot be blank", "error": "BlankValue"}]}
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
        return 201, {"ticket": dict(ticket), "audit": audit}, {}

    def _update_ticket(self, ticket_id: int, body: dict[str, Any]) -> Answer:
        path = f"/api/v2/tickets/{ticket_id}"
        given = body.get("ticket") or {}
        if {"additional_tags", "remove_tags"} & given.keys():
            self._record("PUT", path, 400, body)
            return 400, {"error": "InvalidValue", "description": "additional_tags and remove_tags are documented for "
                                                                 "tickets/update_many only (the fake's refusal)"}, {}
        status, answer, extra = self._apply_update(ticket_id, given)
        self._record("PUT", path, status, body)
        if status == 200 and self._hold_next and isinstance((body.get("ticket") or {}).get("comment"), dict):
            self._hold_next = False
            self.held_write = self.state.writes[-1]
            self._local.hold = True
        return status, answer, extra

    def _apply_update(self, ticket_id: int, given: dict[str, Any]) -> Answer:
        ticket = self.state.tickets.get(ticket_id)
        if ticket is None:
            return 404, {"error": "RecordNotFound", "description": "Not found"}, {}
        if ticket["status"] == "closed":
            details = {"status": [{"description": "Status: closed prevents ticket update"}]}
            return 422, {"error": "RecordInvalid", "description": "Record validation errors", "details": details}, {}
        if given.get("safe_update") and given.get("updated_stamp") != ticket["updated_at"]:
            return 409, {"error": "UpdateConflict", "description": "Safe Update prevented the update due to "
                                                                   "outdated ticket data. Please fetch the latest "
                                                                   "ticket data and try again."}, {}
        events = []
        if isinstance(given.get("comment"), dict):
            # an update's comment is by the API user unless it names its author (Zendesk's default)
            events.append(self._comment(ticket_id, given["comment"], given.get("metadata"), API_USER_ID))
        if isinstance(given.get("tags"), list):
            ticket["tags"] = [str(tag) for tag in given["tags"]]
        for tag in given.get("additional_tags") or []:
            if tag not in ticket["tags"]:
                ticket["tags"].append(tag)
        if ticket["status"] == "new":
            events.append({"id": next(self._ids), "type": "Change", "field_name": "status", "value": "open",
                           "previous_value": "new"})
            ticket["status"] = "open"
        ticket["updated_at"] = _now()
        audit = self._audit(ticket_id, int((given.get("comment") or {}).get("author_id") or 1), events,
                            given.get("metadata"))
        return 200, {"ticket": dict(ticket), "audit": audit}, {}

    def _audits(self, ticket_id: int, query: dict[str, list[str]]) -> Answer:
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

    # -- uploads -------------------------------------------------------------------------------------------------
    def _upload(self, query: dict[str, list[str]], headers: dict[str, str], raw: bytes) -> Answer:
        filename = (query.get("filename") or [""])[0]
        if not filename:
            return 400, {"error": "InvalidValue", "description": "filename is required"}, {}
        token = uuid.uuid4().hex[:25]
        attachment_id = next(self._ids)
        content_url = f"{self.url}/attachments/token/{token}/?name={filename}"
        attachment = {"id": attachment_id, "file_name": filename, "content_url": content_url,
                      "mapped_content_url": content_url, "content_type": headers.get("content-type",
                                                                                    "application/binary"),
                      "size": len(raw), "inline": False, "deleted": False, "thumbnails": [],
                      "url": f"{self.url}/api/v2/attachments/{attachment_id}.json"}
        self.state.uploads[token] = attachment
        self._record("POST", "/api/v2/uploads", 201, {"filename": filename, "size": len(raw)})
        return 201, {"upload": {"token": token, "attachment": attachment, "attachments": [attachment]}}, {}


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
            parts = urlsplit(self.path)
            path = parts.path.removesuffix(".json")
            body: dict[str, Any] = {}
            if path != "/api/v2/uploads":
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    self._answer(400, {"error": "InvalidJSON", "description": "body is not JSON"}, {})
                    return
            headers = {key.lower(): value for key, value in self.headers.items()}
            fake._local.hold = fake._local.lose = False
            status, answer, extra = fake.handle(self.command, path, parse_qs(parts.query), headers, body, raw)
            if fake._local.lose:
                self.close_connection = True  # the write took effect; the socket closes with no answer
                return
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

        def _answer(self, status: int, body: dict[str, Any] | str, headers: dict[str, str]) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            content_type = headers.pop("Content-Type", "application/json; charset=utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (a killed worker): the write itself has already happened

        do_GET = do_POST = do_PUT = do_PATCH = _serve

    return Handler
