"""Salesforce as a source of agent replies, and the place where notes for agents are written.

Polling (``poll_replies``): one SOQL query per object and poll for published ``CaseComment``s and sent
``EmailMessage``s (``Incoming = false``, drafts left out) on the gateway's Cases, those whose conversation
external-ID field is set. Rows are read in ``SystemModstamp`` order from a cursor holding the last instant read and
the ids already read at that instant, so rows sharing a timestamp are neither lost nor read twice; at most
``reply_poll_limit`` rows per query, the rest on the next poll. Queries count against the daily API budget like
every call, and nothing is read while delivery is paused for the budget. Rows the integration user wrote (the
gateway's own comments) are left out. Each row is stored as Salesforce returned it (JSON) in the inbox under
``crm:NAME``; the pipeline then calls ``agent_replies``, which maps the row's Case back to its conversation.

Real time: Salesforce signs no webhook, so a Flow or Apex callout may post replies to the gateway's own signed
reply endpoint (``gateway.signed_replies``, key ``reply_secret``). With the record Id as ``reply_id``, a reply that
arrives both ways is sent once.

Notes (``post_note``): a private ``CaseComment`` (``IsPublished = false``), written once per key.
SOQL reference: https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from simple_salesforce.format import format_soql

from connectors.salesforce.client import SalesforceClient, SalesforceConfig
from gateway import signed_replies
from gateway.errors import PermanentError, RetryableError
from gateway.mail.html import html_to_text
from gateway.mail.quotes import visible_reply
from gateway.plugins import (
    AgentReply,
    CursorStore,
    InboxSink,
    InternalNotes,
    LinkStore,
    PublicComments,
    ReplyPolling,
)
from gateway.records import InboxItem, RawRecord
from gateway.signed_replies import SignedReplies

log = logging.getLogger(__name__)

NOTE_MARKER = "gateway-note: "
DRAFT = "5"  # EmailMessage.Status picklist: 0 New, 1 Read, 2 Replied, 3 Sent, 4 Forwarded, 5 Draft
_COMMENT_BYTES = 4000  # CaseComment.CommentBody holds at most 4,000 bytes
_NOTE_LOOKBACK = 50
_LINK_KEY_CHARS = 64  # crm_links.local_id
# Ids read at the cursor's instant are excluded by name (Id NOT IN) up to this many; beyond, by Id order, so the
# query stays far below the REST URI limit.
IDS_BY_NAME = 200
_COMMON_FIELDS = ("Id", "ParentId", "CreatedById", "CreatedBy.Name", "CreatedDate", "SystemModstamp")


@dataclass(frozen=True)
class ReplyObject:
    """An object agents reply with: the fields read and the condition that makes a row a public reply."""

    name: str
    fields: tuple[str, ...]
    condition: str


REPLY_OBJECTS = {
    "CaseComment": ReplyObject("CaseComment", ("CommentBody", "IsPublished"), "IsPublished = true"),
    "EmailMessage": ReplyObject("EmailMessage", ("Subject", "TextBody", "HtmlBody", "Incoming", "Status"),
                                f"Incoming = false AND Status != '{DRAFT}'"),
}


def instant(value: str) -> datetime:
    """A Salesforce dateTime (``2026-11-29T10:00:00.000+0000``) in UTC, to the second (SOQL literals' precision)."""
    return datetime.fromisoformat(value).astimezone(UTC).replace(microsecond=0)


def soql_datetime(moment: datetime) -> str:
    """A SOQL dateTime literal (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Position:
    """Where a poll of one object resumes: the last ``SystemModstamp`` read and the ids read at that instant."""

    since: datetime
    ids: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, value: dict[str, Any] | None, start: datetime) -> Position:
        if not value:
            return cls(start.astimezone(UTC).replace(microsecond=0))
        return cls(instant(str(value["since"])), [str(i) for i in value.get("ids") or []])

    def dump(self) -> dict[str, Any]:
        return {"since": soql_datetime(self.since), "ids": list(self.ids)}

    def condition(self) -> str:
        """The SOQL condition for rows not read yet."""
        since = soql_datetime(self.since)
        if not self.ids:
            return f"SystemModstamp >= {since}"
        if len(self.ids) <= IDS_BY_NAME:
            return format_soql("SystemModstamp >= {:literal} AND Id NOT IN {}", since, self.ids)
        return format_soql("(SystemModstamp > {:literal} OR (SystemModstamp = {:literal} AND Id > {}))",
                           since, since, self.ids[-1])

    def advance(self, row: dict[str, Any]) -> None:
        """Move past one row (rows come in ``SystemModstamp, Id`` order)."""
        stamp, record_id = instant(str(row["SystemModstamp"])), str(row["Id"])
        if stamp > self.since:
            self.since, self.ids = stamp, [record_id]
        elif stamp == self.since and record_id not in self.ids:
            self.ids.append(record_id)
            del self.ids[:-(IDS_BY_NAME + 1)]


def fetch_user_id(api: SalesforceClient) -> str:
    """The integration user's id: by its username (password and JWT auth), else from the UserInfo endpoint.

    The query needs only the ``api`` scope; UserInfo serves a configured session id, whose user is not named.
    """
    username = api.config.username
    if username is not None:
        records = api.query(format_soql("SELECT Id FROM User WHERE Username = {} LIMIT 1", username))
        if not records:
            raise RetryableError("Salesforce has no User with the configured username", code="userinfo")
        return str(records[0]["Id"])
    sf = api.client()
    try:
        response = sf.session.get(f"https://{sf.sf_instance}/services/oauth2/userinfo", headers=dict(sf.headers),
                                  timeout=api.config.timeout_seconds)
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise RetryableError(f"Salesforce unreachable: {type(exc).__name__}", code="network") from None
    api.track(response.headers.get("Sforce-Limit-Info"))
    if response.status_code >= 300:
        raise RetryableError(f"Salesforce UserInfo answered {response.status_code}", code=str(response.status_code))
    try:
        user_id = response.json().get("user_id")
    except ValueError:
        user_id = None
    if not user_id:
        raise RetryableError("Salesforce UserInfo answered without user_id", code="userinfo")
    return str(user_id)


def note_link_key(key: str) -> str:
    """The note's key as a link's local id (at most 64 characters)."""
    return key if len(key) <= _LINK_KEY_CHARS else hashlib.sha256(key.encode()).hexdigest()


class SalesforceReplies(SignedReplies, ReplyPolling, InternalNotes, PublicComments):
    """Agent replies (polled, or posted by a Flow to the signed reply endpoint) and notes, for ``SalesforceCrm``."""

    name: str
    config: SalesforceConfig
    api: SalesforceClient
    reply_clock: Callable[[], datetime] = staticmethod(lambda: datetime.now(UTC))
    _integration_user: str | None = None

    # -- polling -------------------------------------------------------------------------------------------------
    @property
    def reply_poll_seconds(self) -> float:
        return self.config.reply_poll_seconds

    @property
    def reply_cursor(self) -> str:
        return f"salesforce:{self.name}:replies"

    def integration_user_id(self) -> str:
        """The API user's id, looked up once per process: its rows are the gateway's own writes."""
        if self._integration_user is None:
            self._integration_user = fetch_user_id(self.api)
        return self._integration_user

    def reply_query(self, obj: str, position: Position, user_id: str, now: datetime) -> str:
        """SOQL for one object's replies after ``position``, oldest first."""
        spec = REPLY_OBJECTS[obj]
        where = [spec.condition,
                 format_soql("ParentId IN (SELECT Id FROM Case WHERE {:literal} != null)",
                             self.config.case_external_id_field),
                 format_soql("CreatedById != {}", user_id),
                 position.condition()]
        if self.config.reply_max_age_hours:
            where.append(f"CreatedDate >= {soql_datetime(now - timedelta(hours=self.config.reply_max_age_hours))}")
        return (f"SELECT {', '.join((*_COMMON_FIELDS, *spec.fields))} FROM {obj} WHERE {' AND '.join(where)} "
                f"ORDER BY SystemModstamp, Id LIMIT {self.config.reply_poll_limit}")

    def poll_replies(self, sink: InboxSink, cursors: CursorStore) -> int:
        """Store the replies written since the cursor (one query per object), then advance the cursor."""
        state = cursors.get(self.reply_cursor) or {}
        now = self.reply_clock()
        stored = 0
        for obj in self.config.reply_objects:
            try:
                self.api.check_budget()
            except RetryableError as exc:
                log.info("Salesforce %s: reply poll waits: %s", self.name, exc)
                break
            user_id = self.integration_user_id()
            position = Position.load(state.get(obj), now)
            if obj not in state:  # the first poll starts now: replies older than the gateway are never sent
                state[obj] = position.dump()
                cursors.put(self.reply_cursor, state)
            # With LIMIT at most 2,000 the answer is one batch; should Salesforce cut it shorter (large text
            # fields), the rows left over come on the next poll, as the cursor only moves past rows read.
            rows = self.api.query(self.reply_query(obj, position, user_id, now))
            items = []
            for row in rows:
                position.advance(row)
                if not self.own_write(row, user_id):
                    items.append(InboxItem(f"{obj}:{row['Id']}", json.dumps(row, sort_keys=True).encode(),
                                           "application/json", "agent_reply"))
            if items:
                stored += sink.store(items)
            state[obj] = position.dump()
            cursors.put(self.reply_cursor, state)
        else:
            if self.config.poll_closed_cases:
                from connectors.salesforce.automation import poll_closed

                stored += poll_closed(self, sink, state, now)  # type: ignore[arg-type]
                cursors.put(self.reply_cursor, state)
        return stored

    @staticmethod
    def own_write(row: dict[str, Any], user_id: str | None) -> bool:
        """A row the gateway wrote: by the integration user, or carrying a gateway reference line."""
        from connectors.salesforce.connector import MARKER_PREFIX  # the connector module imports this one

        if user_id is not None and row.get("CreatedById") == user_id:
            return True
        # only comments: an agent's email may quote one of ours, reference line included, below its reply
        body = str(row.get("CommentBody") or "").rstrip()
        return body.rsplit("\n", 1)[-1].startswith((MARKER_PREFIX, NOTE_MARKER))

    # -- replies -------------------------------------------------------------------------------------------------
    def agent_replies(self, record: RawRecord, links: LinkStore) -> list[AgentReply]:
        """A polled row (provider id ``CaseComment:Id`` / ``EmailMessage:Id``) or a reply posted to the hook."""
        if record.kind == "salesforce_case_closed":  # connectors.salesforce.automation: no reply
            return []
        obj = record.provider_id.partition(":")[0]
        if obj not in REPLY_OBJECTS:
            return signed_replies.replies(record)
        try:
            row = json.loads(record.body)
            record_id, parent_id, created = str(row["Id"]), str(row["ParentId"]), row["CreatedDate"]
            created_at = datetime.fromisoformat(created).astimezone(UTC)
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError(f"stored Salesforce row is not a {obj} record: {type(exc).__name__}",
                                 code="malformed_row") from None
        text = reply_text(obj, row)
        if text is None or self.own_write(row, self._integration_user):
            return []
        conversation_id = links.find_local("conversation", parent_id)
        if conversation_id is None:
            log.info("Salesforce %s: %s %s is on Case %s, which no conversation is linked to; not sent",
                     self.name, obj, record_id, parent_id)
            return []
        author = (row.get("CreatedBy") or {}).get("Name")
        return [AgentReply(reply_id=record_id, conversation_id=conversation_id, text=text, created_at=created_at,
                           author=str(author) if author else None, author_id=row.get("CreatedById"))]

    # -- notes ---------------------------------------------------------------------------------------------------
    def post_note(self, conversation_id: str, text: str, links: LinkStore, key: str) -> None:
        self._case_comment(conversation_id, text, links, key, published=False)

    def post_public_comment(self, conversation_id: str, text: str, links: LinkStore, key: str) -> None:
        self._case_comment(conversation_id, text, links, key, published=True)

    def _case_comment(self, conversation_id: str, text: str, links: LinkStore, key: str, *, published: bool) -> None:
        """A CaseComment (private for a note) on the conversation's Case; an attempt cut short is looked up before a
        new one."""
        link_key = note_link_key(key)
        written = links.get("note", link_key)
        if written is not None and not written[1].get("pending"):
            return
        self.api.check_budget()
        case_id = self.note_case(conversation_id, links)
        marker = f"\n\n{NOTE_MARKER}{key}"
        if written is not None:
            found = self.find_note(case_id, marker, published)
            if found is not None:
                links.put("note", link_key, found)
                return
        else:
            links.put("note", link_key, "", {"pending": True})
        room = _COMMENT_BYTES - len(marker.encode())
        body = text.encode()[:room].decode(errors="ignore") + marker
        answer = self.api.call("POST", "sobjects/CaseComment", prefix="note",
                               json={"ParentId": case_id, "CommentBody": body, "IsPublished": published})
        links.put("note", link_key, str((answer or {}).get("id") or ""))

    def note_case(self, conversation_id: str, links: LinkStore) -> str:
        """The conversation's Case: its link, else a look-up by the external-ID field; PermanentError if none."""
        link = links.get("conversation", conversation_id)
        if link is not None:
            return link[0]
        records = self.api.query(format_soql("SELECT Id FROM Case WHERE {:literal} = {} LIMIT 1",
                                             self.config.case_external_id_field, conversation_id))
        if not records:
            raise PermanentError(f"conversation {conversation_id} has no Salesforce Case to write the note on",
                                 code="no_case")
        case_id = str(records[0]["Id"])
        links.put("conversation", conversation_id, case_id)
        return case_id

    def find_note(self, case_id: str, marker: str, published: bool = False) -> str | None:
        """The comment an earlier attempt wrote, found by its marker line among the Case's latest."""
        records = self.api.query(format_soql(
            "SELECT Id, CommentBody FROM CaseComment WHERE ParentId = {} AND IsPublished = {:literal} "
            "ORDER BY CreatedDate DESC LIMIT {:literal}", case_id, "true" if published else "false",
            str(_NOTE_LOOKBACK)))
        return next((str(r["Id"]) for r in records if str(r.get("CommentBody") or "").rstrip().endswith(
            marker.strip())), None)


def reply_text(obj: str, row: dict[str, Any]) -> str | None:
    """What the customer is to read; None for a row that is no public reply (private, incoming, draft, empty)."""
    if obj == "CaseComment":
        text = str(row.get("CommentBody") or "") if row.get("IsPublished") is True else ""
    elif row.get("Incoming") is False and row.get("Status") != DRAFT:
        body = row.get("TextBody") or html_to_text(str(row.get("HtmlBody") or ""))
        text = visible_reply(str(body))
    else:
        text = ""
    return text.strip() or None
