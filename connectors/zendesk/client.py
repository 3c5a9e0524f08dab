"""Zendesk HTTP: authentication, the account's shared request budget, error classification, batch job results.

API reference: https://developer.zendesk.com/api-reference/ticketing/introduction/
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, TypeGuard

import requests
from pydantic import Field, SecretStr, model_validator

from gateway.errors import (
    DeliveryError,
    PermanentError,
    RetryableError,
    never_reached,
    retry_after_seconds,
    written_nothing,
)
from gateway.plugins import ConnectorContext, CrmConfig
from gateway.ratelimit import MAX_WAIT_SECONDS

_MAX_INLINE_429_RETRIES = 3
ENDED = ("solved", "closed")  # ticket statuses after which a new message starts a new ticket


class ZendeskConfig(CrmConfig):
    """Settings of a ``zendesk`` CRM: API token (``email`` + ``api_token``) or ``oauth_token`` auth."""

    type: Literal["zendesk"] = "zendesk"
    subdomain: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="The NAME in NAME.zendesk.com.")
    base_url: str | None = Field(None, pattern=r"^https?://", description="Overrides https://{subdomain}.zendesk.com.")
    email: str | None = Field(None, description="Agent email for API-token auth.")
    api_token: SecretStr | None = Field(None, description="API token (with email).")
    oauth_token: SecretStr | None = Field(None, description="OAuth access token, instead of email + api_token.")
    timeout_seconds: float = Field(15.0, gt=0, le=120)
    requests_per_minute: int = Field(
        400, ge=10, le=10000,
        description="The plan's API limit (Team 200, Growth/Professional 400, Enterprise 700, High Volume 2500); "
                    "shared by every worker process.")
    bulk_threshold: int = Field(
        10, ge=2, le=100, description="Conversations waiting at once before the batch endpoints are used.")
    job_timeout_seconds: float = Field(300.0, gt=0, description="How long to wait for a batch job to finish.")
    directory_sync_seconds: int = Field(
        300, ge=0, description="How often the end users Zendesk already has are synced (incremental export), so "
                               "they are adopted instead of duplicated; 0 turns the sync off.")
    search_before_create: bool = Field(
        True, description="Before creating a user for a new customer, search Zendesk once by the customer's email "
                          "(else phone) and adopt the one end user found: a contact created since the last directory "
                          "sync is not duplicated. The batched path (a backlog) leaves this to the directory sync "
                          "and to create_or_update_many's match by email.")
    upload_max_bytes: int = Field(
        10 * 1024 * 1024, ge=0, description="Attachments up to this size are uploaded; larger ones are linked.")
    webhook_secret: SecretStr | None = Field(
        None, description="Signing secret of the Zendesk webhook that reports agent replies; unset: the one "
                          "`gateway crm setup` stores in {data_dir}/secrets/NAME.webhook-secret.")
    reply_poll_seconds: int = Field(
        60, ge=0, description="How often the ticket-event export is read for agent replies the webhook missed "
                              "(a safety net; the export allows 10 requests a minute); 0 turns it off.")

    @model_validator(mode="after")
    def _one_auth(self) -> ZendeskConfig:
        token_auth = self.email is not None or self.api_token is not None
        if token_auth and self.oauth_token is not None:
            raise ValueError("give either email + api_token or oauth_token, not both")
        if self.oauth_token is None and (self.email is None or self.api_token is None):
            raise ValueError("email and api_token are required (or oauth_token)")
        return self

    @property
    def api(self) -> str:
        """The API root: ``base_url`` or the subdomain's, with ``/api/v2``."""
        return (self.base_url or f"https://{self.subdomain}.zendesk.com").rstrip("/") + "/api/v2"


def classify(response: requests.Response, *, mapped: dict[str, str] | None = None) -> None:
    """Raise RetryableError (429, 5xx, 409) or PermanentError (other 4xx) for a failed response.

    Certain (nothing written): 429, 503, 409 (``safe_update`` refused the write), any 4xx, any failed read. A 500,
    502 or 504 answering a write is uncertain: Zendesk may have made the write before failing to answer.
    """
    status = response.status_code
    if status < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    code = error if isinstance(error, str) else str(status)
    if status == 429 or status >= 500 or status == 409:
        method = getattr(response.request, "method", None)
        raise RetryableError(f"Zendesk answered {status} {code}", code=code,
                             retry_after=retry_after_seconds(response.headers),
                             uncertain=status != 409 and not written_nothing(status, method),
                             outage=status in (429, 503))
    details = body.get("details") if isinstance(body, dict) else None
    field = None
    message = f"Zendesk answered {status} {code}"
    if isinstance(details, dict) and details:
        field = next(iter(details))
        described = [d.get("description", "") for d in details[field] if isinstance(d, dict)]
        message += f": {field}: {'; '.join(described)}"
        field = (mapped or {}).get(field, field)
    elif isinstance(body, dict) and body.get("description"):
        message += f": {body['description']}"
    raise PermanentError(message, code=code, field=field)


def is_closed_error(response: requests.Response) -> bool:
    """Whether a 422 says the ticket is closed (closed tickets take no updates)."""
    if response.status_code != 422:
        return False
    try:
        details = response.json().get("details", {})
    except ValueError:
        return False
    return any("closed" in str(d.get("description", "")).lower() for d in details.get("status", []))


def result_for(results: list[dict[str, Any]], index: int) -> dict[str, Any] | None:
    """A job's result for the index-th object sent; results carry ``index`` for creations, else keep order."""
    for result in results:
        if result.get("index") == index:
            return result
    return results[index] if index < len(results) and "index" not in results[index] else None


def job_result_ok(result: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """Whether a job's result says its object was written (it has an id, and no error or ``success: false``)."""
    return result is not None and result.get("id") is not None and result.get("success", True) is not False \
        and not result.get("error")


def job_failure(result: dict[str, Any] | None, what: str) -> DeliveryError:
    """The error for an object a job did not write: retryable when the job said nothing about it."""
    if result is None:
        return RetryableError(f"Zendesk batch job gave no result for this {what}", code="job_result_missing")
    detail = f"{result.get('error') or 'failed'}: {result.get('details') or ''}".strip(": ")
    return PermanentError(f"Zendesk could not write this {what}: {detail}", code=str(result.get("error") or "Failed"))


class ZendeskClient:
    """Every request draws from the account's shared budget; a 429 blocks the budget for every process."""

    def __init__(self, config: ZendeskConfig, context: ConnectorContext, name: str,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.http = context.http
        self.limiter = context.limiter(f"zendesk:{config.subdomain}", config.requests_per_minute * 0.95)
        self.sleep = sleep
        self.calls = 0

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request within the shared budget; a 429 is waited out inline a few times, pausing every process."""
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        if self.config.oauth_token is not None:
            headers["Authorization"] = f"Bearer {self.config.oauth_token.get_secret_value()}"
            auth = None
        else:
            assert self.config.api_token is not None
            auth = (f"{self.config.email}/token", self.config.api_token.get_secret_value())
        url = path if path.startswith("http") else self.config.api + path
        for _ in range(_MAX_INLINE_429_RETRIES):
            self.limiter.acquire()
            self.calls += 1
            try:
                response = self.http.request(method, url, headers=headers, auth=auth,
                                             timeout=self.config.timeout_seconds, **kwargs)
            except (requests.Timeout, requests.ConnectionError) as exc:
                # a read, or a request that never reached Zendesk, wrote nothing; otherwise the write may have landed
                unreached = never_reached(exc)
                raise RetryableError(f"Zendesk unreachable: {type(exc).__name__}", code="network",
                                     uncertain=not (unreached or method.upper() == "GET"),
                                     outage=unreached) from None
            if response.status_code != 429:
                return response
            wait = retry_after_seconds(response.headers) or 60.0
            self.limiter.block(wait)  # every process pauses, not just this one
            if wait > MAX_WAIT_SECONDS:
                break
        return response

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> dict[str, Any]:
        """A request whose answer must be one of ``ok``; its JSON body, or the classified error raised."""
        response = self.request(method, path, **kwargs)
        if response.status_code not in ok:
            classify(response)
        return response.json() if response.content else {}

    def wait_for_jobs(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Poll job statuses (several per call) until each is completed or failed."""
        done: dict[str, dict[str, Any]] = {}
        started = time.monotonic()
        slept = 0.0  # counted as well, so an injected sleep times out the same way
        delay = 1.0
        while len(done) < len(job_ids):
            # a job is still queued the moment it is created: the first look waits, like every later one
            self.sleep(delay)
            slept += delay
            delay = min(delay * 2, 5.0)
            pending = [job for job in job_ids if job not in done]
            body = self.call("GET", "/job_statuses/show_many", params={"ids": ",".join(pending)})
            for status in body.get("job_statuses", []):
                if status.get("status") in ("completed", "failed", "killed"):
                    done[status["id"]] = status
            if len(done) < len(job_ids) and max(time.monotonic() - started, slept) >= self.config.job_timeout_seconds:
                raise RetryableError(f"Zendesk jobs {', '.join(pending)} did not finish in time", code="job_timeout")
        return done
