"""Ticketbox, a made-up helpdesk: the minimal HTTP CRM of docs/writing-a-connector.md.

A conversation's first message opens a ticket with it as the first comment, ``POST {base_url}/tickets`` -> ``{"id",
"requester_id"}``; each later one is a comment, ``POST {base_url}/tickets/{id}/comments`` -> ``{"id"}``. Every POST
carries an ``Idempotency-Key``: Ticketbox answers a key it has seen (for 24 hours) with its first answer and creates
nothing. Refusals read ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import requests
from pydantic import Field, SecretStr

from gateway.errors import DeliveryError, PermanentError, as_delivery_error
from gateway.plugins import CrmConfig, CrmConnector, DeliveryItem, DeliveryResult, LinkStore


class TicketboxConfig(CrmConfig):
    """Settings of a ``ticketbox`` CRM."""

    type: Literal["ticketbox"] = "ticketbox"
    base_url: str = Field(pattern=r"^https?://", description="The API root, e.g. https://acme.ticketbox.example/api/v1")
    api_token: SecretStr = Field(description="An API token (Settings > API), sent as a bearer token.")
    timeout_seconds: float = Field(10.0, gt=0, le=120, description="Deadline of each call to Ticketbox.")


def delivery_error(exc: requests.RequestException) -> DeliveryError:
    """How a failed call is retried (``as_delivery_error`` decides); a refusal carries Ticketbox's error code."""
    error = as_delivery_error(exc)
    if error.retryable or exc.response is None:
        return error
    try:
        problem = exc.response.json()["error"]
        return PermanentError(f"Ticketbox refused the write: {problem['message']}", code=str(problem["code"]))
    except (ValueError, KeyError, TypeError):
        return error


class TicketboxCrm(CrmConnector):
    """A ticket per conversation, a public comment per later message; written once whatever the replays."""

    type_name = "ticketbox"
    Config = TicketboxConfig
    summary = "Ticketbox tickets and comments (an example): Idempotency-Key on every write, errors classified"
    default_mapping = str(Path(__file__).with_name("mapping.yaml"))  # shipped in this package
    config: TicketboxConfig

    def deliver(self, item: DeliveryItem, links: LinkStore) -> DeliveryResult:
        if (written := links.get("message", item.message.id)) is not None:
            return DeliveryResult("already_written", written[0], calls=0)
        fields, customer = item.fields, item.customer
        comment = {"body": fields.get("body"), "public": True, "external_id": item.message.id}
        ticket = links.get("conversation", item.conversation.id)
        if ticket is None:
            created = self._post("tickets", item.idempotency_key, {
                "subject": fields.get("subject"), "tags": fields.get("tags", []), "comment": comment,
                "external_id": item.conversation.id,
                "requester": {"external_id": customer.id, "name": customer.display_name,
                              "phone": customer.first("phone"), "email": customer.first("email")}})
            links.put("customer", customer.id, str(created["requester_id"]))
            links.put("conversation", item.conversation.id, str(created["id"]))
            links.put("message", item.message.id, str(created["id"]))
            return DeliveryResult("ticket_created", str(created["id"]))
        added = self._post(f"tickets/{ticket[0]}/comments", item.idempotency_key, comment)
        links.put("message", item.message.id, str(added["id"]))
        return DeliveryResult("comment_added", str(added["id"]))

    def _post(self, path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.config.api_token.get_secret_value()}", "Idempotency-Key": key}
        try:
            response = self.context.http.post(f"{self.config.base_url.rstrip('/')}/{path}", json=body,
                                              headers=headers, timeout=self.config.timeout_seconds)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise delivery_error(exc) from None
        return dict(response.json())
