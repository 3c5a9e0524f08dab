"""Salesforce REST client: settings, login, requests, error classification and the daily API budget.

Authentication and session handling come from ``simple-salesforce`` (username + password + security token,
OAuth 2.0 JWT bearer, or an instance URL + session id); every request goes through the injected
``requests.Session``. The daily API budget is read from the ``Sforce-Limit-Info`` header of every answer; below the
configured reserve, or after ``REQUEST_LIMIT_EXCEEDED``, delivery pauses (RetryableError with ``retry_after``) in
every worker process: the pause is kept in the connector context's shared rate limiter.
API reference: https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import requests
from pydantic import Field, SecretStr, field_validator, model_validator
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed

from gateway.errors import PermanentError, RetryableError, retry_after_seconds
from gateway.plugins import ConnectorContext, CrmConfig

log = logging.getLogger(__name__)

HALTED = "PROCESSING_HALTED"
# Error codes worth another try although Salesforce answers them with a 4xx.
RETRYABLE_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "QUERY_TIMEOUT", "REQUEST_RUNNING_TOO_LONG"})
MIN_API_VERSION = 46.0
LINK_FIELDS = {"Contact": "ContactId", "Account": "AccountId"}
# Far above any org's real request rate: the limiter only carries the budget pause between processes.
_SHARED_PAUSE_RATE = 600_000.0


class SalesforceConfig(CrmConfig):
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
    api_version: str = Field("59.0", pattern=r"^\d+\.\d$", description=(
        "REST API version, 46.0 or later: earlier versions do not say whether an upsert created its record."))
    contact_object: str = Field("Contact", description="Contact, Lead, or Account for Person Accounts.")
    contact_external_id_field: str = Field(
        "Gateway_Customer_Id__c", description="External-ID field on the contact object holding the customer id.")
    case_external_id_field: str = Field(
        "Gateway_Conversation_Id__c", description="External-ID field on Case holding the conversation id.")
    case_contact_field: str | None = Field(
        None, description="Case field pointing at the contact; default ContactId (Contact) or AccountId (Account).")
    priority_order: list[str] | None = Field(
        None, min_length=1, description="Case Priority values from low to high, when your org's picklist differs "
                                        "from Low, Medium, High: a mapping rule only ever raises a Case's priority.")
    comment_object: str = Field("CaseComment", description="Object written for non-email messages.")
    email_object: str | None = Field("EmailMessage", description="Object written for email; none: comment_object.")
    message_body_field: str | None = Field(
        None, description="Body field of a custom message object (CommentBody/TextBody for the standard ones).")
    message_external_id_field: str | None = Field(
        None, description="External-ID field on the message objects holding the gateway message id (upserted).")
    message_marker_field: str | None = Field(
        None, description="Field holding the gateway message id, looked up before a retried insert.")
    match_existing_contacts: bool = Field(
        True, description="Before creating a contact, adopt the one existing record with the customer's email or "
                          "phone (Contact, Lead, Account only).")
    api_reserve_percent: float = Field(10.0, ge=0, le=100, description="Daily API calls left to other apps, %.")
    api_reserve_calls: int = Field(0, ge=0, description="Daily API calls left to other apps (the larger wins).")
    budget_pause_seconds: float = Field(900.0, gt=0, description="Wait before trying again when out of budget.")
    timeout_seconds: float = Field(30.0, gt=0, le=120)
    reply_poll_seconds: float = Field(
        60.0, ge=0, description="How often to look for agent replies (one query per object in reply_objects); "
                                "0: never, else at least 10.")
    reply_objects: list[Literal["CaseComment", "EmailMessage"]] = Field(
        ["CaseComment", "EmailMessage"], min_length=1,
        description="Objects polled for replies: published CaseComments, outgoing (sent) EmailMessages.")
    reply_poll_limit: int = Field(200, ge=1, le=2000, description="Rows read per object and poll (SOQL LIMIT).")
    poll_closed_cases: bool = Field(
        False, description="Each reply poll also looks for the gateway's Cases closed since the last one (one more "
                            "query a poll), so their customers are asked for a rating (`surveys:`).")
    reply_max_age_hours: float = Field(
        24.0, ge=0, description="Replies created longer ago are never sent (merged or re-imported cases); 0: any.")
    erase_contacts: Literal["delete", "keep"] = Field(
        "delete", description="What `gateway customers forget --crm` does with the person's contact record: delete "
                              "it (Salesforce keeps it 15 days in the recycle bin), or keep it for your own process.")
    reply_secret: SecretStr | None = Field(
        None, description="Key for agent replies posted to /crm-hooks/NAME (X-Gateway-Signature); unset: none taken.")

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

    @field_validator("api_version")
    @classmethod
    def _recent_api(cls, value: str) -> str:
        if float(value) < MIN_API_VERSION:
            raise ValueError(f"{value} is too old: use {MIN_API_VERSION:.1f} or later (only from 46.0 does "
                             "Salesforce report whether an upsert created its record)")
        return value

    @field_validator("reply_poll_seconds")
    @classmethod
    def _poll_interval(cls, value: float) -> float:
        if 0 < value < 10:
            raise ValueError("0 (off) or at least 10: each poll spends daily API calls")
        return value

    @property
    def link_field(self) -> str | None:
        """The Case field that points at the contact."""
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
        """Daily API calls left, if known."""
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


class SalesforceClient:
    """Logged-in REST access to one org: every answer's API usage is tracked, failures are classified.

    The budget pause is kept twice: in ``budget`` (this process, with the reason) and in the context's shared rate
    limiter, whose ``block`` stops every worker process.
    """

    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, name: str, config: SalesforceConfig, context: ConnectorContext) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.budget = Budget()
        self.shared = context.limiter(f"salesforce:{name}:budget", _SHARED_PAUSE_RATE)
        self._sf: Salesforce | None = None

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
        """Daily API calls left to other apps: the larger of the configured count and percentage."""
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
        """Stop delivering for ``budget_pause_seconds``, in this process and, through the shared limiter, all."""
        seconds = self.config.budget_pause_seconds
        self.budget.paused_until = self.clock() + seconds
        self.budget.reason = reason
        self.shared.block(seconds)
        log.warning("Salesforce %s: pausing delivery for %.0fs: %s", self.name, seconds, reason)

    def check_budget(self) -> None:
        """Raise RetryableError while delivery is paused; after the pause one call goes through to re-measure.

        This process's own pause says why; another process's pause is seen in the shared limiter.
        """
        wait = self.budget.paused_until - self.clock()
        if wait > 0:
            code = "REQUEST_LIMIT_EXCEEDED" if "REQUEST_LIMIT_EXCEEDED" in self.budget.reason else "API_BUDGET"
            raise RetryableError(f"Salesforce delivery paused: {self.budget.reason}", code=code, retry_after=wait)
        try:
            self.shared.acquire()
        except RetryableError as exc:
            raise RetryableError("Salesforce delivery paused: another worker found the daily API budget spent",
                                 code="API_BUDGET", retry_after=exc.retry_after) from None

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
            raise RetryableError(message, code=code, retry_after=retry_after_seconds(headers))
        if code == "INVALID_SESSION_ID":
            raise RetryableError(message, code=code, retry_after=self.config.budget_pause_seconds)
        fields = [str(f) for f in error.get("fields") or []]
        named = None
        if fields:
            named = f"{prefix}.{fields[0]}" if prefix else fields[0]
            if mapped is not None and named not in mapped and fields[0] in mapped:
                named = fields[0]
        raise PermanentError(message, code=code, field=named)

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

    # -- SOQL ----------------------------------------------------------------------------------------------------
    def query(self, soql: str) -> list[dict[str, Any]]:
        """The records a SOQL query returns (its first page)."""
        body = self.call("GET", "query", params={"q": soql}) or {}
        return list(body.get("records") or [])
