"""Zendesk Support: end users, tickets and comments over the REST API (plain ``requests``).

Idempotency: users are upserted by ``external_id`` (the gateway's customer id); tickets are created with an
``Idempotency-Key`` and ``external_id`` = conversation id; every write carries the gateway message id in the audit
``metadata``. A retry after an uncertain attempt first looks for that marker, so nothing is written twice.
API reference: https://developer.zendesk.com/api-reference/ticketing/introduction/
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import requests
from pydantic import Field, SecretStr, model_validator

from gateway.errors import PermanentError, RetryableError
from gateway.plugins import ConnectorConfig, CrmConnector, DeliveryItem, DeliveryResult, LinkStore

log = logging.getLogger(__name__)
MARKER = "gateway_message_id"
CLOSED = "closed"
TICKET_FIELDS = ("subject", "tags", "priority", "type", "group_id", "brand_id", "custom_fields", "status")
_MAX_AUDIT_PAGES = 20


class ZendeskConfig(ConnectorConfig):
    """Settings of a ``zendesk`` CRM: API token (``email`` + ``api_token``) or ``oauth_token`` auth."""

    type: Literal["zendesk"] = "zendesk"
    subdomain: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="The NAME in NAME.zendesk.com.")
    base_url: str | None = Field(None, pattern=r"^https?://", description="Overrides https://{subdomain}.zendesk.com.")
    email: str | None = Field(None, description="Agent email for API-token auth.")
    api_token: SecretStr | None = Field(None, description="API token (with email).")
    oauth_token: SecretStr | None = Field(None, description="OAuth access token, instead of email + api_token.")
    mapping: str | None = Field(None, description="Mapping file; default mappings/zendesk.yaml.")
    timeout_seconds: float = Field(15.0, gt=0, le=120)

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
        return (self.base_url or f"https://{self.subdomain}.zendesk.com").rstrip("/") + "/api/v2"


def classify(response: requests.Response, *, mapped: dict[str, str] | None = None) -> None:
    """Raise RetryableError (429, 5xx, 409) or PermanentError (other 4xx) for a failed response."""
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
        retry_after = response.headers.get("Retry-After")
        raise RetryableError(f"Zendesk answered {status} {code}", code=code,
                             retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)
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
    if response.status_code != 422:
        return False
    try:
        details = response.json().get("details", {})
    except ValueError:
        return False
    return any("closed" in str(d.get("description", "")).lower() for d in details.get("status", []))


class ZendeskCrm(CrmConnector):
    """Zendesk Support: end user per customer, ticket per conversation, public comment per message."""

    type_name = "zendesk"
    Config = ZendeskConfig
    summary = "Zendesk Support: users (create_or_update), tickets and comments, idempotent"
    default_mapping = "zendesk.yaml"
    config: ZendeskConfig

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        if self.config.oauth_token is not None:
            headers["Authorization"] = f"Bearer {self.config.oauth_token.get_secret_value()}"
            auth = None
        else:
            assert self.config.api_token is not None
            auth = (f"{self.config.email}/token", self.config.api_token.get_secret_value())
        try:
            return self.context.http.request(method, self.config.api + path, headers=headers, auth=auth,
                                             timeout=self.config.timeout_seconds, **kwargs)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise RetryableError(f"Zendesk unreachable: {type(exc).__name__}", code="network") from None

    def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        if response.status_code not in ok:
            classify(response)
        return response.json() if response.content else {}

    # -- users -----------------------------------------------------------------------------------------------
    def user_payload(self, item: DeliveryItem) -> dict[str, Any]:
        customer = item.customer
        phone = customer.first("phone")
        email = customer.first("email")
        user: dict[str, Any] = {
            "name": customer.display_name or phone or email or f"Customer {customer.id[:8]}",
            "external_id": customer.id,
            "skip_verify_email": True,
        }
        if phone:
            user["phone"] = phone
        if email:
            user["email"] = email
        return {"user": user}

    def ensure_user(self, item: DeliveryItem, links: LinkStore) -> str:
        link = links.get("customer", item.customer.id)
        if link is not None:
            return link[0]
        body = self._call("POST", "/users/create_or_update", json=self.user_payload(item))
        user_id = str(body["user"]["id"])
        links.put("customer", item.customer.id, user_id)
        return user_id

    # -- tickets ---------------------------------------------------------------------------------------------
    def comment(self, item: DeliveryItem, user_id: str) -> dict[str, Any]:
        return {"body": item.fields.get("comment") or item.message.text or "(empty message)",
                "public": bool(item.fields.get("public", True)), "author_id": int(user_id)}

    def ticket_payload(self, item: DeliveryItem, user_id: str, followup_of: str | None = None) -> dict[str, Any]:
        ticket: dict[str, Any] = {
            "comment": self.comment(item, user_id),
            "requester_id": int(user_id),
            "external_id": item.conversation.id,
            "metadata": {MARKER: item.message.id},
        }
        ticket.update({name: item.fields[name] for name in TICKET_FIELDS if item.fields.get(name) not in (None, "")})
        if followup_of is not None:
            ticket["via_followup_source_id"] = int(followup_of)
        return {"ticket": ticket}

    def create_ticket(self, item: DeliveryItem, user_id: str, links: LinkStore,
                      followup_of: str | None = None) -> str:
        key = item.idempotency_key + (f"-followup-{followup_of}" if followup_of else "")
        body = self._call("POST", "/tickets", json=self.ticket_payload(item, user_id, followup_of),
                          headers={"Idempotency-Key": key[:255]})
        ticket_id = str(body["ticket"]["id"])
        links.put("conversation", item.conversation.id, ticket_id, {"status": body["ticket"].get("status")})
        return ticket_id

    def append_comment(self, item: DeliveryItem, user_id: str, ticket_id: str,
                       links: LinkStore) -> DeliveryResult:
        payload = {"ticket": {"comment": self.comment(item, user_id), "metadata": {MARKER: item.message.id}}}
        response = self._request("PUT", f"/tickets/{ticket_id}", json=payload)
        if response.status_code == 200:
            return DeliveryResult("comment_added", ticket_id)
        if is_closed_error(response) or response.status_code == 404:
            if item.attempt > 1:
                # an earlier attempt may have opened the new ticket and died before linking it; the
                # Idempotency-Key guards that for two hours only (ticketing/introduction/#idempotency)
                found = self.find_ticket(item.conversation.id)
                if found is not None and str(found["id"]) != ticket_id:
                    found_id = str(found["id"])
                    links.put("conversation", item.conversation.id, found_id, {"status": found.get("status")})
                    if self.already_written(found_id, item.message.id):
                        return DeliveryResult("already_written", found_id)
                    return self.append_comment(item, user_id, found_id, links)
            # a closed ticket cannot be reopened: continue the conversation on a follow-up ticket
            followup_of = ticket_id if response.status_code == 422 else None
            new_id = self.create_ticket(item, user_id, links, followup_of)
            return DeliveryResult("followup_ticket_created" if followup_of else "ticket_recreated", new_id, calls=2)
        classify(response)
        raise RetryableError(f"unexpected Zendesk status {response.status_code}")

    def already_written(self, ticket_id: str, message_id: str) -> bool:
        """Whether an audit of the ticket carries this message's marker (a previous attempt landed)."""
        url: str | None = f"/tickets/{ticket_id}/audits?page[size]=100"
        for _ in range(_MAX_AUDIT_PAGES):
            if url is None:
                break
            body = self._call("GET", url)
            for audit in body.get("audits", []):
                if ((audit.get("metadata") or {}).get("custom") or {}).get(MARKER) == message_id:
                    return True
            next_url = (body.get("links") or {}).get("next") if (body.get("meta") or {}).get("has_more") else None
            url = next_url.split("/api/v2", 1)[1] if next_url else None
        return False

    def find_ticket(self, conversation_id: str) -> dict[str, Any] | None:
        body = self._call("GET", "/tickets", params={"external_id": conversation_id})
        tickets = [t for t in body.get("tickets", []) if t.get("status") != CLOSED]
        return max(tickets, key=lambda t: t["id"]) if tickets else None

    def deliver(self, item: DeliveryItem, links: LinkStore) -> DeliveryResult:
        user_id = self.ensure_user(item, links)
        link = links.get("conversation", item.conversation.id)
        retrying = item.attempt > 1
        if link is None and retrying:
            found = self.find_ticket(item.conversation.id)
            if found is not None:
                links.put("conversation", item.conversation.id, str(found["id"]), {"status": found.get("status")})
                link = (str(found["id"]), {})
        if link is None:
            ticket_id = self.create_ticket(item, user_id, links)
            return DeliveryResult("ticket_created", ticket_id)
        ticket_id = link[0]
        if retrying and self.already_written(ticket_id, item.message.id):
            return DeliveryResult("already_written", ticket_id)
        return self.append_comment(item, user_id, ticket_id, links)

    def check_online(self) -> str:
        body = self._call("GET", "/users/me")
        user = body.get("user") or {}
        if not user.get("id") or user.get("role") not in ("agent", "admin"):
            raise RuntimeError("Zendesk did not accept the credentials (no agent or admin user)")
        return f"authenticated as {user.get('name')} ({user.get('role')})"
