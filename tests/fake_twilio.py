"""A small local stand-in for Twilio's Messages API, for tests and benchmarks that run the gateway for real.

It serves, on 127.0.0.1, the two calls the ``twilio`` connector makes to send a reply and to look for an interrupted
one, with Twilio's documented shapes (https://www.twilio.com/docs/messaging/api/message-resource):

- ``POST /2010-04-01/Accounts/{Sid}/Messages.json`` (form To, From or MessagingServiceSid, Body, MediaUrl,
  StatusCallback, ContentSid, ContentVariables): 201 with the Message resource (``status`` ``queued``, or ``accepted``
  through a Messaging Service; ``date_sent`` null). Errors as Twilio's JSON ``{code, message, more_info, status}``:
  401 (20003) for other credentials, 400 21604 without To, 21603 without a sender, 21602 without a body, 21617 for a
  body over 1,600 characters, 21610 to a number in ``opted_out``.
- ``GET /2010-04-01/Accounts/{Sid}/Messages.json`` with To, From, ``DateSent``/``DateSent>``/``DateSent<`` (a
  ``YYYY-MM-DD`` date; ``DateSent>`` means on or after it, as ``DateSent>=`` reads once URL-decoded), PageSize
  and the PageToken of ``next_page_uri``: newest first, with Twilio's page fields (``messages``, ``page``,
  ``page_size``, ``first_page_uri``, ``next_page_uri``, ``previous_page_uri``, ``start``, ``end``, ``uri``).

A message is ``queued`` with no ``date_sent`` for ``queue_seconds`` after its creation, then ``sent`` with
``date_sent`` set (Twilio fills ``date_sent`` when it hands the message on); a ``DateSent`` filter does not match a
message that has none, which is the fake's reading of Twilio's filter.

API for tests (all thread-safe):

- ``FakeTwilio(account_sid, auth_token)``; ``start()`` / ``stop()`` or ``with FakeTwilio(...) as fake:``; ``url`` is
  the connector's ``api_base_url``.
- ``set_mode(mode, times=None)`` for the next creations (all of them, or ``times`` of them, then ``ok`` again):
  ``ok``; ``hang`` (the message is created, then the answer is held until ``release`` is set or ``stop()``:
  a client times out, or is killed, having sent without knowing it; ``held`` is set once such a message exists);
  ``drop`` (the message is created, then the connection is closed without an answer); ``fail`` (500, nothing
  created); ``throttle`` (429 with ``Retry-After: 1`` and code 20429, nothing created).
- ``messages(to=None)``: the messages created (Twilio's resource dicts), oldest first; ``sent_counts()``: a Counter
  of messages per To; ``forms``: each created message's form as posted (StatusCallback included); ``requests``:
  a Counter of calls per ``METHOD kind`` (``POST create``, ``GET list``); ``opted_out``: numbers that texted STOP.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.local_server import LocalServer

MODES = ("ok", "hang", "drop", "fail", "throttle")
Answer = tuple[int, dict[str, Any], dict[str, str]]


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC))


class FakeTwilio(LocalServer):
    """The fake server. Nothing is sent anywhere; status callbacks are not made."""

    def __init__(self, account_sid: str, auth_token: str, *, queue_seconds: float = 0.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.queue_seconds = queue_seconds
        self.clock = clock
        self.opted_out: set[str] = set()
        self.requests: Counter[str] = Counter()
        self.forms: list[dict[str, list[str]]] = []  # each accepted creation's form, as posted
        self.lock = threading.Lock()
        self.held = threading.Event()
        self._messages: list[dict[str, Any]] = []
        self._created: dict[str, datetime] = {}
        self._mode = "ok"
        self._times: int | None = None
        self._serial = itertools.count(1)
        self.serve(_handler_for(self), "fake-twilio")

    # -- what tests read and set ---------------------------------------------------------------------------------
    def set_mode(self, mode: str, times: int | None = None) -> None:
        """How the next creations are answered (see the module docstring); ``times`` limits it to that many."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        with self.lock:
            self._mode, self._times = mode, times
            if mode == "hang":
                self.held.clear()
                self.release.clear()

    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        """The messages created, oldest first (each as Twilio's resource), optionally only those to ``to``."""
        with self.lock:
            return [self._view(m) for m in self._messages if to is None or m["to"] == to]

    def sent_counts(self) -> Counter[str]:
        """How many messages were created per To: a reply sent twice shows as 2."""
        with self.lock:
            return Counter(m["to"] for m in self._messages)

    # -- the API -------------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], form: dict[str, list[str]],
               authorization: str) -> tuple[Answer, str]:
        """The answer to one request, and what the connection does with it (``answer``, ``hang`` or ``drop``)."""
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        with self.lock:
            kind = "create" if method == "POST" else "list"
            self.requests[f"{method} {kind}"] += 1
            if not self._authorized(authorization):
                return _error(401, 20003, "Authentication Error - invalid username"), "answer"
            if path != base:
                return _error(404, 20404, f"The requested resource {path} was not found"), "answer"
            if method == "GET":
                return self._list(base, query), "answer"
            mode = self._next_mode()
            if mode == "fail":
                return _error(500, 20500, "Internal Server Error"), "answer"
            if mode == "throttle":
                status, body, headers = _error(429, 20429, "Too Many Requests")
                return (status, body, {**headers, "Retry-After": "1"}), "answer"
            answer = self._create(base, form)
            if mode == "hang" and answer[0] == 201:
                self.held.set()
            return answer, mode if answer[0] == 201 else "answer"

    def _authorized(self, authorization: str) -> bool:
        if not authorization.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        return user == self.account_sid and password == self.auth_token

    def _next_mode(self) -> str:
        mode = self._mode
        if self._times is not None:
            self._times -= 1
            if self._times <= 0:
                self._mode, self._times = "ok", None
        return mode

    def _create(self, base: str, form: dict[str, list[str]]) -> Answer:
        def one(key: str) -> str:
            return (form.get(key) or [""])[0]

        to, sender, service = one("To"), one("From"), one("MessagingServiceSid")
        body, media = one("Body"), form.get("MediaUrl") or []
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not sender and not service:
            return _error(400, 21603, "A 'From' phone number is required.")
        if not body and not media and not one("ContentSid"):
            return _error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return _error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        if to.removeprefix("whatsapp:") in self.opted_out:
            return _error(400, 21610, "Attempt to send to unsubscribed recipient")
        if one("ContentSid"):
            variables = json.loads(one("ContentVariables") or "{}")
            body = " ".join(str(variables[k]) for k in sorted(variables))  # a rendered template, roughly
        now = self.clock()
        sid = ("MM" if media else "SM") + uuid.uuid4().hex
        message = {
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": body,
            "date_created": _rfc2822(now), "date_sent": None, "date_updated": _rfc2822(now),
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": sender or None, "messaging_service_sid": service or None, "num_media": str(len(media)),
            "num_segments": "0" if service else str(max(1, -(-len(body) // 160))), "price": None,
            "price_unit": "USD", "sid": sid, "status": "accepted" if service else "queued",
            "subresource_uris": {"media": f"{base.removesuffix('.json')}/{sid}/Media.json"},
            "to": to, "uri": f"{base.removesuffix('.json')}/{sid}.json",
            "serial": next(self._serial),
        }
        self.forms.append({key: list(values) for key, values in form.items()})
        self._messages.append(message)
        self._created[sid] = now
        return 201, {key: value for key, value in message.items() if key != "serial"}, {}  # as created: queued

    def _view(self, message: dict[str, Any]) -> dict[str, Any]:
        """The resource as Twilio shows it now: ``sent`` with a ``date_sent`` once ``queue_seconds`` have passed."""
        shown = {k: v for k, v in message.items() if k != "serial"}
        created = self._created[message["sid"]]
        if (self.clock() - created).total_seconds() >= self.queue_seconds and message["status"] in ("queued",
                                                                                                    "accepted"):
            shown.update(status="sent", date_sent=_rfc2822(created))
            if shown["from"] is None:
                shown["from"] = "+15005550006"  # the number the service picked
        return shown

    def _list(self, base: str, query: dict[str, list[str]]) -> Answer:
        def one(key: str) -> str | None:
            return (query.get(key) or [None])[0]

        try:
            size = min(max(int(one("PageSize") or 50), 1), 1000)
            start = int(one("PageToken") or 0)
            on, after, before = (date.fromisoformat(v) if v else None
                                 for v in (one("DateSent"), one("DateSent>"), one("DateSent<")))
        except ValueError:
            return _error(400, 20001, "Invalid date value.")
        wanted = {"to": one("To"), "from": one("From")}
        found = []
        for message in sorted(self._messages, key=lambda m: m["serial"], reverse=True):
            shown = self._view(message)
            if any(value and shown[key] != value for key, value in wanted.items()):
                continue
            if on or after or before:
                if shown["date_sent"] is None:
                    continue
                sent = self._created[shown["sid"]].date()
                if (on and sent != on) or (after and sent < after) or (before and sent > before):
                    continue
            found.append(shown)
        page = found[start:start + size]
        filters = {k: v[0] for k, v in query.items() if k not in ("PageToken", "Page")}

        def uri(token: int) -> str:
            return f"{base}?{urlencode({**filters, 'PageSize': size, 'Page': token // size, 'PageToken': token})}"

        more = start + size < len(found)
        return 200, {
            "messages": page, "page": start // size, "page_size": size, "start": start,
            "end": start + max(len(page) - 1, 0), "uri": uri(start), "first_page_uri": uri(0),
            "next_page_uri": uri(start + size) if more else None,
            "previous_page_uri": uri(max(start - size, 0)) if start else None,
        }, {}


def _error(status: int, code: int, message: str) -> Answer:
    return status, {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                    "status": status}, {}


def _handler_for(fake: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            parts = urlsplit(self.path)
            (status, body, headers), how = fake.handle(
                self.command, parts.path, parse_qs(parts.query), parse_qs(raw, keep_blank_values=True),
                self.headers.get("Authorization", ""))
            if how == "drop":  # no answer at all: the client sees the connection closed
                self.close_connection = True
                return
            if how == "hang":
                fake.release.wait(300)
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass  # the client went away (timed out, or was killed): the message exists all the same

        do_GET = do_POST = _serve

    return Handler

