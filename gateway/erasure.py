"""Everything held about one person: found once, then exported (an access request) or erased (a deletion request).

What belongs to a person, table by table:

- ``customers`` (the customer and every customer merged into it), ``identities``, ``merges`` and
  ``merge_suggestions`` naming any of them, ``opt_outs`` of their numbers, ``crm_directory`` rows of their identifiers
  and of the CRM records linked to them;
- ``messages`` they sent or that answered them, with their ``outbox`` and ``delivery_log`` rows, ``sends`` and
  ``send_log``, the ``provider_statuses`` of those sends, and the ``inbox`` rows (raw payloads) behind all of these;
- inbox rows that never became a message (quarantined, ignored, dead-lettered) whose raw bytes name one of their
  identifiers; rows still waiting are left to the pipeline (one may be another customer's message);
- ``conversations`` they own with their ``thread_keys``, ``crm_notes``, ``crm_links``, ``acknowledgements`` and
  escalation clocks (``sla_clocks``); a conversation another customer also wrote in is handed to that customer
  instead (their messages stay);
- ``surveys`` they were asked or answered (a comment is their own words);
- ``dead_letters`` of any row above; attachment files no remaining message refers to.

Elsewhere their identifiers are replaced by ``[erased]``: another customer's message that names them (an email's
Cc), a raw payload shared with another customer's message, stored failure reasons. The console's audit log
(``admin_audit``) keeps its rows, as the record of what each admin did, with the person's customer ids,
identifiers and name in ``target`` and ``detail`` (a merge reason is free text) replaced. ``cursors``,
``rate_limits`` and ``used_tokens`` hold nothing about a person. What is left is a tombstone per identifier: its
keyed hash (``gateway.privacy``), the time, who asked, and how many rows went.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy import Connection, Table, Text, cast, delete, false, or_, select, update

from gateway.attachments import SCHEME, AttachmentStore
from gateway.console.payloads import body_shown, headers_shown
from gateway.identity.merges import customer_family, live_customer_id
from gateway.identity.normalize import InvalidIdentifier, normalize_email, normalize_phone
from gateway.privacy import identifier_hash
from gateway.storage.db import utcnow
from gateway.storage.tables import (
    acknowledgements,
    admin_audit,
    conversations,
    crm_directory,
    crm_links,
    crm_notes,
    customers,
    dead_letters,
    delivery_log,
    identities,
    inbox,
    merge_suggestions,
    merges,
    messages,
    opt_outs,
    outbox,
    provider_statuses,
    send_log,
    sends,
    sla_clocks,
    surveys,
    thread_keys,
    tombstones,
)

ERASED = "[erased]"
_SCAN_BATCH = 500


class NotFound(LookupError):
    """No customer, or several, match what was asked for."""


def candidates(query: str, region: str) -> list[tuple[str, str]]:
    """The identifiers (kind, normalised value) ``query`` may be: ``kind:value``, an email address, a phone number."""
    out = []
    if ":" in query and not query.startswith("+"):
        kind, _, value = query.partition(":")
        out.append((kind, value))
    if "@" in query:
        with contextlib.suppress(InvalidIdentifier):
            out.append(("email", normalize_email(query)))
    with contextlib.suppress(InvalidIdentifier):
        phone = normalize_phone(query, region)
        out += [("phone", phone), ("whatsapp", phone)]
    return out


def find_customer(conn: Connection, query: str, region: str) -> str:
    """The one live customer an id or identifier (email, phone in any form, ``kind:value``) names."""
    if conn.execute(select(customers.c.id).where(customers.c.id == query)).first():
        return live_customer_id(conn, query)
    candidates_ = candidates(query, region)
    found = {live_customer_id(conn, cid) for cid in conn.execute(select(identities.c.customer_id).where(
        or_(*[(identities.c.kind == k) & (identities.c.value == v) for k, v in candidates_]))).scalars()
        } if candidates_ else set()
    if len(found) == 1:
        return found.pop()
    if found:
        raise NotFound(f"{query!r} names {len(found)} customers ({', '.join(sorted(found))}): give one id")
    raise NotFound(f"no customer has {query!r} (give a customer id, an email address or a phone number)")


@dataclass
class Holdings:
    """The ids of every row held about one person (see the module's description)."""

    family: list[str]
    identifiers: list[tuple[str, str]]
    names: list[str]
    conversations: list[str] = field(default_factory=list)
    handed_over: dict[str, str] = field(default_factory=dict)  # conversation -> the other customer it goes to
    messages: list[str] = field(default_factory=list)
    inbox: list[int] = field(default_factory=list)
    shared_inbox: list[int] = field(default_factory=list)  # raw rows other customers' messages come from too
    outbox: list[int] = field(default_factory=list)
    sends: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    notes: list[int] = field(default_factory=list)
    note_keys: list[str] = field(default_factory=list)
    attachments: set[str] = field(default_factory=set)

    def needles(self) -> list[str]:
        """The identifier values as they may appear in raw payloads: as given, URL-encoded, a phone without +."""
        out: set[str] = set()
        for kind, value in self.identifiers:
            out |= {value, quote(value, safe=""), quote_plus(value)}
            if value.startswith("+"):
                out.add(value[1:])
            if kind in ("slack", "messenger", "instagram") and ":" in value:
                out.add(value.rpartition(":")[2])
        return sorted(needle for needle in out if len(needle) >= 6)


def _ids(conn: Connection, column: Any, *where: Any) -> list[Any]:
    return list(dict.fromkeys(conn.execute(select(column).where(*where)).scalars()))


def holdings(conn: Connection, customer_id: str) -> Holdings:
    """Find every row held about the customer (and the customers merged into it)."""
    family = customer_family(conn, live_customer_id(conn, customer_id))
    found = Holdings(
        family=family,
        identifiers=[(k, v) for k, v in conn.execute(select(identities.c.kind, identities.c.value).where(
            identities.c.customer_id.in_(family)).order_by(identities.c.id))],
        names=[n for n in _ids(conn, customers.c.display_name, customers.c.id.in_(family)) if n])
    owned = _ids(conn, conversations.c.id, conversations.c.customer_id.in_(family))
    for conversation_id, other in conn.execute(select(messages.c.conversation_id, messages.c.customer_id).where(
            messages.c.conversation_id.in_(owned), messages.c.customer_id.not_in(family))):
        found.handed_over.setdefault(conversation_id, other)
    found.conversations = [c for c in owned if c not in found.handed_over]
    rows = conn.execute(select(messages.c.id, messages.c.inbox_id, messages.c.data).where(
        messages.c.customer_id.in_(family))).all()
    found.messages = [row.id for row in rows]
    found.attachments = {a["sha256"] for row in rows for a in row.data.get("attachments", [])
                         if a.get("sha256") and str(a.get("location", "")).startswith(SCHEME)}
    found.outbox = _ids(conn, outbox.c.id, outbox.c.message_id.in_(found.messages))
    send_rows = conn.execute(select(sends.c.id, sends.c.channel, sends.c.provider_message_id).where(
        sends.c.message_id.in_(found.messages))).all()
    found.sends = [row.id for row in send_rows]
    sent = [(row.channel, row.provider_message_id) for row in send_rows if row.provider_message_id]
    status_rows = conn.execute(select(provider_statuses.c.id, provider_statuses.c.inbox_id).where(
        or_(*[(provider_statuses.c.connector == c) & (provider_statuses.c.provider_message_id == p)
              for c, p in sent]))).all() if sent else []
    found.statuses = [row.id for row in status_rows]
    note_rows = conn.execute(select(crm_notes.c.id, crm_notes.c.key).where(
        crm_notes.c.conversation_id.in_(found.conversations))).all()
    found.notes, found.note_keys = [r.id for r in note_rows], [r.key for r in note_rows]
    raw = {row.inbox_id for row in rows} | {row.inbox_id for row in status_rows} | _raw_naming(conn, found)
    shared = set(_ids(conn, messages.c.inbox_id, messages.c.inbox_id.in_(raw), messages.c.id.not_in(found.messages)))
    shared |= set(_ids(conn, provider_statuses.c.inbox_id, provider_statuses.c.inbox_id.in_(raw),
                       provider_statuses.c.id.not_in(found.statuses)))
    found.inbox, found.shared_inbox = sorted(raw - shared), sorted(shared)
    return found


def _raw_naming(conn: Connection, found: Holdings) -> set[int]:
    """Processed inbox rows whose raw bytes name one of the person's identifiers (read in batches: bytes cannot be
    searched alike on every database). A row still waiting is left to the pipeline: it may be another customer's
    message, and one of the person's own becomes a new customer, as any message after the erasure does."""
    needles = [n.lower().encode() for n in found.needles()]
    hits: set[int] = set()
    last = 0
    while needles:
        batch = conn.execute(select(inbox.c.id, inbox.c.status, inbox.c.body, inbox.c.headers)
                             .where(inbox.c.id > last).order_by(inbox.c.id).limit(_SCAN_BATCH)).all()
        if not batch:
            break
        for row in batch:
            if row.status == "pending":
                continue
            text = bytes(row.body).lower() + json.dumps(row.headers).lower().encode()
            if any(needle in text for needle in needles):
                hits.add(row.id)
        last = batch[-1].id
    return hits


def _crm_records(conn: Connection, found: Holdings) -> list[tuple[str, str]]:
    return [(r.crm, r.remote_id) for r in conn.execute(select(crm_links.c.crm, crm_links.c.remote_id).where(
        crm_links.c.entity == "customer", crm_links.c.local_id.in_(found.family)))]


def crm_contacts(conn: Connection, found: Holdings) -> dict[str, str]:
    """The person's record in each CRM that has one (what ``--crm`` asks to delete)."""
    return dict(_crm_records(conn, found))


def _link_filter(found: Holdings) -> Any:
    return or_((crm_links.c.entity == "customer") & crm_links.c.local_id.in_(found.family),
               crm_links.c.entity.in_(("conversation", "ticket_job")) & crm_links.c.local_id.in_(found.conversations),
               (crm_links.c.entity == "message") & crm_links.c.local_id.in_(found.messages),
               (crm_links.c.entity == "note") & crm_links.c.local_id.in_(found.note_keys))


def _directory_filter(conn: Connection, found: Holdings) -> Any:
    records = _crm_records(conn, found)
    return or_(*[(crm_directory.c.kind == k) & (crm_directory.c.value == v) for k, v in found.identifiers],
               *[(crm_directory.c.crm == c) & (crm_directory.c.remote_id == r) for c, r in records], false())


def _letters_filter(found: Holdings) -> Any:
    return or_((dead_letters.c.stage == "pipeline") & dead_letters.c.source_id.in_(found.inbox),
               (dead_letters.c.stage == "delivery") & dead_letters.c.source_id.in_(found.outbox),
               (dead_letters.c.stage == "send") & dead_letters.c.source_id.in_(found.sends),
               (dead_letters.c.stage == "note") & dead_letters.c.source_id.in_(found.notes))


def _acks_filter(found: Holdings) -> Any:
    return or_(acknowledgements.c.conversation_id.in_(found.conversations),
               acknowledgements.c.customer_id.in_(found.family))


def _surveys_filter(found: Holdings) -> Any:
    return or_(surveys.c.conversation_id.in_(found.conversations), surveys.c.customer_id.in_(found.family))


def _audit_pattern(found: Holdings) -> re.Pattern[str]:
    """The person's customer ids, identifiers (as written in raw payloads too) and names, longest first."""
    values = {*found.family, *(v for _, v in found.identifiers), *found.needles(),
              *(n for n in found.names if len(n) >= 3)}
    return re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)), re.IGNORECASE)


def _audit_rows(conn: Connection, found: Holdings) -> list[Any]:
    """Console audit rows whose target or detail names the person (by customer id or identifier)."""
    values = [*found.family, *(v for _, v in found.identifiers), *found.needles()]
    if not values:
        return []
    matches = or_(*[cast(column, Text).icontains(v, autoescape=True)
                    for column in (admin_audit.c.target, admin_audit.c.detail) for v in values])
    return list(conn.execute(select(admin_audit).where(matches).order_by(admin_audit.c.id)))


def _phones(found: Holdings) -> list[str]:
    return [v for k, v in found.identifiers if k in ("phone", "whatsapp")]


def _rows(conn: Connection, table: Table, *where: Any) -> list[dict[str, Any]]:
    out = []
    for row in conn.execute(select(table).where(*where)):
        values = dict(row._mapping)
        for key, value in values.items():
            if isinstance(value, bytes | memoryview):
                data = bytes(value)
                try:
                    values[key] = data.decode("utf-8")
                except UnicodeDecodeError:
                    values[key] = {"base64": base64.b64encode(data).decode("ascii")}
        out.append(values)
    return out


def _raw_payloads(conn: Connection, found: Holdings) -> list[dict[str, Any]]:
    """The person's raw payloads as text, with credentials (a Slack ``token``, Mailgun's ``signature``, signature
    headers) and card numbers masked as the console masks them: an export file travels further than the database."""
    out = []
    for row in conn.execute(select(inbox).where(inbox.c.id.in_(found.inbox)).order_by(inbox.c.id)):
        values = dict(row._mapping)
        values["body"] = body_shown(bytes(row.body), row.content_type, limit=None)
        values["headers"] = headers_shown(row.headers or {})
        out.append(values)
    return out


def export(conn: Connection, found: Holdings, attachments: AttachmentStore) -> dict[str, Any]:
    """Everything held about the person, as JSON-ready data (for an access request)."""
    names = found.family
    data: dict[str, Any] = {
        "customers": _rows(conn, customers, customers.c.id.in_(names)),
        "identities": _rows(conn, identities, identities.c.customer_id.in_(names)),
        "merges": _rows(conn, merges, or_(merges.c.survivor_id.in_(names), merges.c.absorbed_id.in_(names))),
        "merge_suggestions": _rows(conn, merge_suggestions, or_(merge_suggestions.c.customer_a.in_(names),
                                                                 merge_suggestions.c.customer_b.in_(names))),
        "conversations": _rows(conn, conversations, conversations.c.id.in_(found.conversations)),
        "thread_keys": _rows(conn, thread_keys, thread_keys.c.conversation_id.in_(found.conversations)),
        "messages": _rows(conn, messages, messages.c.id.in_(found.messages)),
        "raw_payloads": _raw_payloads(conn, found),
        "crm_writes": _rows(conn, outbox, outbox.c.id.in_(found.outbox)),
        "crm_write_log": _rows(conn, delivery_log, delivery_log.c.outbox_id.in_(found.outbox)),
        "sends": _rows(conn, sends, sends.c.id.in_(found.sends)),
        "send_log": _rows(conn, send_log, send_log.c.send_id.in_(found.sends)),
        "provider_statuses": _rows(conn, provider_statuses, provider_statuses.c.id.in_(found.statuses)),
        "crm_notes": _rows(conn, crm_notes, crm_notes.c.id.in_(found.notes)),
        "acknowledgements": _rows(conn, acknowledgements, _acks_filter(found)),
        "escalation_clocks": _rows(conn, sla_clocks, sla_clocks.c.conversation_id.in_(found.conversations)),
        "surveys": _rows(conn, surveys, _surveys_filter(found)),
        # what admins did about the person; the admin's own network address is theirs, not the person's
        "console_audit": [{k: v for k, v in row._mapping.items() if k != "address"}
                          for row in _audit_rows(conn, found)],
        "crm_records": _rows(conn, crm_links, _link_filter(found)),
        "crm_directory": _rows(conn, crm_directory, _directory_filter(conn, found)),
        "opt_outs": _rows(conn, opt_outs, opt_outs.c.address.in_(_phones(found))),
        "dead_letters": _rows(conn, dead_letters, _letters_filter(found)),
        "attachments": [{"sha256": sha, "stored": attachments.path_for(sha).exists()}
                        for sha in sorted(found.attachments)],
    }
    return json.loads(json.dumps(data, default=str))


def erase(conn: Connection, found: Holdings, *, key: bytes, requested_by: str,
          crm: dict[str, str] | None = None) -> dict[str, Any]:
    """Delete every row held about the person, scrub their identifiers elsewhere, write the tombstones.

    Returns the summary kept in the tombstones: rows removed per table. Attachment files are removed afterwards
    (``remove_files``), once the transaction has committed.
    """
    counts: dict[str, int] = {}

    def remove(table: Table, *where: Any) -> None:
        counts[table.name] = counts.get(table.name, 0) + conn.execute(delete(table).where(*where)).rowcount

    for conversation_id, other in found.handed_over.items():
        conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(customer_id=other))
    remove(dead_letters, _letters_filter(found))
    remove(delivery_log, delivery_log.c.outbox_id.in_(found.outbox))
    remove(outbox, outbox.c.id.in_(found.outbox))
    remove(send_log, send_log.c.send_id.in_(found.sends))
    remove(sends, sends.c.id.in_(found.sends))
    remove(provider_statuses, provider_statuses.c.id.in_(found.statuses))
    remove(crm_directory, _directory_filter(conn, found))  # before the links that name the person's records
    remove(crm_links, _link_filter(found))
    remove(crm_notes, crm_notes.c.id.in_(found.notes))
    remove(acknowledgements, _acks_filter(found))
    remove(sla_clocks, sla_clocks.c.conversation_id.in_(found.conversations))
    remove(surveys, _surveys_filter(found))
    remove(messages, messages.c.id.in_(found.messages))
    remove(inbox, inbox.c.id.in_(found.inbox))
    remove(thread_keys, thread_keys.c.conversation_id.in_(found.conversations))
    remove(conversations, conversations.c.id.in_(found.conversations))
    remove(opt_outs, opt_outs.c.address.in_(_phones(found)))
    remove(merge_suggestions, or_(merge_suggestions.c.customer_a.in_(found.family),
                                  merge_suggestions.c.customer_b.in_(found.family)))
    remove(merges, or_(merges.c.survivor_id.in_(found.family), merges.c.absorbed_id.in_(found.family)))
    remove(identities, identities.c.customer_id.in_(found.family))
    conn.execute(update(customers).where(customers.c.id.in_(found.family)).values(merged_into=None))
    remove(customers, customers.c.id.in_(found.family))
    counts["scrubbed"] = _scrub_elsewhere(conn, found) + _scrub_audit(conn, found)
    summary = {"removed": {name: n for name, n in counts.items() if n}, "crm": crm or {}}
    now = utcnow()
    hashes = sorted({identifier_hash(key, kind, value) for kind, value in found.identifiers})
    for digest in hashes:
        conn.execute(tombstones.insert().values(identifier_hash=digest, erased_at=now,
                                                requested_by=requested_by[:128], summary=summary))
    return summary


def _scrub_elsewhere(conn: Connection, found: Holdings) -> int:
    """Replace the person's identifiers in rows that are not theirs, and their name in those rows; how many rows
    changed."""
    values = sorted({v for _, v in found.identifiers} | set(found.needles()), key=len, reverse=True)
    if not values:
        return 0
    # a name is erased only beside one of the identifiers: another person may well have the same name
    names = sorted((n for n in found.names if len(n) >= 3), key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(v) for v in [*values, *names]), re.IGNORECASE)
    changed = 0
    targets: list[tuple[Table, str]] = [
        (messages, "data"), (crm_notes, "text"), (dead_letters, "reason"), (delivery_log, "detail"),
        (send_log, "detail"), (merges, "detail"), (merge_suggestions, "reason"), (crm_links, "data"),
        (inbox, "last_error"), (outbox, "last_error"), (sends, "last_error"), (outbox, "fields")]
    for table, column_name in targets:
        column = table.c[column_name]
        matches = or_(*[cast(column, Text).icontains(v, autoescape=True) for v in values])
        for row in conn.execute(select(table).where(matches)).all():
            current = getattr(row, column_name)
            if isinstance(current, str):
                new: Any = pattern.sub(ERASED, current)
            else:
                new = json.loads(pattern.sub(ERASED, json.dumps(current, ensure_ascii=False)))
            where = [c == getattr(row, c.name) for c in table.primary_key.columns]
            conn.execute(update(table).where(*where).values({column_name: new}))
            changed += 1
    for row_id in found.shared_inbox:
        body = conn.execute(select(inbox.c.body).where(inbox.c.id == row_id)).scalar_one()
        text = bytes(body).decode("utf-8", "replace")
        conn.execute(update(inbox).where(inbox.c.id == row_id).values(
            body=pattern.sub(ERASED, text).encode("utf-8"), headers={}))
        changed += 1
    return changed


def _scrub_audit(conn: Connection, found: Holdings) -> int:
    """Keep each console audit row (that an admin acted, when, on what kind of record) without naming the person."""
    rows = _audit_rows(conn, found)
    if not rows:
        return 0
    pattern = _audit_pattern(found)
    for row in rows:
        target = pattern.sub(ERASED, row.target) if row.target else row.target
        detail = json.loads(pattern.sub(ERASED, json.dumps(row.detail, ensure_ascii=False)))
        conn.execute(update(admin_audit).where(admin_audit.c.id == row.id).values(target=target, detail=detail))
    return len(rows)


def remove_files(conn: Connection, found: Holdings, attachments: AttachmentStore) -> int:
    """Delete the attachment files no remaining message refers to; how many went."""
    removed = 0
    for sha in sorted(found.attachments):
        if conn.execute(select(messages.c.id).where(cast(messages.c.data, Text).contains(sha)).limit(1)).first():
            continue  # the same bytes came with another customer's message
        path: Path = attachments.path_for(sha)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def erased_before(conn: Connection, key: bytes, candidates: list[tuple[str, str]]) -> list[Any]:
    """Tombstones of any of these identifiers (``kind``, ``value``): when and at whose request they were erased."""
    hashes = [identifier_hash(key, kind, value) for kind, value in candidates]
    return list(conn.execute(select(tombstones).where(tombstones.c.identifier_hash.in_(hashes))
                             .order_by(tombstones.c.id)))
