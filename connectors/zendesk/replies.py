"""Zendesk agent replies: the signed webhook, the comment it points to, and notes for the agent.

Two kinds of stored events lead to a comment: a webhook request from the trigger ``gateway crm setup`` creates
(ticket and comment ids only, kind ``zendesk_comment``), and a ticket event the export poll found (the comment itself,
kind ``zendesk_ticket_event``, see ``connectors.zendesk.export``). Either way the same checks decide: the comment is
public, written by an agent (never the gateway's API user, never a customer), on a ticket linked to a gateway
conversation. The reply id is the comment id, so a comment reached both ways is sent once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from connectors.zendesk.client import classify
from connectors.zendesk.setup import signing_secret
from gateway.errors import MalformedRequest, PermanentError, SignatureInvalid
from gateway.model import Attachment
from gateway.plugins import AgentReply, LinkStore
from gateway.records import InboxItem, RawRecord
from gateway.webhooks import HookRequest

if TYPE_CHECKING:
    from connectors.zendesk.connector import ZendeskCrm

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Zendesk-Webhook-Signature"
TIMESTAMP_HEADER = "X-Zendesk-Webhook-Signature-Timestamp"
INVOCATION_HEADER = "X-Zendesk-Webhook-Invocation-Id"
REPLAY_WINDOW_SECONDS = 300
HOOK_KIND = "zendesk_comment"
EVENT_KIND = "zendesk_ticket_event"
STATUS_KIND = "zendesk_status"  # a solved ticket (connectors.zendesk.automation)
AGENT_ROLES = ("agent", "admin")
MAX_COMMENT_PAGES = 10
MAX_ATTACHMENTS = 20
MAX_CACHED_USERS = 2000
EXPORT_PER_MINUTE = 9.0  # Zendesk allows 10; a little under, like the account budget
_INVOCATION = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


# -- the webhook ---------------------------------------------------------------------------------------------------
def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``base64(HMAC-SHA256(secret, timestamp + body))``, as Zendesk signs webhook requests.

    https://developer.zendesk.com/documentation/webhooks/verifying/
    """
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _epoch(timestamp: str) -> float | None:
    """Zendesk sends ISO 8601 (``2021-03-18T19:25:00Z``); a time without a zone is taken as UTC."""
    try:
        when = datetime.fromisoformat(timestamp.strip())
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def verify(crm: ZendeskCrm, request: HookRequest, now: float | None = None) -> None:
    """Refuse the request unless it is signed with the webhook's secret within the replay window; never unsigned."""
    secret = signing_secret(crm)
    if secret is None:
        raise SignatureInvalid(f"no webhook signing secret for {crm.name}: run `gateway crm setup {crm.name}` "
                               "(or set webhook_secret)")
    given = request.headers.get(SIGNATURE_HEADER, "")
    timestamp = request.headers.get(TIMESTAMP_HEADER, "")
    if not given or not timestamp:
        raise SignatureInvalid(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
    sent = _epoch(timestamp)
    if sent is None:
        raise SignatureInvalid(f"{TIMESTAMP_HEADER} is not an ISO 8601 time")
    if abs((now if now is not None else time.time()) - sent) > REPLAY_WINDOW_SECONDS:
        raise SignatureInvalid(f"{TIMESTAMP_HEADER} outside the {REPLAY_WINDOW_SECONDS} s window")
    if not hmac.compare_digest(signature(secret, timestamp, request.body).encode(), given.encode()):
        raise SignatureInvalid(f"{SIGNATURE_HEADER} does not match the body (if the webhook's secret was reset, "
                               f"run `gateway crm setup {crm.name}` again)")


def positive_id(value: Any) -> str | None:
    text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    return text if text.isdigit() and int(text) > 0 else None


def hook_ids(body: bytes) -> tuple[str, str]:
    """The ticket and comment ids a trigger's request carries; ``MalformedRequest`` when either is missing."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise MalformedRequest("body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedRequest("body is not a JSON object")
    ticket_id, comment_id = positive_id(data.get("ticket_id")), positive_id(data.get("comment_id"))
    if ticket_id is None:
        raise MalformedRequest("ticket_id is missing or not an id: the trigger must send {{ticket.id}}")
    if comment_id is None:
        raise MalformedRequest("comment_id is missing or not an id: the trigger must send "
                               "{{ticket.latest_comment.id}}")
    return ticket_id, comment_id


def split(request: HookRequest) -> list[InboxItem]:
    """One event per request, keyed by Zendesk's invocation id (the same on every retry of one notification)."""
    from connectors.zendesk.automation import split_status, status_event

    solved = status_event(request.body)
    if solved is not None:
        return split_status(request, solved)
    ticket_id, comment_id = hook_ids(request.body)
    invocation = request.headers.get(INVOCATION_HEADER, "").strip()
    key = f"hook:{invocation}" if _INVOCATION.match(invocation) else f"hook:ticket:{ticket_id}:comment:{comment_id}"
    return [InboxItem(key, request.body, "application/json", HOOK_KIND)]


def event_comment(body: bytes) -> tuple[str, dict[str, Any]]:
    """The ticket id and the comment a stored ticket event (as the export poll stores it) carries."""
    try:
        event = json.loads(body)
        ticket_id = positive_id(event.get("ticket_id"))
        comment = next(c for c in event.get("child_events") or [] if is_comment(c))
    except (UnicodeDecodeError, ValueError, AttributeError, StopIteration):
        raise PermanentError("stored Zendesk ticket event carries no comment", code="malformed_event") from None
    if ticket_id is None:
        raise PermanentError("stored Zendesk ticket event has no ticket id", code="malformed_event")
    return ticket_id, comment


def is_comment(event: Any) -> bool:
    """A comment as the comments API lists it (``type``) or as a ticket event's child (``event_type``)."""
    return isinstance(event, dict) and "Comment" in (event.get("type"), event.get("event_type")) \
        and positive_id(event.get("id")) is not None


def _created_at(value: Any, default: datetime) -> datetime:
    epoch = _epoch(value) if isinstance(value, str) else None
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else default


def _attachments(comment: dict[str, Any]) -> tuple[Attachment, ...]:
    found = []
    for item in (comment.get("attachments") or [])[:MAX_ATTACHMENTS]:
        if not isinstance(item, dict) or not item.get("content_url") or item.get("deleted"):
            continue
        size = item.get("size")
        found.append(Attachment(
            filename=str(item.get("file_name") or "attachment"),
            content_type=str(item.get("content_type") or "application/octet-stream"),
            size=size if isinstance(size, int) and size >= 0 else None, location=str(item["content_url"])))
    return tuple(found)


class ZendeskReplies:
    """Reads agent replies and writes notes for one Zendesk connector; caches who the API user and agents are."""

    def __init__(self, crm: ZendeskCrm) -> None:
        self.crm = crm
        self.client = crm.client
        self._me: str | None = None
        self._users: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()  # pipeline threads share one connector
        # the export's own limit (10 a minute), shared by every process, on top of the account's budget
        self.export_limiter = crm.context.limiter(f"zendesk-export:{crm.config.subdomain}", EXPORT_PER_MINUTE)

    # -- who wrote it ----------------------------------------------------------------------------------------------
    def me(self) -> str:
        """The id of the user the gateway authenticates as (its own writes are never replies)."""
        if self._me is None:
            user = self.client.call("GET", "/users/me").get("user") or {}
            if not positive_id(user.get("id")):
                raise PermanentError("Zendesk did not say which user the API credentials belong to", code="no_user")
            self._me = str(user["id"])
        return self._me

    def users(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The users with these ids (role, name), from the cache or ``users/show_many`` 100 at a time."""
        wanted = list(dict.fromkeys(ids))
        with self._lock:
            missing = [user_id for user_id in wanted if user_id not in self._users]
        for start in range(0, len(missing), 100):
            chunk = missing[start:start + 100]
            body = self.client.call("GET", "/users/show_many", params={"ids": ",".join(chunk)})
            fetched = {str(u.get("id")): {"role": u.get("role"), "name": u.get("name")}
                       for u in body.get("users") or [] if isinstance(u, dict)}
            with self._lock:
                for user_id in chunk:  # a deleted user is remembered as nobody, not asked for again
                    self._users[user_id] = fetched.get(user_id, {"role": None, "name": None})
                while len(self._users) > MAX_CACHED_USERS:
                    self._users.popitem(last=False)
        with self._lock:
            return {user_id: self._users[user_id] for user_id in wanted if user_id in self._users}

    def author_is_agent(self, author_id: str, links: LinkStore | None = None) -> bool:
        """An agent or admin other than the gateway's API user; a gateway customer never is."""
        if author_id == self.me():
            return False
        if links is not None and links.find_local("customer", author_id) is not None:
            return False
        role = (self.users([author_id]).get(author_id) or {}).get("role")
        return role in AGENT_ROLES

    # -- replies ---------------------------------------------------------------------------------------------------
    def find_comment(self, ticket_id: str, comment_id: str) -> dict[str, Any] | None:
        """The comment, newest first, at most ``MAX_COMMENT_PAGES`` pages; None when the ticket or it is gone."""
        url: str | None = f"/tickets/{ticket_id}/comments"
        params: dict[str, Any] | None = {"page[size]": 100, "sort": "-created_at"}
        for _ in range(MAX_COMMENT_PAGES):
            if url is None:
                break
            response = self.client.request("GET", url, params=params)
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                classify(response)
            body = response.json()
            for comment in body.get("comments") or []:
                if isinstance(comment, dict) and str(comment.get("id")) == comment_id:
                    return comment
            next_url = (body.get("links") or {}).get("next") if (body.get("meta") or {}).get("has_more") else None
            url, params = (next_url.split("/api/v2", 1)[1] if next_url and "/api/v2" in next_url else None), None
        return None

    def agent_replies(self, record: RawRecord, links: LinkStore) -> list[AgentReply]:
        """The reply one stored event carries: none unless it is an agent's public comment on a gateway ticket."""
        comment: dict[str, Any] | None
        if record.kind == STATUS_KIND:
            return []
        if record.kind == EVENT_KIND:
            ticket_id, comment = event_comment(record.body)
            comment_id = str(comment["id"])
        else:
            try:
                ticket_id, comment_id = hook_ids(record.body)
            except MalformedRequest as exc:
                raise PermanentError(f"stored Zendesk webhook event: {exc.reason}", code="malformed_event") from None
            comment = None
        conversation = links.find_local("conversation", ticket_id)
        if conversation is None:
            log.info("%s: comment %s is on ticket %s, which no gateway conversation owns", self.crm.name,
                     comment_id, ticket_id)
            return []
        if comment is None:
            comment = self.find_comment(ticket_id, comment_id)
            if comment is None:
                log.warning("%s: comment %s of ticket %s not found (deleted?)", self.crm.name, comment_id, ticket_id)
                return []
        return self.reply(comment, conversation, links, record.received_at)

    def reply(self, comment: dict[str, Any], conversation_id: str, links: LinkStore,
              received_at: datetime) -> list[AgentReply]:
        author_id = positive_id(comment.get("author_id"))
        if comment.get("public") is not True or author_id is None or not self.author_is_agent(author_id, links):
            return []
        text = str(comment.get("body") or comment.get("plain_body") or "")
        attachments = _attachments(comment)
        if not text.strip() and not attachments:
            return []
        author = (self.users([author_id]).get(author_id) or {}).get("name")
        return [AgentReply(
            reply_id=str(comment["id"]), conversation_id=conversation_id, text=text,
            created_at=_created_at(comment.get("created_at"), received_at), author=author, author_id=author_id,
            attachments=attachments)]

    # -- notes -----------------------------------------------------------------------------------------------------
    def post_note(self, conversation_id: str, text: str, links: LinkStore, key: str, *, public: bool = False) -> None:
        """A private comment by the API user (public: what the gateway told the customer), written once per key
        (the key is kept in the audit metadata too)."""
        from connectors.zendesk.connector import MARKER

        link = links.get("conversation", conversation_id)
        if link is None:
            raise PermanentError(f"conversation {conversation_id} has no Zendesk ticket yet", code="no_ticket")
        if links.get("note", key) is not None:
            return
        ticket_id = link[0]
        # a crash between the write and the link leaves the key in the audits: found there, not written twice
        if key not in self.crm.written_ids(ticket_id):
            self.client.call("PUT", f"/tickets/{ticket_id}", json={"ticket": {
                "comment": {"body": text, "public": public}, "metadata": {MARKER: key}}})
        links.put("note", key, ticket_id)
