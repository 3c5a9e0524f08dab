"""Salesforce: contact (Contact, Lead or Person Account), Case and one record per message, over the REST API.

Writes are idempotent: the contact is upserted by an external-ID field holding the gateway customer id, the Case by
one holding the conversation id, and each message either by an external-ID field or after a look-up of a marker (a
field, or a reference line in the body) when the item is a retry.

A first message costs one API call: contact upsert, Case upsert and the message record go in one ``composite``
request with ``allOrNone`` and ``@{ref.id}`` references, so a crash leaves all three written or none. Before a
customer's first write, one SOQL query looks for an existing record with the customer's email or phone; exactly one
match is adopted (our external id is written onto it in the same composite request) instead of creating another.
A contact created for a customer without a name carries a placeholder (the phone or address); it is renamed once
the customer's name is known, unless someone changed it in Salesforce meanwhile.
Login, requests, error classification and the API budget live in ``connectors.salesforce.client``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from simple_salesforce.format import format_soql

from connectors.salesforce import automation
from connectors.salesforce.client import (
    HALTED,
    SalesforceClient,
    SalesforceConfig,
    Subresult,
    duplicate_match,
    first_error,
)
from connectors.salesforce.replies import SalesforceReplies
from gateway.crmfields import UPDATE_KEY, FieldCatalog, field_list
from gateway.errors import DeliveryError, OnlineCheckFailed, PermanentError, RetryableError
from gateway.model import ChannelType
from gateway.plugins import (
    ConnectorContext,
    ContactErasure,
    CrmConnector,
    DeliveryItem,
    DeliveryResult,
    Escalation,
    LinkStore,
    Rating,
    SatisfactionRatings,
    TicketEscalation,
    TicketStatus,
    TicketStatuses,
    online_check,
)
from gateway.records import RawRecord
from gateway.routing import priority_refusal

log = logging.getLogger(__name__)

MARKER_PREFIX = "gateway-ref: "
BODY_FIELDS = {"CaseComment": "CommentBody", "EmailMessage": "TextBody"}
# The fields an existing record may hold a customer's identifiers in, per contact object and identifier kind.
MATCH_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "Contact": {"email": ("Email",), "phone": ("Phone", "MobilePhone")},
    "Lead": {"email": ("Email",), "phone": ("Phone", "MobilePhone")},
    "Account": {"email": ("PersonEmail",), "phone": ("Phone", "PersonMobilePhone")},
}
# Records that cannot be adopted: business accounts, and converted leads (read-only).
MATCH_SCOPES = {"Account": "IsPersonAccount = true", "Lead": "IsConverted = false"}
_MATCH_LIMIT = 3
_COMMENT_BYTES = 4000  # CaseComment.CommentBody holds at most 4,000 bytes
_LOOKBACK = 200


@dataclass(frozen=True)
class WriteAgain:
    """A composite write refused for a reason since dealt with (a duplicate rule's match adopted, a deleted Case
    forgotten): nothing was written, and the write goes again with ``case_id`` after ``calls`` API calls."""

    case_id: str | None
    calls: int


class SalesforceCrm(CrmConnector, SalesforceReplies, ContactErasure, TicketStatuses, TicketEscalation,
                    SatisfactionRatings):
    """Salesforce: contact per customer, Case per conversation, CaseComment or EmailMessage per message.

    Agent replies (polled or posted by a Flow) and notes for agents: ``connectors.salesforce.replies``.
    """

    type_name = "salesforce"
    Config = SalesforceConfig
    summary = "Salesforce: contact and Case upserts by external id, comments or emails, composite, API budget"
    default_mapping = "salesforce.yaml"
    config: SalesforceConfig

    def __init__(self, name: str, config: SalesforceConfig, context: ConnectorContext) -> None:
        super().__init__(name, config, context)
        self.api = SalesforceClient(name, config, context)

    @staticmethod
    def mapped_objects(config: SalesforceConfig | None) -> dict[str, tuple[str, ...]]:
        """The objects behind each mapping prefix: ``activity.`` fields go to the comment or the email object."""
        fields = SalesforceConfig.model_fields
        contact = config.contact_object if config else fields["contact_object"].default
        comment = config.comment_object if config else fields["comment_object"].default
        email = config.email_object if config else fields["email_object"].default
        return {"contact": (contact,), "case": ("Case",), "activity": tuple(o for o in (comment, email) if o)}

    @classmethod
    def mapping_fields(cls, config: Any) -> FieldCatalog:
        """``comment``, ``public``, and the standard fields of ``mappings/fields/salesforce.yaml`` (custom ``__c``
        fields taken as written); an object not listed there (a custom one) takes any field."""
        known = field_list("salesforce")
        standard: dict[str, list[str]] = known["objects"]

        def names(objects: tuple[str, ...]) -> frozenset[str] | None:
            lists = [standard.get(obj) for obj in objects]
            return None if any(names is None for names in lists) else frozenset(n for ns in lists for n in ns or ())

        prefixes = {prefix: names(objects) for prefix, objects in cls.mapped_objects(config).items()}
        return FieldCatalog("salesforce", frozenset(known["fields"]), prefixes, custom_suffix="__c",
                            case_sensitive=False)

    def describe_fields(self) -> FieldCatalog:
        """The fields Salesforce's describe calls createable or updateable, for each object the mapping writes."""
        described: dict[str, frozenset[str]] = {}

        def names(objects: tuple[str, ...]) -> frozenset[str]:
            for obj in objects:
                if obj not in described:
                    body = self.api.call("GET", f"sobjects/{obj}/describe") or {}
                    described[obj] = frozenset(f["name"] for f in body.get("fields", [])
                                               if f.get("createable") or f.get("updateable"))
            return frozenset(n for obj in objects for n in described[obj])

        prefixes = {prefix: names(objects) for prefix, objects in self.mapped_objects(self.config).items()}
        return FieldCatalog("salesforce", frozenset(field_list("salesforce")["fields"]), prefixes,
                            case_sensitive=False)

    # -- payloads ------------------------------------------------------------------------------------------------
    @staticmethod
    def prefixed_fields(fields: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """The mapped fields under ``prefix.`` (``case.Subject`` -> ``Subject``), empty values left out."""
        start = prefix + "."
        return {k[len(start):]: v for k, v in fields.items() if k.startswith(start) and v not in (None, "")}

    def contact_body(self, item: DeliveryItem) -> dict[str, Any]:
        """The contact record for the item's customer, with the mapped ``contact.`` fields."""
        customer = item.customer
        phone, email = customer.first("phone") or customer.first("whatsapp"), customer.first("email")
        body: dict[str, Any] = {"LastName": customer.display_name or phone or email or f"Customer {customer.id[:8]}"}
        if self.config.contact_object == "Contact":
            body.update({k: v for k, v in (("MobilePhone", phone), ("Email", email)) if v})
        return {**body, **self.prefixed_fields(item.fields, "contact")}

    def case_body(self, item: DeliveryItem, contact_ref: str | None) -> dict[str, Any]:
        """The Case for the item's conversation: the mapped ``case.`` fields, pointing at the contact."""
        body = self.prefixed_fields(item.fields, "case")
        if contact_ref is not None and self.config.link_field:
            body[self.config.link_field] = contact_ref
        return body

    def case_changes(self, item: DeliveryItem, case_id: str) -> tuple[dict[str, Any], int]:
        """The ``case.`` fields the item's rules change on its existing Case, and the API calls spent: a new
        Priority is compared with the Case's own first (one query), since a priority only ever rises."""
        changes = self.prefixed_fields(item.fields.get(UPDATE_KEY) or {}, "case")
        wanted = next((key for key in changes if key.lower() == "priority"), None)
        if wanted is None:
            return changes, 0
        record = self.api.call("GET", f"sobjects/Case/{quote(case_id, safe='')}", params={"fields": "Priority"})
        order = self.config.priority_order or field_list("salesforce")["priorities"]
        refusal = priority_refusal((record or {}).get("Priority"), str(changes[wanted]), order)
        if refusal is not None:
            log.info("%s: Case %s: %s", self.name, case_id, refusal)
            del changes[wanted]
        return changes, 1

    def message_object(self, item: DeliveryItem) -> str:
        """The object a message is written as: the email object for email, else the comment object."""
        if item.message.channel is ChannelType.EMAIL and self.config.email_object:
            return self.config.email_object
        return self.config.comment_object

    def body_field(self, obj: str) -> str:
        """The field of ``obj`` that holds the message text."""
        return self.config.message_body_field or BODY_FIELDS.get(obj, "Body__c")

    def uses_body_marker(self) -> bool:
        """Whether the message id travels as a reference line in the body (no field is configured for it)."""
        return self.config.message_external_id_field is None and self.config.message_marker_field is None

    def message_body(self, item: DeliveryItem, case_ref: str) -> dict[str, Any]:
        """The message record under the Case, with the mapped ``activity.`` fields."""
        message = item.message
        obj = self.message_object(item)
        text = str(item.fields.get("comment") or message.text or message.full_text or "(empty message)")
        marker = f"\n\n{MARKER_PREFIX}{message.id}" if self.uses_body_marker() else ""
        if obj == "CaseComment":
            room = _COMMENT_BYTES - len(marker.encode())
            text = text.encode()[:room].decode(errors="ignore")
        text += marker
        if obj == "CaseComment":
            body: dict[str, Any] = {"ParentId": case_ref, "CommentBody": text,
                                    "IsPublished": bool(item.fields.get("public", False))}
        elif obj == "EmailMessage":
            sender = next((i.value for i in message.sender.identifiers if i.kind == "email"), None)
            to = [i.value for p in message.recipients for i in p.identifiers if i.kind == "email"]
            body = {"ParentId": case_ref, "Subject": message.subject or "", "TextBody": text, "Incoming": True,
                    "Status": "0", "MessageDate": message.sent_at.isoformat().replace("+00:00", "Z")}
            body.update({k: v for k, v in (("FromAddress", sender), ("FromName", message.sender.display_name),
                                           ("ToAddress", ";".join(to)), ("HtmlBody", message.html)) if v})
        else:
            body = {"ParentId": case_ref, self.body_field(obj): text}
        if self.config.message_marker_field:
            body[self.config.message_marker_field] = message.id
        return {**body, **self.prefixed_fields(item.fields, "activity")}

    def message_subrequest(self, item: DeliveryItem, case_ref: str) -> dict[str, Any]:
        """The composite subrequest writing the message: an upsert by external id, or an insert."""
        obj = self.message_object(item)
        body = self.message_body(item, case_ref)
        if self.config.message_external_id_field:
            return {"method": "PATCH", "referenceId": "message", "body": body, "url": self.api.data_path(
                f"sobjects/{obj}/{self.config.message_external_id_field}/{quote(item.message.id, safe='')}")}
        return {"method": "POST", "referenceId": "message", "body": body, "url": self.api.data_path(f"sobjects/{obj}")}

    def upsert_subrequest(self, obj: str, ext_field: str, value: str, body: dict[str, Any],
                          reference: str) -> dict[str, Any]:
        """A composite subrequest upserting ``obj`` by its external-id field."""
        return {"method": "PATCH", "referenceId": reference, "body": body,
                "url": self.api.data_path(f"sobjects/{obj}/{ext_field}/{quote(value, safe='')}")}

    def fail_composite(self, results: dict[str, Subresult], item: DeliveryItem) -> None:
        """Raise for the subrequest that failed (the others answer PROCESSING_HALTED)."""
        failed = [r for r in results.values() if r.status >= 300]
        if not failed:
            return
        cause = next((r for r in failed if first_error(r.body).get("errorCode") != HALTED), failed[0])
        prefix = {"contact": "contact", "case": "case", "caseChanges": "case",
                  "message": "activity"}.get(cause.reference, "")
        if cause.reference == "message":
            error_fields = first_error(cause.body).get("fields") or []
            body_field = self.body_field(self.message_object(item))
            if error_fields and error_fields[0] in (body_field, "CommentBody", "TextBody"):
                prefix = ""
                cause = Subresult(cause.reference, cause.status, [{**first_error(cause.body), "fields": ["comment"]}])
        self.api.raise_for(cause.status, cause.body, cause.headers, prefix=prefix, mapped=item.fields)

    def find_case(self, conversation_id: str) -> str | None:
        """The id of the Case holding the conversation id, if one exists."""
        records = self.api.query(format_soql("SELECT Id FROM Case WHERE {:literal} = {} LIMIT 1",
                                             self.config.case_external_id_field, conversation_id))
        return str(records[0]["Id"]) if records else None

    def written_record(self, item: DeliveryItem, case_id: str) -> str | None:
        """The id of the record an earlier attempt wrote for this message, if it landed."""
        obj = self.message_object(item)
        if self.config.message_marker_field:
            records = self.api.query(format_soql("SELECT Id FROM {:literal} WHERE {:literal} = {} LIMIT 1", obj,
                                                 self.config.message_marker_field, item.message.id))
            return str(records[0]["Id"]) if records else None
        body_field = self.body_field(obj)
        records = self.api.query(format_soql(
            "SELECT Id, {:literal} FROM {:literal} WHERE ParentId = {} ORDER BY CreatedDate DESC LIMIT {:literal}",
            body_field, obj, case_id, str(_LOOKBACK)))
        marker = MARKER_PREFIX + item.message.id
        return next((str(r["Id"]) for r in records if str(r.get(body_field) or "").rstrip().endswith(marker)), None)

    # -- existing contacts ---------------------------------------------------------------------------------------
    def own_condition(self, item: DeliveryItem) -> str:
        """SOQL condition for the record already holding the customer's id (written by an earlier attempt)."""
        return format_soql("{:literal} = {}", self.config.contact_external_id_field, item.customer.id)

    def contact_query(self, item: DeliveryItem, *, match: bool) -> str:
        """SOQL for the customer's own record and, with ``match``, the records holding its email or phone."""
        obj = self.config.contact_object
        conditions = []
        for kind, names in (MATCH_FIELDS.get(obj, {}) if match else {}).items():
            values = list(dict.fromkeys(value for k, value in item.customer.identifiers if k == kind))
            for name in names if values else ():
                conditions.append(format_soql("{:literal} = {}", name, values[0]) if len(values) == 1
                                  else format_soql("{:literal} IN {}", name, values))
        where = self.own_condition(item)
        if conditions:
            matches = " OR ".join(conditions)
            where += f" OR ({MATCH_SCOPES[obj]} AND ({matches}))" if obj in MATCH_SCOPES else f" OR {matches}"
        select = format_soql("SELECT Id, {:literal} FROM {:literal}", self.config.contact_external_id_field, obj)
        return f"{select} WHERE {where} LIMIT {_MATCH_LIMIT}"

    def can_match(self, item: DeliveryItem) -> bool:
        """Whether existing records are matched for this customer (enabled, a known object, an email or phone)."""
        fields = MATCH_FIELDS.get(self.config.contact_object)
        return self.config.match_existing_contacts and fields is not None \
            and any(kind in fields for kind, _ in item.customer.identifiers)

    def contact_for(self, item: DeliveryItem, links: LinkStore, retry: bool) -> tuple[str | None, int]:
        """For a customer without a link: the one existing record to adopt (None: upsert by external id), and the
        API calls spent.

        A record already holding the customer's id was written by an attempt whose answer was lost: it is linked,
        so that it is never upserted again with a first write's body (an agent's edits, an adopted record's own
        fields stay). A retry always looks; a first attempt looks while matching existing records anyway.
        """
        if links.get("customer", item.customer.id) is not None:
            return None, 0
        match = self.can_match(item)
        if not (match or retry):
            return None, 0
        records = self.api.query(self.contact_query(item, match=match))
        calls = 1
        ext_field = self.config.contact_external_id_field
        if match and len(records) == _MATCH_LIMIT and not any(r.get(ext_field) == item.customer.id for r in records):
            # the limit may have cut our own record off: ask for it alone
            records += self.api.query(self.contact_query(item, match=False))
            calls += 1
        own = next((str(r["Id"]) for r in records if r.get(ext_field) == item.customer.id), None)
        if own is not None:
            links.put("customer", item.customer.id, own, {"recovered": True})
            return None, calls
        free = [str(r["Id"]) for r in records if not r.get(ext_field)]  # others belong to other customers
        if len(free) > 1:
            log.info("customer %s matches %s%d Salesforce %s records by email or phone; adopting none",
                     item.customer.id, "at least " if len(records) >= _MATCH_LIMIT else "", len(free),
                     self.config.contact_object)
        return (free[0] if match and len(free) == 1 else None), calls

    def created_link(self, item: DeliveryItem) -> dict[str, Any]:
        """Link data for a contact the gateway created: the placeholder name it gave a customer without one."""
        return {} if item.customer.display_name else {"placeholder": self.contact_body(item).get("LastName")}

    def refresh_name(self, item: DeliveryItem, link: tuple[str, dict[str, Any]], links: LinkStore) -> int:
        """Replace the placeholder name of a contact the gateway created once the customer's name is known, unless
        someone changed it in Salesforce; the API calls spent. A failure leaves it for the next message."""
        record_id, data = link
        placeholder, name = data.get("placeholder"), item.customer.display_name
        if not placeholder or not name or name == placeholder:
            return 0
        obj = self.config.contact_object
        calls = 1
        try:
            records = self.api.query(format_soql("SELECT Id, LastName FROM {:literal} WHERE Id = {}", obj, record_id))
            if records and records[0].get("LastName") == placeholder:
                calls += 1
                self.api.call("PATCH", f"sobjects/{obj}/{record_id}", prefix="contact", json={"LastName": name})
            else:
                log.info("Salesforce %s %s was renamed in Salesforce; its name is left alone", obj, record_id)
        except DeliveryError as exc:
            log.warning("Salesforce %s %s keeps its placeholder name for now: %s", obj, record_id, exc)
            return calls
        links.put("customer", item.customer.id, record_id, {k: v for k, v in data.items() if k != "placeholder"})
        return calls

    # -- delivery ------------------------------------------------------------------------------------------------
    def adopt_duplicate(self, item: DeliveryItem, record_id: str, links: LinkStore) -> None:
        """A duplicate rule matched an existing contact: stamp our external id on it and link it."""
        self.api.call("PATCH", f"sobjects/{self.config.contact_object}/{record_id}", prefix="contact",
                      json={self.config.contact_external_id_field: item.customer.id})
        links.put("customer", item.customer.id, record_id, {"adopted": True})

    def deliver(self, item: DeliveryItem, links: LinkStore) -> DeliveryResult:
        """One message in one composite request.

        A retry (the earlier attempt's outcome may be unknown: it may have been carried out and its answer lost)
        first recovers every link that attempt may have made, the contact's and the Case's, and looks for the message
        record, so nothing is written twice and nothing is upserted again with a first write's body.
        """
        self.api.check_budget()
        retry = item.attempt > 1
        adopt, calls = self.contact_for(item, links, retry)
        contact_link = links.get("customer", item.customer.id)
        if contact_link is not None:
            calls += self.refresh_name(item, contact_link, links)
        case_link = links.get("conversation", item.conversation.id)
        case_id = case_link[0] if case_link else None
        if retry and case_id is None:
            case_id = self.find_case(item.conversation.id)
            calls += 1
            if case_id is not None:
                links.put("conversation", item.conversation.id, case_id, {"recovered": True})
        if retry and case_id is not None and self.config.message_external_id_field is None:
            calls += 1
            if self.written_record(item, case_id) is not None:
                return DeliveryResult("already_written", case_id, calls=calls)
        changes: dict[str, Any] = {}
        if case_id is not None:
            changes, spent = self.case_changes(item, case_id)
            calls += spent
        for _ in range(3):
            outcome = self._write(item, links, case_id, adopt, changes)
            calls += outcome.calls
            if isinstance(outcome, DeliveryResult):
                return replace(outcome, calls=calls)
            case_id = outcome.case_id
        raise RetryableError("Salesforce write did not settle after adopting a duplicate", code="DUPLICATES_DETECTED")

    def _write(self, item: DeliveryItem, links: LinkStore, case_id: str | None,
               adopt: str | None = None, changes: Mapping[str, Any] | None = None) -> DeliveryResult | WriteAgain:
        """One composite write; ``adopt`` is an existing record to link the customer to (our external id stamped),
        ``changes`` the fields the item's rules change on its existing Case.

        ``WriteAgain`` when the write was refused for a reason it has just dealt with, and nothing was written.
        """
        contact_link = links.get("customer", item.customer.id)
        subrequests = []
        contact_ref = contact_link[0] if contact_link else adopt or "@{contact.id}"
        if contact_link is None and adopt is not None:
            subrequests.append({"method": "PATCH", "referenceId": "contact",
                                "url": self.api.data_path(f"sobjects/{self.config.contact_object}/{adopt}"),
                                "body": {self.config.contact_external_id_field: item.customer.id}})
        elif contact_link is None:
            subrequests.append(self.upsert_subrequest(
                self.config.contact_object, self.config.contact_external_id_field, item.customer.id,
                self.contact_body(item), "contact"))
        if case_id is None:
            subrequests.append(self.upsert_subrequest(
                "Case", self.config.case_external_id_field, item.conversation.id,
                self.case_body(item, contact_ref), "case"))
        elif changes:
            subrequests.append({"method": "PATCH", "referenceId": "caseChanges", "body": dict(changes),
                                "url": self.api.data_path(f"sobjects/Case/{quote(case_id, safe='')}")})
        subrequests.append(self.message_subrequest(item, case_id or "@{case.id}"))
        results = self.api.composite(subrequests)
        contact = results.get("contact")
        if contact is not None and contact.status >= 300 \
                and first_error(contact.body).get("errorCode") == "DUPLICATES_DETECTED":
            matched = duplicate_match(contact.body)
            if matched is not None:
                self.adopt_duplicate(item, matched, links)
                return WriteAgain(case_id, calls=2)
        message = results.get("message")
        if case_id is not None and message is not None and message.status >= 300 \
                and first_error(message.body).get("errorCode") in ("ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY"):
            # the linked Case was deleted: upsert it again by its external id
            return WriteAgain(None, calls=1)
        self.fail_composite(results, item)
        if contact is not None and adopt is not None:
            links.put("customer", item.customer.id, adopt, {"adopted": True})
        elif contact is not None:
            links.put("customer", item.customer.id, str(contact.body["id"]), self.created_link(item))
        case = results.get("case")
        if case is not None:
            case_id = str(case.body["id"])
            links.put("conversation", item.conversation.id, case_id, {"created": bool(case.body.get("created"))})
        created = case is not None and bool(case.body.get("created"))
        operation = ("case_created" if created else "case_updated") if case is not None \
            else ("case_changed" if changes else "message_added")
        record = results["message"].body or {}
        return DeliveryResult(operation, case_id, detail=f"{self.message_object(item)} {record.get('id', '')}")

    def erase_contact(self, remote_id: str) -> str:
        """Delete the contact record, as ``erase_contacts`` says; a record already deleted counts as deleted."""
        obj = self.config.contact_object
        if self.config.erase_contacts == "keep":
            return f"{obj} {remote_id} kept (erase_contacts: keep)"
        try:
            self.api.call("DELETE", f"sobjects/{obj}/{quote(remote_id, safe='')}")
        except PermanentError as exc:
            if exc.code not in ("NOT_FOUND", "ENTITY_IS_DELETED"):
                raise
        return f"{obj} {remote_id} deleted (in the recycle bin for 15 days)"

    @online_check
    def check_online(self) -> str:
        """Read the org's daily API limit (tests credentials and reachability)."""
        limits = self.api.call("GET", "limits") or {}
        daily = limits.get("DailyApiRequests") or {}
        if "Max" not in daily:
            raise OnlineCheckFailed("Salesforce answered /limits without DailyApiRequests")
        return f"daily API requests: {daily.get('Remaining')} of {daily.get('Max')} left"

    # -- automation: closed Cases, escalations, ratings (connectors.salesforce.automation) ---------------------------
    def ticket_statuses(self, record: RawRecord, links: LinkStore) -> list[TicketStatus]:
        return automation.ticket_statuses(record, links)

    def escalate(self, conversation_id: str, escalation: Escalation, links: LinkStore) -> str:
        return automation.escalate(self, conversation_id, escalation, links)

    def record_rating(self, conversation_id: str, rating: Rating, links: LinkStore) -> None:
        automation.record_rating(self, conversation_id, rating, links)
