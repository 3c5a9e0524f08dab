"""Salesforce: contact (Contact, Lead or Person Account), Case and one record per message, over the REST API.

Authentication and session handling come from ``simple-salesforce`` (username + password + security token,
OAuth 2.0 JWT bearer, or an instance URL + session id); every request goes through the injected
``requests.Session``. Writes are idempotent: the contact is upserted by an external-ID field holding the gateway
customer id, the Case by one holding the conversation id, and each message either by an external-ID field or
after a look-up of a marker (a field, or a reference line in the body) when the item is a retry.

A first message costs one API call: contact upsert, Case upsert and the message record go in one ``composite``
request with ``allOrNone`` and ``@{ref.id}`` references, so a crash leaves all three written or none.
The daily API budget is read from the ``Sforce-Limit-Info`` header of every answer; below the configured reserve,
or after ``REQUEST_LIMIT_EXCEEDED``, delivery pauses (RetryableError with ``retry_after``).
API reference: https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import requests
from pydantic import Field, SecretStr, model_validator
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed
from simple_salesforce.format import format_soql

from gateway.errors import PermanentError, RetryableError
from gateway.model import ChannelType
from gateway.plugins import ConnectorConfig, CrmConnector, DeliveryItem, DeliveryResult, LinkStore

log = logging.getLogger(__name__)

MARKER_PREFIX = "gateway-ref: "
HALTED = "PROCESSING_HALTED"
# Error codes worth another try although Salesforce answers them with a 4xx.
RETRYABLE_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "QUERY_TIMEOUT", "REQUEST_RUNNING_TOO_LONG"})
BODY_FIELDS = {"CaseComment": "CommentBody", "EmailMessage": "TextBody"}
LINK_FIELDS = {"Contact": "ContactId", "Account": "AccountId"}
_COMMENT_BYTES = 4000  # CaseComment.CommentBody holds at most 4,000 bytes
_LOOKBACK = 200


class SalesforceConfig(ConnectorConfig):
    """Settings of a ``salesforce`` CRM.

    Give exactly one way to authenticate: ``username`` + ``password`` + ``security_token``; ``username`` +
    ``consumer_key`` + ``private_key`` or ``private_key_file`` (OAuth JWT bearer); or ``instance_url`` +
    ``session_id``.
    """

    type: Literal["salesforce"] = "salesforce"
    domain: str = Field("login", description="Login host: login, test (sandboxes) or your My Domain (acme.my).")
    username: str | None = Field(None, description="Integration user (password and JWT auth).")
    password: SecretStr | None = Field(None, description="Password of the integration user.")
    security_token: SecretStr | None = Field(None, description="Security token (with password).")
    consumer_key: str | None = Field(None, description="Connected app consumer key (JWT auth).")
    private_key: SecretStr | None = Field(None, description="PEM private key that signs the JWT.")
    private_key_file: str | None = Field(None, description="Path of the PEM private key, instead of private_key.")
    instance_url: str | None = Field(None, pattern=r"^https://", description="Instance URL (session id auth).")
    session_id: SecretStr | None = Field(None, description="Access token / session id (with instance_url).")
    api_version: str = Field("59.0", pattern=r"^\d+\.\d$", description="REST API version (46.0 or later).")
    contact_object: str = Field("Contact", description="Contact, Lead, or Account for Person Accounts.")
    contact_external_id_field: str = Field(
        "Gateway_Customer_Id__c", description="External-ID field on the contact object holding the customer id.")
    case_external_id_field: str = Field(
        "Gateway_Conversation_Id__c", description="External-ID field on Case holding the conversation id.")
    case_contact_field: str | None = Field(
        None, description="Case field pointing at the contact; default ContactId (Contact) or AccountId (Account).")
    comment_object: str = Field("CaseComment", description="Object written for non-email messages.")
    email_object: str | None = Field("EmailMessage", description="Object written for email; none: comment_object.")
    message_body_field: str | None = Field(
        None, description="Body field of a custom message object (CommentBody/TextBody for the standard ones).")
    message_external_id_field: str | None = Field(
        None, description="External-ID field on the message objects holding the gateway message id (upserted).")
    message_marker_field: str | None = Field(
        None, description="Field holding the gateway message id, looked up before a retried insert.")
    api_reserve_percent: float = Field(10.0, ge=0, le=100, description="Daily API calls left to other apps, %.")
    api_reserve_calls: int = Field(0, ge=0, description="Daily API calls left to other apps (the larger wins).")
    budget_pause_seconds: float = Field(900.0, gt=0, description="Wait before trying again when out of budget.")
    mapping: str | None = Field(None, description="Mapping file; default mappings/salesforce.yaml.")
    timeout_seconds: float = Field(30.0, gt=0, le=120)

    @model_validator(mode="after")
    def _one_auth(self) -> SalesforceConfig:
        password = self.password is not None or self.security_token is not None
        jwt = self.consumer_key is not None or self.private_key is not None or self.private_key_file is not None
        session = self.session_id is not None
        if sum((password, jwt, session)) != 1:
            raise ValueError("give exactly one of password + security_token, consumer_key + private_key "
                             "(JWT bearer), or instance_url + session_id")
        if password and (self.username is None or self.password is None or self.security_token is None):
            raise ValueError("username, password and security_token are required together")
        if jwt:
            if self.username is None or self.consumer_key is None:
                raise ValueError("JWT bearer auth needs username and consumer_key")
            if (self.private_key is None) == (self.private_key_file is None):
                raise ValueError("JWT bearer auth needs one of private_key or private_key_file")
        if session and self.instance_url is None:
            raise ValueError("session_id needs instance_url")
        return self

    @property
    def link_field(self) -> str | None:
        return self.case_contact_field or LINK_FIELDS.get(self.contact_object)


@dataclass
class Budget:
    """The org's daily API usage as last reported, and a pause while it is spent down to the reserve."""

    used: int | None = None
    total: int | None = None
    paused_until: float = 0.0
    reason: str = ""

    @property
    def remaining(self) -> int | None:
        return None if self.used is None or self.total is None else self.total - self.used


@dataclass
class Subresult:
    """One composite subrequest's outcome."""

    reference: str
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def errors_of(body: Any) -> list[dict[str, Any]]:
    """Salesforce's error array (``[{"message", "errorCode", "fields"}]``), whatever wraps it."""
    if isinstance(body, dict):
        body = body.get("errors") if "errors" in body else [body]
    return [e for e in body or [] if isinstance(e, dict)] if isinstance(body, list) else []


def first_error(body: Any) -> dict[str, Any]:
    """The error that caused a failure, skipping ``PROCESSING_HALTED`` (a rolled-back sibling)."""
    found = errors_of(body)
    return next((e for e in found if e.get("errorCode") != HALTED), found[0] if found else {})


def duplicate_match(body: Any) -> str | None:
    """The id of the record a duplicate rule matched, from a DUPLICATES_DETECTED error's ``duplicateResult``."""
    for error in errors_of(body):
        result = error.get("duplicateResult") or {}
        for match in result.get("matchResults") or []:
            for record in match.get("matchRecords") or []:
                record_id = (record.get("record") or {}).get("Id")
                if record_id:
                    return str(record_id)
    return None


class SalesforceCrm(CrmConnector):
    """Salesforce: contact per customer, Case per conversation, CaseComment or EmailMessage per message."""

    type_name = "salesforce"
    Config = SalesforceConfig
    summary = "Salesforce: contact and Case upserts by external id, comments or emails, composite, API budget"
    default_mapping = "salesforce.yaml"
    config: SalesforceConfig
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, name: str, config: SalesforceConfig, context: Any) -> None:
        super().__init__(name, config, context)
        self._sf: Salesforce | None = None
        self.budget = Budget()

    # -- session -------------------------------------------------------------------------------------------------
    def client(self) -> Salesforce:
        """The logged-in simple-salesforce client (logs in on first use and after an expired session)."""
        if self._sf is not None:
            return self._sf
        cfg = self.config
        common: dict[str, Any] = {"session": self.context.http, "version": cfg.api_version}
        try:
            if cfg.session_id is not None:
                self._sf = Salesforce(instance_url=cfg.instance_url, session_id=cfg.session_id.get_secret_value(),
                                      **common)
            elif cfg.consumer_key is not None:
                key_file = str(self.context.base_dir / cfg.private_key_file) if cfg.private_key_file else None
                self._sf = Salesforce(username=cfg.username, consumer_key=cfg.consumer_key, domain=cfg.domain,
                                      privatekey_file=key_file,
                                      privatekey=cfg.private_key.get_secret_value() if cfg.private_key else None,
                                      **common)
            else:
                assert cfg.password is not None and cfg.security_token is not None
                self._sf = Salesforce(username=cfg.username, password=cfg.password.get_secret_value(),
                                      security_token=cfg.security_token.get_secret_value(), domain=cfg.domain,
                                      **common)
        except SalesforceAuthenticationFailed as exc:
            # credentials are fixed by an admin: keep the messages waiting rather than dead-lettering them all
            raise RetryableError(f"Salesforce login failed: {exc.code}", code=str(exc.code or "AUTH_FAILED"),
                                 retry_after=self.config.budget_pause_seconds) from None
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise RetryableError(f"Salesforce login unreachable: {type(exc).__name__}", code="network") from None
        except OSError as exc:
            raise PermanentError(f"cannot read the private key file: {exc.strerror}", code="private_key_file",
                                 field="private_key_file") from None
        return self._sf

    def _reauthenticate(self) -> bool:
        """Log in again after INVALID_SESSION_ID; False when the session came from the config (cannot renew)."""
        if self.config.session_id is not None:
            return False
        self._sf = None
        self.client()
        return True

    # -- HTTP ----------------------------------------------------------------------------------------------------
    def data_path(self, path: str) -> str:
        """A REST path under /services/data/vXX.X/ (as composite subrequests name their resources)."""
        return f"/services/data/v{self.config.api_version}/{path.lstrip('/')}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One REST call: tracks the API budget, re-authenticates once on INVALID_SESSION_ID."""
        for attempt in (1, 2):
            sf = self.client()
            try:
                response = sf.session.request(method, sf.base_url + path.lstrip("/"), headers=dict(sf.headers),
                                              timeout=self.config.timeout_seconds, **kwargs)
            except (requests.Timeout, requests.ConnectionError) as exc:
                raise RetryableError(f"Salesforce unreachable: {type(exc).__name__}", code="network") from None
            self.track(response.headers.get("Sforce-Limit-Info"))
            if response.status_code == 401 and attempt == 1 and self._code(response) == "INVALID_SESSION_ID" \
                    and self._reauthenticate():
                log.info("Salesforce session expired for %s: logged in again", self.name)
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _code(response: requests.Response) -> str | None:
        try:
            return first_error(response.json()).get("errorCode")
        except ValueError:
            return None

    def call(self, method: str, path: str, *, prefix: str = "", **kwargs: Any) -> Any:
        """A REST call whose failure is classified; returns the JSON body (None for 204)."""
        response = self.request(method, path, **kwargs)
        if response.status_code >= 300:
            self.raise_for(response.status_code, self._json(response), response.headers, prefix=prefix)
        return self._json(response)

    @staticmethod
    def _json(response: requests.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    # -- API budget ----------------------------------------------------------------------------------------------
    @property
    def reserve(self) -> int:
        total = self.budget.total or 0
        return max(self.config.api_reserve_calls, int(total * self.config.api_reserve_percent / 100))

    def track(self, limit_info: str | None) -> None:
        """Read ``Sforce-Limit-Info: api-usage=N/M``; pause when fewer than the reserve are left."""
        if not limit_info:
            return
        usage = Salesforce.parse_api_usage(limit_info).get("api-usage")
        if usage is None:
            return
        self.budget.used, self.budget.total = usage.used, usage.total
        remaining = self.budget.remaining
        if remaining is not None and remaining < self.reserve:
            self.pause(f"daily API budget at {usage.used}/{usage.total}, reserve {self.reserve}")

    def pause(self, reason: str) -> None:
        self.budget.paused_until = self.clock() + self.config.budget_pause_seconds
        self.budget.reason = reason
        log.warning("Salesforce %s: pausing delivery for %.0fs: %s", self.name, self.config.budget_pause_seconds,
                    reason)

    def check_budget(self) -> None:
        """Raise RetryableError while delivery is paused; after the pause one call goes through to re-measure."""
        wait = self.budget.paused_until - self.clock()
        if wait > 0:
            code = "REQUEST_LIMIT_EXCEEDED" if "REQUEST_LIMIT_EXCEEDED" in self.budget.reason else "API_BUDGET"
            raise RetryableError(f"Salesforce delivery paused: {self.budget.reason}", code=code, retry_after=wait)

    # -- errors --------------------------------------------------------------------------------------------------
    def raise_for(self, status: int, body: Any, headers: Mapping[str, str] | None = None, *,
                  prefix: str = "", mapped: Mapping[str, Any] | None = None) -> None:
        """Raise RetryableError or PermanentError for a failed answer, keeping Salesforce's errorCode."""
        error = first_error(body)
        code = str(error.get("errorCode") or status)
        text = str(error.get("message") or f"HTTP {status}")[:500]
        message = f"Salesforce answered {status} {code}: {text}"
        if code == "REQUEST_LIMIT_EXCEEDED":
            self.pause(f"REQUEST_LIMIT_EXCEEDED: {text}")
            raise RetryableError(message, code=code, retry_after=self.config.budget_pause_seconds)
        if status == 429 or status >= 500 or code in RETRYABLE_CODES:
            retry_after = (headers or {}).get("Retry-After")
            raise RetryableError(message, code=code, retry_after=float(retry_after)
                                 if retry_after and retry_after.isdigit() else None)
        if code == "INVALID_SESSION_ID":
            raise RetryableError(message, code=code, retry_after=self.config.budget_pause_seconds)
        fields = [str(f) for f in error.get("fields") or []]
        named = None
        if fields:
            named = f"{prefix}.{fields[0]}" if prefix else fields[0]
            if mapped is not None and named not in mapped and fields[0] in mapped:
                named = fields[0]
        raise PermanentError(message, code=code, field=named)

    # -- payloads ------------------------------------------------------------------------------------------------
    @staticmethod
    def group(fields: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """The mapped fields under ``prefix.`` (``case.Subject`` -> ``Subject``), empty values left out."""
        start = prefix + "."
        return {k[len(start):]: v for k, v in fields.items() if k.startswith(start) and v not in (None, "")}

    def contact_body(self, item: DeliveryItem) -> dict[str, Any]:
        customer = item.customer
        phone, email = customer.first("phone") or customer.first("whatsapp"), customer.first("email")
        body: dict[str, Any] = {"LastName": customer.display_name or phone or email or f"Customer {customer.id[:8]}"}
        if self.config.contact_object == "Contact":
            body.update({k: v for k, v in (("MobilePhone", phone), ("Email", email)) if v})
        return {**body, **self.group(item.fields, "contact")}

    def case_body(self, item: DeliveryItem, contact_ref: str | None) -> dict[str, Any]:
        body = self.group(item.fields, "case")
        if contact_ref is not None and self.config.link_field:
            body[self.config.link_field] = contact_ref
        return body

    def message_object(self, item: DeliveryItem) -> str:
        if item.message.channel is ChannelType.EMAIL and self.config.email_object:
            return self.config.email_object
        return self.config.comment_object

    def body_field(self, obj: str) -> str:
        return self.config.message_body_field or BODY_FIELDS.get(obj, "Body__c")

    def uses_body_marker(self) -> bool:
        return self.config.message_external_id_field is None and self.config.message_marker_field is None

    def message_body(self, item: DeliveryItem, case_ref: str) -> dict[str, Any]:
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
        return {**body, **self.group(item.fields, "activity")}

    def message_subrequest(self, item: DeliveryItem, case_ref: str) -> dict[str, Any]:
        obj = self.message_object(item)
        body = self.message_body(item, case_ref)
        if self.config.message_external_id_field:
            return {"method": "PATCH", "referenceId": "message", "body": body, "url": self.data_path(
                f"sobjects/{obj}/{self.config.message_external_id_field}/{quote(item.message.id, safe='')}")}
        return {"method": "POST", "referenceId": "message", "body": body, "url": self.data_path(f"sobjects/{obj}")}

    def upsert_subrequest(self, obj: str, ext_field: str, value: str, body: dict[str, Any],
                          reference: str) -> dict[str, Any]:
        return {"method": "PATCH", "referenceId": reference, "body": body,
                "url": self.data_path(f"sobjects/{obj}/{ext_field}/{quote(value, safe='')}")}

    # -- composite -----------------------------------------------------------------------------------------------
    def composite(self, subrequests: list[dict[str, Any]]) -> dict[str, Subresult]:
        """Run up to 25 subrequests in one API call with allOrNone; returns the results by reference."""
        if not 0 < len(subrequests) <= 25:
            raise ValueError("a composite request holds 1 to 25 subrequests")
        body = self.call("POST", "composite", json={"allOrNone": True, "compositeRequest": subrequests})
        results = {}
        for entry in (body or {}).get("compositeResponse", []):
            results[entry.get("referenceId")] = Subresult(entry.get("referenceId"), int(entry["httpStatusCode"]),
                                                          entry.get("body"), entry.get("httpHeaders") or {})
        return results

    def fail_composite(self, results: dict[str, Subresult], item: DeliveryItem) -> None:
        """Raise for the subrequest that failed (the others answer PROCESSING_HALTED)."""
        failed = [r for r in results.values() if r.status >= 300]
        if not failed:
            return
        cause = next((r for r in failed if first_error(r.body).get("errorCode") != HALTED), failed[0])
        prefix = {"contact": "contact", "case": "case", "message": "activity"}.get(cause.reference, "")
        if cause.reference == "message":
            error_fields = first_error(cause.body).get("fields") or []
            body_field = self.body_field(self.message_object(item))
            if error_fields and error_fields[0] in (body_field, "CommentBody", "TextBody"):
                prefix = ""
                cause = Subresult(cause.reference, cause.status, [{**first_error(cause.body), "fields": ["comment"]}])
        self.raise_for(cause.status, cause.body, cause.headers, prefix=prefix, mapped=item.fields)

    # -- idempotency look-ups ------------------------------------------------------------------------------------
    def query(self, soql: str) -> list[dict[str, Any]]:
        body = self.call("GET", "query", params={"q": soql}) or {}
        return list(body.get("records") or [])

    def find_case(self, conversation_id: str) -> str | None:
        records = self.query(format_soql("SELECT Id FROM Case WHERE {:literal} = {} LIMIT 1",
                                         self.config.case_external_id_field, conversation_id))
        return str(records[0]["Id"]) if records else None

    def already_written(self, item: DeliveryItem, case_id: str) -> str | None:
        """The id of the record an earlier attempt wrote for this message, if it landed."""
        obj = self.message_object(item)
        if self.config.message_marker_field:
            records = self.query(format_soql("SELECT Id FROM {:literal} WHERE {:literal} = {} LIMIT 1", obj,
                                             self.config.message_marker_field, item.message.id))
            return str(records[0]["Id"]) if records else None
        body_field = self.body_field(obj)
        records = self.query(format_soql(
            "SELECT Id, {:literal} FROM {:literal} WHERE ParentId = {} ORDER BY CreatedDate DESC LIMIT {:literal}",
            body_field, obj, case_id, str(_LOOKBACK)))
        marker = MARKER_PREFIX + item.message.id
        return next((str(r["Id"]) for r in records if str(r.get(body_field) or "").rstrip().endswith(marker)), None)

    # -- delivery ------------------------------------------------------------------------------------------------
    def adopt_duplicate(self, item: DeliveryItem, record_id: str, links: LinkStore) -> None:
        """A duplicate rule matched an existing contact: stamp our external id on it and link it."""
        self.call("PATCH", f"sobjects/{self.config.contact_object}/{record_id}", prefix="contact",
                  json={self.config.contact_external_id_field: item.customer.id})
        links.put("customer", item.customer.id, record_id, {"adopted": True})

    def deliver(self, item: DeliveryItem, links: LinkStore) -> DeliveryResult:
        self.check_budget()
        calls = 0
        case_link = links.get("conversation", item.conversation.id)
        case_id = case_link[0] if case_link else None
        needs_lookup = item.attempt > 1 and self.config.message_external_id_field is None
        if needs_lookup:
            if case_id is None:
                case_id = self.find_case(item.conversation.id)
                calls += 1
                if case_id is not None:
                    links.put("conversation", item.conversation.id, case_id)
            if case_id is not None:
                calls += 1
                if self.already_written(item, case_id) is not None:
                    return DeliveryResult("already_written", case_id, calls=calls)
        for _ in range(3):
            result = self._write(item, links, case_id)
            calls += result.calls
            if result.operation != "retry":
                return DeliveryResult(result.operation, result.remote_id, result.detail, calls=calls)
            case_id = result.remote_id
        raise RetryableError("Salesforce write did not settle after adopting a duplicate", code="DUPLICATES_DETECTED")

    def _write(self, item: DeliveryItem, links: LinkStore, case_id: str | None) -> DeliveryResult:
        contact_link = links.get("customer", item.customer.id)
        subrequests = []
        contact_ref = contact_link[0] if contact_link else "@{contact.id}"
        if contact_link is None:
            subrequests.append(self.upsert_subrequest(
                self.config.contact_object, self.config.contact_external_id_field, item.customer.id,
                self.contact_body(item), "contact"))
        if case_id is None:
            subrequests.append(self.upsert_subrequest(
                "Case", self.config.case_external_id_field, item.conversation.id,
                self.case_body(item, contact_ref), "case"))
        subrequests.append(self.message_subrequest(item, case_id or "@{case.id}"))
        results = self.composite(subrequests)
        contact = results.get("contact")
        if contact is not None and contact.status >= 300 \
                and first_error(contact.body).get("errorCode") == "DUPLICATES_DETECTED":
            matched = duplicate_match(contact.body)
            if matched is not None:
                self.adopt_duplicate(item, matched, links)
                return DeliveryResult("retry", case_id, calls=2)
        message = results.get("message")
        if case_id is not None and message is not None and message.status >= 300 \
                and first_error(message.body).get("errorCode") in ("ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY"):
            # the linked Case was deleted: upsert it again by its external id
            return DeliveryResult("retry", None, calls=1)
        self.fail_composite(results, item)
        if contact is not None:
            links.put("customer", item.customer.id, str(contact.body["id"]))
        case = results.get("case")
        if case is not None:
            case_id = str(case.body["id"])
            links.put("conversation", item.conversation.id, case_id, {"created": bool(case.body.get("created"))})
        created = case is not None and bool(case.body.get("created"))
        operation = ("case_created" if created else "case_updated") if case is not None else "message_added"
        record = results["message"].body or {}
        return DeliveryResult(operation, case_id, detail=f"{self.message_object(item)} {record.get('id', '')}")

    def check_online(self) -> str:
        limits = self.call("GET", "limits") or {}
        daily = limits.get("DailyApiRequests") or {}
        if "Max" not in daily:
            raise RuntimeError("Salesforce answered /limits without DailyApiRequests")
        return f"daily API requests: {daily.get('Remaining')} of {daily.get('Max')} left"
