"""Zendesk end users the gateway did not create: found before creating one, and named once a name is known.

A contact an agent creates while the gateway runs is in the synced directory only after the next sync; a customer
writing in that window is looked up with one ``GET /api/v2/users/search`` (by email, else by phone) before a user is
created. ``users/create_or_update`` would match an email too, but it would overwrite the name an agent gave the
user, and it never matches a phone.
https://developer.zendesk.com/api-reference/ticketing/users/users/#search-users

A user the gateway created for a customer without a name is named with a placeholder (the phone, the address,
``Customer 8c249776``); the link remembers it. When the customer's name becomes known (a WhatsApp profile, a Slack
or X profile), the user is renamed, unless someone changed the name in Zendesk meanwhile.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import phonenumbers

from connectors.zendesk.client import ZendeskClient
from gateway.errors import DeliveryError
from gateway.identity.normalize import InvalidIdentifier, normalize_email, normalize_phone
from gateway.plugins import CustomerView, LinkStore

if TYPE_CHECKING:
    from connectors.zendesk.connector import ZendeskCrm

log = logging.getLogger(__name__)


def search_query(customer: CustomerView) -> tuple[str, str, str] | None:
    """The users search for a customer: (query, kind, value) by its first email, else its first phone."""
    email = customer.first("email")
    if email:
        return f"email:{email}", "email", email
    phone = customer.first("phone") or customer.first("whatsapp")
    if phone:
        try:
            national = str(phonenumbers.parse(phone).national_number)
        except phonenumbers.NumberParseException:
            return None
        # Zendesk matches digits only; a leading * also finds the number written with its country code
        # (https://developer.zendesk.com/documentation/voice/talk-partner-edition/retrieving-the-zendesk-user-id-of-a-caller/)
        return f"role:end-user phone:*{national}", "phone", phone
    return None


def _holds(user: dict[str, Any], kind: str, value: str, region: str) -> bool:
    """Whether the user's own email or phone is the customer's (search terms also match prefixes and suffixes)."""
    raw = user.get(kind)
    if not isinstance(raw, str) or not raw:
        return False
    try:
        return (normalize_email(raw) if kind == "email" else normalize_phone(raw, region)) == value
    except InvalidIdentifier:
        return False


def search(client: ZendeskClient, customer: CustomerView, region: str) -> tuple[str, bool] | None:
    """The one end user Zendesk holds for the customer, and whether the gateway wrote it (its external_id is the
    customer's); None when none or several do."""
    query = search_query(customer)
    if query is None:
        return None
    text, kind, value = query
    found = client.call("GET", "/users/search", params={"query": text}).get("users") or []
    ours = [u for u in found if u.get("external_id") == customer.id]
    if ours:
        return str(ours[0]["id"]), True
    matching = [u for u in found if u.get("role") == "end-user" and u.get("active", True) is not False
                and not u.get("suspended") and not (kind == "phone" and u.get("shared_phone_number"))
                and _holds(u, kind, value, region)]
    if len(matching) != 1:
        if matching:
            log.info("customer %s matches %d Zendesk users; adopting none", customer.id, len(matching))
        return None
    return str(matching[0]["id"]), False


def refresh_name(crm: ZendeskCrm, customer: CustomerView, link: tuple[str, dict[str, Any]],
                 links: LinkStore) -> None:
    """Replace the placeholder name the gateway gave the customer's user by the name now known, once.

    Never overwrites a name someone set in Zendesk: the user is read first and renamed only while it still carries
    the placeholder. A failure leaves the placeholder for the next message to try again.
    """
    user_id, data = link
    placeholder = data.get("placeholder")
    if not placeholder or not customer.display_name or customer.display_name == placeholder:
        return
    rest = {k: v for k, v in data.items() if k != "placeholder"}
    try:
        current = (crm.client.call("GET", f"/users/{user_id}").get("user") or {}).get("name")
        if current == placeholder:
            crm.client.call("PUT", f"/users/{user_id}", json={"user": {"name": customer.display_name}})
        else:
            log.info("Zendesk user %s was renamed in Zendesk; its name is left alone", user_id)
    except DeliveryError as exc:
        log.warning("Zendesk user %s keeps its placeholder name for now: %s", user_id, exc)
        return
    links.put("customer", customer.id, user_id, rest)
