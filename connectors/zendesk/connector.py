"""Zendesk Support: an end user per customer, a ticket per conversation, public comments for messages.

Idempotency: users are upserted by ``external_id`` (the gateway's customer id); tickets are created with an
``Idempotency-Key`` and ``external_id`` = conversation id; every write carries the gateway message ids in the
audit ``metadata``. A retry after an uncertain attempt first looks for them, so nothing is written twice, and links
the user and ticket that attempt made, so neither is written again with a first write's body.

Tags: a message adds the tags of its channel to the conversation's ticket. The Update Ticket endpoint documents only
``tags``, the whole list, which replaces the ticket's ("If you use the Update Ticket endpoint to add one or more tags
to a ticket, the new tags replace any existing tags"); ``additional_tags`` is documented for
``tickets/update_many.json?ids=`` only
(https://developer.zendesk.com/documentation/ticketing/managing-tickets/adding-tags-to-tickets-without-overwriting-existing-tags/).
So the link keeps the ticket's tags as our last write's answer gave them, and a write that adds one sends that list
plus the new tags under ``safe_update`` with the same answer's ``updated_at``: if anyone changed the ticket since,
Zendesk refuses it (409) and the ticket is read again
(https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#protecting-against-ticket-update-collisions).
A ticket whose tags the link does not know is read first, only when a message brings a tag.

Throughput: the pending messages of one conversation are coalesced into one comment (Zendesk allows about 30
updates per ticket per 10 minutes), and when many conversations wait at once the batch endpoints take them 100 at a
time (``connectors.zendesk.bulk``).
"""

from __future__ import annotations

import hashlib
import logging
from functools import cached_property
from typing import Any

from connectors.zendesk import automation, export, setup, users
from connectors.zendesk.bulk import BatchDelivery, Outcomes, outage
from connectors.zendesk.client import ENDED, ZendeskClient, ZendeskConfig, classify, is_closed_error, result_for
from connectors.zendesk.replies import ZendeskReplies, split, verify
from gateway.attachments import SCHEME as STORED
from gateway.crmfields import UPDATE_KEY, FieldCatalog, field_list
from gateway.directory import CrmDirectory
from gateway.errors import (
    INTERNAL,
    DeliveryError,
    OnlineCheckFailed,
    PermanentError,
    RetryableError,
    as_delivery_error,
)
from gateway.plugins import (
    AgentReplies,
    AgentReply,
    ConnectorContext,
    ContactErasure,
    ContactMerge,
    CrmConnector,
    CursorStore,
    DeliveryItem,
    DeliveryResult,
    DirectorySync,
    Escalation,
    InboxSink,
    InternalNotes,
    LinkStore,
    PublicComments,
    Rating,
    ReplyPolling,
    ReplySetup,
    SatisfactionRatings,
    TicketEscalation,
    TicketStatus,
    TicketStatuses,
    online_check,
)
from gateway.records import InboxItem, RawRecord
from gateway.routing import highest, priority_refusal
from gateway.webhooks import HookRequest

log = logging.getLogger(__name__)
MARKER = "gateway_message_id"
CLOSED = "closed"
TICKET_FIELDS = ("tags", *field_list("zendesk")["ticket"])  # written on a new ticket as the mapping rendered them
PRIORITIES: tuple[str, ...] = tuple(field_list("zendesk")["priorities"])
_MAX_AUDIT_PAGES = 20


def coalesced_body(items: list[DeliveryItem]) -> str:
    """One comment body for a conversation's pending messages, each under its time and channel."""
    bodies = [str(item.fields.get("comment") or item.message.text or "(empty message)") for item in items]
    if len(items) == 1:
        return bodies[0]
    return "\n\n".join(f"[{item.message.sent_at:%Y-%m-%d %H:%M} UTC, {item.message.channel.value}]\n{body}"
                       for item, body in zip(items, bodies, strict=True))


def ticket_value(name: str, value: Any) -> Any:
    """A mapped ticket field as Zendesk takes it: ids rendered by a template arrive as text, Zendesk wants numbers."""
    return int(value) if name.endswith("_id") and str(value).isdigit() else value


def wanted_changes(items: list[DeliveryItem]) -> dict[str, Any]:
    """The ticket fields the items' rules may change on an existing ticket (tags are added by ``update_payload``);
    of several messages' priorities, the highest."""
    changes: dict[str, Any] = {}
    priorities = []
    for item in items:
        for name, value in (item.fields.get(UPDATE_KEY) or {}).items():
            if name == "tags" or value in (None, ""):
                continue
            if name == "priority":
                priorities.append(str(value))
            else:
                changes[name] = ticket_value(name, value)
    if priorities:
        changes["priority"] = highest(priorities, PRIORITIES)
    return changes


def ticket_meta(ticket: dict[str, Any]) -> dict[str, Any]:
    """What the link keeps of a ticket Zendesk returned: status, the stamp of our last write, its priority and tags."""
    meta = {"status": ticket.get("status"), "updated_at": ticket.get("updated_at"), "priority": ticket.get("priority")}
    if isinstance(ticket.get("tags"), list):
        meta["tags"] = [str(tag) for tag in ticket["tags"]]
    return meta


def missing_tags(items: list[DeliveryItem], known: dict[str, Any]) -> list[str]:
    """The tags of the items' channels that the ticket, as the link knows it, lacks (all of them if it knows none)."""
    have = set(known.get("tags") or [])
    return [tag for tag in dict.fromkeys(str(t) for item in items for t in (item.fields.get("tags") or []))
            if tag not in have]


def tags_writable(known: dict[str, Any]) -> bool:
    """Whether the link holds the ticket's tag list together with the stamp of the answer that gave it."""
    return isinstance(known.get("tags"), list) and bool(known.get("updated_at"))


def marker(items: list[DeliveryItem]) -> dict[str, str]:
    """The audit metadata naming the gateway message ids a write carries."""
    return {MARKER: ",".join(item.message.id for item in items)}


class ZendeskCrm(CrmConnector, DirectorySync, ContactMerge, ContactErasure, AgentReplies, ReplySetup, ReplyPolling,
                 InternalNotes, PublicComments, TicketStatuses, TicketEscalation, SatisfactionRatings):
    """Zendesk Support: end user per customer, ticket per conversation, public comment per message."""

    type_name = "zendesk"
    Config = ZendeskConfig
    summary = "Zendesk Support: users, tickets and comments; idempotent, rate-limited, batched under backlog"
    default_mapping = "zendesk.yaml"
    max_groups = 100
    config: ZendeskConfig

    def __init__(self, name: str, config: ZendeskConfig, context: ConnectorContext) -> None:  # type: ignore[override]
        super().__init__(name, config, context)
        self.client = ZendeskClient(config, context, name)

    @classmethod
    def mapping_fields(cls, config: Any) -> FieldCatalog:
        """The names in ``mappings/fields/zendesk.yaml``."""
        known = field_list("zendesk")
        return FieldCatalog("zendesk", frozenset(known["fields"]) | frozenset(known["ticket"]),
                            {"user": frozenset(known["user"])}, reserved=known["reserved"])

    # -- payloads ----------------------------------------------------------------------------------------------
    def user_payload(self, item: DeliveryItem) -> dict[str, Any]:
        """The end user for the item's customer, keyed by ``external_id`` = customer id."""
        customer = item.customer
        phone, email = customer.first("phone"), customer.first("email")
        user: dict[str, Any] = {
            "name": customer.display_name or phone or email or f"Customer {customer.id[:8]}",
            "external_id": customer.id,
            "skip_verify_email": True,
        }
        if phone:
            user["phone"] = phone
        if email:
            user["email"] = email
        mapped = {name[len("user."):]: int(value) if name.endswith("_id") and str(value).isdigit() else value
                  for name, value in item.fields.items() if name.startswith("user.") and value not in (None, "")}
        return {**mapped, **user}

    def comment(self, items: list[DeliveryItem], user_id: str) -> dict[str, Any]:
        """One comment carrying the items' messages, authored by the customer's user, with uploaded attachments."""
        comment: dict[str, Any] = {"body": coalesced_body(items), "public": bool(items[0].fields.get("public", True)),
                                   "author_id": int(user_id)}
        tokens = self.upload_tokens(items)
        if tokens:
            comment["uploads"] = tokens
        return comment

    def upload_tokens(self, items: list[DeliveryItem]) -> list[str]:
        """Upload stored attachments up to ``upload_max_bytes``; larger ones stay as links in the comment text."""
        tokens = []
        for item in items:
            for attachment in item.message.attachments:
                if not attachment.location.startswith(STORED) or (attachment.size or 0) > self.config.upload_max_bytes:
                    continue
                body = self.client.call(
                    "POST", "/uploads", params={"filename": attachment.filename},
                    data=self.context.attachments.read(attachment.location),
                    headers={"Content-Type": attachment.content_type})
                tokens.append(body["upload"]["token"])
        return tokens

    def ticket_payload(self, items: list[DeliveryItem], user_id: str, followup_of: str | None = None) -> dict[str, Any]:
        """A new ticket for the items' conversation: its first comment, requester, mapped ticket fields and marker."""
        first = items[0]
        ticket: dict[str, Any] = {
            "comment": self.comment(items, user_id),
            "requester_id": int(user_id),
            "external_id": first.conversation.id,
            "metadata": marker(items),
        }
        for name in TICKET_FIELDS:
            value = first.fields.get(name)
            if value in (None, ""):
                continue
            ticket[name] = ticket_value(name, value)
        if followup_of is not None:
            ticket["via_followup_source_id"] = int(followup_of)
        return ticket

    @staticmethod
    def ticket_payload_tags(items: list[DeliveryItem]) -> list[str]:
        """The tags ``ticket_payload`` creates the items' ticket with."""
        return [str(tag) for tag in items[0].fields.get("tags") or []]

    def update_payload(self, items: list[DeliveryItem], user_id: str,
                       known: dict[str, Any] | None = None) -> dict[str, Any]:
        """A comment on the conversation's ticket, with the marker, the tags of the messages' channels and the
        fields their rules change on every message (``known``: what the link knows of the ticket, its priority and
        tags). Tags it lacks are sent as its whole list (``tags``), to go with ``safe_update`` and the stamp of the
        answer that gave the list (``needs_reading`` says when the link does not have them)."""
        update: dict[str, Any] = {"comment": self.comment(items, user_id), "metadata": marker(items)}
        missing = missing_tags(items, known or {})
        if missing and tags_writable(known or {}):  # the ticket gains the tags of the channel each message came from
            update["tags"] = [*(known or {})["tags"], *missing]
        elif missing:  # never a list we did not read: it would replace the ticket's tags
            log.warning("%s: conversation %s: ticket tags unknown, %s not added", self.name,
                        items[0].conversation.id, ", ".join(missing))
        changes = wanted_changes(items)
        if "priority" in changes:
            refusal = priority_refusal((known or {}).get("priority"), changes["priority"], PRIORITIES)
            if refusal is not None:
                log.info("%s: conversation %s: %s", self.name, items[0].conversation.id, refusal)
                del changes["priority"]
        return {**changes, **update}

    def needs_priority(self, items: list[DeliveryItem], known: dict[str, Any]) -> bool:
        """Whether a rule raises the priority of a ticket whose current priority the link does not know."""
        return "priority" in wanted_changes(items) and "priority" not in known

    def needs_reading(self, items: list[DeliveryItem], known: dict[str, Any]) -> bool:
        """Whether the ticket must be read before the write: its priority or, for a tag to add, its tags unknown."""
        return self.needs_priority(items, known) or (bool(missing_tags(items, known)) and not tags_writable(known))

    # -- users -------------------------------------------------------------------------------------------------
    def adopt_user(self, item: DeliveryItem, links: LinkStore) -> str | None:
        """The existing Zendesk user holding one of the customer's identifiers, if exactly one does."""
        found = {remote for kind, value in item.customer.identifiers if kind in ("email", "phone")
                 for remote in links.find_records(kind, value)}
        if len(found) != 1:
            if found:
                log.info("customer %s matches %d Zendesk users; creating none of them twice, adopting none",
                         item.customer.id, len(found))
            return None
        user_id = found.pop()
        links.put("customer", item.customer.id, user_id, {"adopted": True})
        return user_id

    def find_own_user(self, customer_id: str) -> str | None:
        """The user holding the customer id as ``external_id`` (users/search takes ids only there, no syntax)."""
        body = self.client.call("GET", "/users/search", params={"external_id": customer_id})
        found = body.get("users") or []
        return str(found[0]["id"]) if found else None

    def find_user(self, item: DeliveryItem, links: LinkStore) -> str | None:
        """The user Zendesk holds for a customer the directory does not know yet (one created since the last
        sync): one search, linked when exactly one end user answers; None to create one."""
        if not self.config.search_before_create:
            return None
        found = users.search(self.client, item.customer, self.context.default_region)
        if found is None:
            return None
        user_id, ours = found
        links.put("customer", item.customer.id, user_id, {} if ours else {"adopted": True})
        return user_id

    def lookup_user(self, item: DeliveryItem, links: LinkStore, search: bool = True) -> str | None:
        """The customer's Zendesk user id when it has one: linked (its placeholder name replaced once a better
        name is known), adopted from the directory, recovered, or found by a search (``search``: the batched path
        leaves it to the directory sync and to ``create_or_update_many``'s match by email, so that a backlog
        stays at a few calls per hundred messages).

        On a retry the earlier upsert may have landed with its answer lost: the user it made is linked as it is, not
        upserted again, since ``create_or_update`` would put the first write's name back over an agent's edit.
        """
        link = links.get("customer", item.customer.id)
        if link is not None:
            users.refresh_name(self, item.customer, link, links)
            return link[0]
        adopted = self.adopt_user(item, links)
        if adopted is not None:
            return adopted
        if item.uncertain:
            recovered = self.find_own_user(item.customer.id)
            if recovered is not None:
                links.put("customer", item.customer.id, recovered, {"recovered": True})
                return recovered
        return self.find_user(item, links) if search else None

    def link_created_user(self, item: DeliveryItem, user_id: str, links: LinkStore) -> None:
        """Link a user the gateway wrote, remembering the placeholder name it gave a customer without one."""
        placeholder = None if item.customer.display_name else self.user_payload(item)["name"]
        links.put("customer", item.customer.id, user_id, {"placeholder": placeholder} if placeholder else {})

    def ensure_user(self, item: DeliveryItem, links: LinkStore) -> str:
        """The customer's Zendesk user id: linked, adopted, recovered, found, or upserted by external id."""
        known = self.lookup_user(item, links)
        if known is not None:
            return known
        body = self.client.call("POST", "/users/create_or_update", json={"user": self.user_payload(item)})
        user_id = str(body["user"]["id"])
        self.link_created_user(item, user_id, links)
        return user_id

    # -- tickets -----------------------------------------------------------------------------------------------
    def create_ticket(self, items: list[DeliveryItem], user_id: str, links: LinkStore,
                      followup_of: str | None = None, extra_tags: list[str] | None = None) -> str:
        """Create the conversation's ticket under an ``Idempotency-Key`` and link it; its id."""
        key = items[0].idempotency_key
        if len(items) > 1:  # a coalesced write: the key names exactly the messages it carries
            ids = ",".join(item.message.id for item in items)
            key += f"-{hashlib.sha1(ids.encode()).hexdigest()[:12]}"
        if followup_of is None and items[0].conversation.previous_id:
            previous = links.get("conversation", items[0].conversation.previous_id)
            followup_of = previous[0] if previous and previous[1].get("status") == CLOSED else None
        if followup_of:
            key += f"-followup-{followup_of}"
        ticket = self.ticket_payload(items, user_id, followup_of)
        if extra_tags:
            ticket["tags"] = [*ticket.get("tags", []), *extra_tags]
        try:
            body = self.client.call("POST", "/tickets", json={"ticket": ticket},
                                    headers={"Idempotency-Key": key[:255]})
        except PermanentError as exc:
            # the key was used with another body (an attachment uploaded again has a new token): the first
            # request created the ticket, so find it rather than fail
            found = self.find_ticket(items[0].conversation.id) if exc.code == "IdempotentRequestError" else None
            if found is None:
                raise
            return self.link_ticket(items[0].conversation.id, found, links)
        ticket_id = str(body["ticket"]["id"])
        links.put("conversation", items[0].conversation.id, ticket_id, ticket_meta(body["ticket"]))
        return ticket_id

    def append(self, items: list[DeliveryItem], user_id: str, ticket_id: str, links: LinkStore,
               *, stamp_checked: bool = False) -> tuple[str, str]:
        """Add the items as one comment to the conversation's ticket.

        A ticket solved or closed in Zendesk since our last write ends the conversation there: the messages start a
        new ticket that refers to it (a follow-up of a closed ticket). ``safe_update`` with the ``updated_stamp`` of
        our last write makes Zendesk tell us when someone changed the ticket, so its status is re-read only then.
        """
        conversation = items[0].conversation.id
        link = links.get("conversation", conversation)
        known = link[1] if link and link[0] == ticket_id else {}
        if known.get("status") in ENDED:
            return self.continue_on_new_ticket(items, user_id, ticket_id, known["status"], links)
        if self.needs_reading(items, known) and not stamp_checked:
            return self.append_after_reading(items, user_id, ticket_id, links)
        payload = self.update_payload(items, user_id, known)
        if known.get("updated_at") and (not stamp_checked or "tags" in payload):
            # a tag list replaces the ticket's: it is only written over the very ticket it was read from
            payload.update(safe_update=True, updated_stamp=known["updated_at"])
        response = self.client.request("PUT", f"/tickets/{ticket_id}", json={"ticket": payload})
        if response.status_code == 200:
            ticket = (response.json() or {}).get("ticket") or {}
            links.put("conversation", conversation, ticket_id, ticket_meta(ticket))
            return "comment_added", ticket_id
        if response.status_code == 409 and not stamp_checked:
            return self.append_after_reading(items, user_id, ticket_id, links)
        if is_closed_error(response) or response.status_code == 404:
            recovered = self.recover_unlinked_ticket(items, user_id, ticket_id, links)
            if recovered is not None:
                return recovered
            if response.status_code == 404:
                return "ticket_recreated", self.create_ticket(items, user_id, links)
            return self.continue_on_new_ticket(items, user_id, ticket_id, CLOSED, links)
        classify(response)
        raise RetryableError(f"unexpected Zendesk status {response.status_code}")

    def append_after_reading(self, items: list[DeliveryItem], user_id: str, ticket_id: str,
                             links: LinkStore) -> tuple[str, str]:
        """Read the ticket (someone changed it since our last write, or its priority is not known), then append."""
        current = self.client.call("GET", f"/tickets/{ticket_id}")["ticket"]
        links.put("conversation", items[0].conversation.id, ticket_id, ticket_meta(current))
        return self.append(items, user_id, ticket_id, links, stamp_checked=True)

    def continue_on_new_ticket(self, items: list[DeliveryItem], user_id: str, old_ticket_id: str, old_status: str,
                               links: LinkStore) -> tuple[str, str]:
        """A new ticket for a conversation whose ticket ended: a follow-up of a closed one (Zendesk links them),
        and for a solved one a ``followup-of-N`` tag, since Zendesk only records follow-ups of closed tickets."""
        links.put("conversation", items[0].conversation.id, old_ticket_id, {"status": old_status})
        recovered = self.recover_unlinked_ticket(items, user_id, old_ticket_id, links)
        if recovered is not None:
            return recovered
        followup_of = old_ticket_id if old_status == CLOSED else None
        extra_tags = [] if followup_of else [f"followup-of-{old_ticket_id}"]
        return "followup_ticket_created", self.create_ticket(items, user_id, links, followup_of, extra_tags)

    def written_ids(self, ticket_id: str) -> set[str]:
        """Message ids recorded in the ticket's audit metadata (writes of earlier attempts that landed)."""
        found: set[str] = set()
        url: str | None = f"/tickets/{ticket_id}/audits?page[size]=100"
        for _ in range(_MAX_AUDIT_PAGES):
            if url is None:
                break
            body = self.client.call("GET", url)
            for audit in body.get("audits", []):
                value = ((audit.get("metadata") or {}).get("custom") or {}).get(MARKER)
                if isinstance(value, str):
                    found.update(value.split(","))
            next_url = (body.get("links") or {}).get("next") if (body.get("meta") or {}).get("has_more") else None
            url = next_url.split("/api/v2", 1)[1] if next_url else None
        return found

    def unwritten(self, items: list[DeliveryItem], ticket_id: str) -> list[DeliveryItem]:
        """The items whose message ids the ticket's audits do not hold."""
        written = self.written_ids(ticket_id)
        return [item for item in items if item.message.id not in written]

    def find_ticket(self, conversation_id: str) -> dict[str, Any] | None:
        """The conversation's newest ticket that is not closed, found by its ``external_id``."""
        body = self.client.call("GET", "/tickets", params={"external_id": conversation_id})
        tickets = [t for t in body.get("tickets", []) if t.get("status") != CLOSED]
        return max(tickets, key=lambda t: t["id"]) if tickets else None

    def link_ticket(self, conversation_id: str, ticket: dict[str, Any], links: LinkStore) -> str:
        """Link the conversation to a ticket found in Zendesk; its id."""
        links.put("conversation", conversation_id, str(ticket["id"]),
                  {"status": ticket.get("status"), "priority": ticket.get("priority")})
        return str(ticket["id"])

    def recover_unlinked_ticket(self, items: list[DeliveryItem], user_id: str, linked_ticket_id: str,
                                links: LinkStore) -> tuple[str, str] | None:
        """On a retry, the new ticket an earlier attempt opened and died before linking: link it and write there
        only what it lacks. None on a first attempt, or when the conversation has no other ticket.

        The ``Idempotency-Key`` of that attempt guards against a second ticket for two hours only
        (ticketing/introduction/#idempotency), so the ticket is looked up by the conversation id.
        """
        if not any(item.uncertain for item in items):
            return None
        found = self.find_ticket(items[0].conversation.id)
        if found is None or str(found["id"]) == linked_ticket_id:
            return None
        found_id = self.link_ticket(items[0].conversation.id, found, links)
        pending = self.unwritten(items, found_id)
        return self.append(pending, user_id, found_id, links) if pending else ("already_written", found_id)

    def ticket_from_job(self, conversation_id: str, links: LinkStore) -> str | None:
        """The ticket a batch job created for this conversation, if a previous attempt queued one."""
        job = links.get("ticket_job", conversation_id)
        if job is None:
            return None
        response = self.client.request("GET", f"/job_statuses/{job[0]}")
        if response.status_code == 404:
            return None  # job statuses are kept for about a day
        if response.status_code != 200:
            classify(response)
        status = response.json().get("job_status") or {}
        if status.get("status") in ("queued", "working"):
            raise RetryableError(f"Zendesk job {job[0]} is still running", code="job_pending", retry_after=10)
        result = result_for(status.get("results") or [], int(job[1].get("index", 0)))
        if result is None or not result.get("id") or result.get("error"):
            return None
        links.put("conversation", conversation_id, str(result["id"]), {"status": "new"})
        return str(result["id"])

    def ticket_for(self, items: list[DeliveryItem], links: LinkStore) -> str | None:
        """The conversation's ticket id, if it has one; a retry also asks an earlier batch job and Zendesk itself."""
        link = links.get("conversation", items[0].conversation.id)
        if link is None and any(item.uncertain for item in items):
            from_job = self.ticket_from_job(items[0].conversation.id, links)
            if from_job is not None:
                return from_job
            found = self.find_ticket(items[0].conversation.id)
            if found is not None:
                return self.link_ticket(items[0].conversation.id, found, links)
        return link[0] if link else None

    # -- delivery ----------------------------------------------------------------------------------------------
    def deliver_conversation(self, items: list[DeliveryItem], links: LinkStore) -> Outcomes:
        """One conversation's pending messages, in order, as one write (the careful path: a retry checks Zendesk
        before writing again)."""
        outcomes: Outcomes = {}
        try:
            user_id = self.ensure_user(items[0], links)
            ticket_id = self.ticket_for(items, links)
            if ticket_id is not None and any(item.uncertain for item in items):
                pending = self.unwritten(items, ticket_id)
                for item in items:
                    if item not in pending:
                        outcomes[item.outbox_id] = DeliveryResult("already_written", ticket_id, calls=0)
                items = pending
            if not items:
                return outcomes
            if ticket_id is None:
                operation, ticket_id = "ticket_created", self.create_ticket(items, user_id, links)
            else:
                operation, ticket_id = self.append(items, user_id, ticket_id, links)
        except Exception as exc:
            # every message of the group was part of the write: all of them are retried, and when the outcome is
            # uncertain the retry checks Zendesk before writing again
            error = as_delivery_error(exc)
            if error.code == INTERNAL:
                log.exception("%s: unexpected error delivering conversation %s", self.name, items[0].conversation.id)
            # a refusal wrote nothing: the head carries it and the rest are tried again after it
            for item in items[:1] if isinstance(error, PermanentError) else items:
                outcomes.setdefault(item.outbox_id, error)
            return outcomes
        detail = f"{len(items)} message(s) in one write" if len(items) > 1 else ""
        for item in items:
            outcomes[item.outbox_id] = DeliveryResult(operation, ticket_id, detail=detail)
        return outcomes

    def deliver(self, item: DeliveryItem, links: LinkStore) -> DeliveryResult:
        """One message, on the one-conversation path."""
        outcome = self.deliver_conversation([item], links)[item.outbox_id]
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    def deliver_groups(self, groups: list[list[DeliveryItem]], links: LinkStore) -> Outcomes:
        """Each conversation's pending messages as one write; from ``bulk_threshold`` conversations on, through the
        batch endpoints."""
        if len(groups) >= self.config.bulk_threshold:
            return BatchDelivery(self, links).deliver(groups)
        outcomes: Outcomes = {}
        for index, items in enumerate(groups):
            outcomes.update(self.deliver_conversation(items, links))
            refused = outage(outcomes.get(items[0].outbox_id))
            if refused is not None:  # Zendesk is refusing everything: the rest wait with it, costing no request
                for rest in groups[index + 1:]:
                    outcomes[rest[0].outbox_id] = refused
                break
        return outcomes

    @property
    def directory_sync_seconds(self) -> float:
        return self.config.directory_sync_seconds

    def sync_directory(self, directory: CrmDirectory, cursors: CursorStore, max_pages: int = 20) -> int:
        """Import end users created or changed since the last run (incremental export, cursor-based).

        https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/
        """
        key = f"zendesk-directory:{self.name}"
        state = cursors.get(key) or {}
        params: dict[str, Any] = {"cursor": state["cursor"]} if state.get("cursor") else {"start_time": 0}
        seen = 0
        for _ in range(max_pages):
            body = self.client.call("GET", "/incremental/users/cursor", params=params)
            records = []
            for user in body.get("users", []):
                remote_id = str(user["id"])
                if user.get("role") != "end-user" or user.get("active") is False or user.get("suspended"):
                    directory.remove_record(remote_id)
                    continue
                idents = [("email", user["email"])] if user.get("email") else []
                if user.get("phone") and not user.get("shared_phone_number"):
                    idents.append(("phone", user["phone"]))  # a shared number identifies nobody
                records.append((remote_id, idents))
            directory.replace_records(records)
            seen += len(records)
            if body.get("after_cursor"):
                cursors.put(key, {"cursor": body["after_cursor"]})
                params = {"cursor": body["after_cursor"]}
            if body.get("end_of_stream") or not body.get("after_cursor"):
                break
        return seen

    def merge_contacts(self, survivor_remote_id: str, absorbed_remote_id: str) -> None:
        """Merge two Zendesk users (an admin's merge carried into the CRM): the absorbed user into the survivor."""
        self.client.call("PUT", f"/users/{absorbed_remote_id}/merge", json={"user": {"id": int(survivor_remote_id)}})

    def erase_contact(self, remote_id: str) -> str:
        """Delete the user, then delete it permanently (Zendesk keeps a deleted user 30 days otherwise).

        https://developer.zendesk.com/api-reference/ticketing/users/users/#permanently-delete-user
        """
        self.client.call("DELETE", f"/users/{int(remote_id)}", ok=(200, 404))
        self.client.call("DELETE", f"/deleted_users/{int(remote_id)}", ok=(200, 404))
        return f"user {remote_id} deleted permanently"

    @online_check
    def check_online(self) -> str:
        """Read the authenticated user (tests the credentials: an anonymous answer is a refusal too)."""
        body = self.client.call("GET", "/users/me")
        user = body.get("user") or {}
        if not user.get("id") or user.get("role") not in ("agent", "admin"):
            raise OnlineCheckFailed("Zendesk did not accept the credentials (no agent or admin user)")
        return f"authenticated as {user.get('name')} ({user.get('role')})"

    # -- two-way: agents' replies and notes (connectors.zendesk.replies, .export, .setup) --------------------------
    @cached_property
    def replies(self) -> ZendeskReplies:
        return ZendeskReplies(self)

    def setup_replies(self, hook_url: str, *, dry_run: bool) -> list[str]:
        return setup.setup_replies(self, hook_url, dry_run=dry_run)

    def verify_reply_hook(self, request: HookRequest) -> None:
        verify(self, request)

    def split_reply_hook(self, request: HookRequest) -> list[InboxItem]:
        return split(request)

    def agent_replies(self, record: RawRecord, links: LinkStore) -> list[AgentReply]:
        return self.replies.agent_replies(record, links)

    @property
    def reply_poll_seconds(self) -> float:
        return self.config.reply_poll_seconds

    def poll_replies(self, sink: InboxSink, cursors: CursorStore) -> int:
        return export.poll(self, sink, cursors)

    def post_note(self, conversation_id: str, text: str, links: LinkStore, key: str) -> None:
        self.replies.post_note(conversation_id, text, links, key)

    def post_public_comment(self, conversation_id: str, text: str, links: LinkStore, key: str) -> None:
        self.replies.post_note(conversation_id, text, links, key, public=True)

    # -- automation: solved tickets, escalations, ratings (connectors.zendesk.automation) -----------------------------
    def ticket_statuses(self, record: RawRecord, links: LinkStore) -> list[TicketStatus]:
        return automation.ticket_statuses(record, links)

    def escalate(self, conversation_id: str, escalation: Escalation, links: LinkStore) -> str:
        return automation.escalate(self, conversation_id, escalation, links)

    def record_rating(self, conversation_id: str, rating: Rating, links: LinkStore) -> None:
        automation.record_rating(self, conversation_id, rating, links)
