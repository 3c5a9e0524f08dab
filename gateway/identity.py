"""Identifier normalisation and customer resolution.

A customer is the set of identifiers joined by strong evidence only: the same normalised identifier, or a link the
channel itself asserts (all identifiers of one sender party). Never a name, never a fuzzy score. When a party's
identifiers already belong to two different customers, nothing is merged: the message goes to the customer of the
party's first (primary) identifier.
"""

from __future__ import annotations

import phonenumbers
from sqlalchemy import Connection, select, update

from gateway.model import Identifier, IdentifierKind, Party, new_id
from gateway.storage.db import utcnow
from gateway.storage.tables import customers, identities


class InvalidIdentifier(ValueError):
    pass


def normalize_phone(raw: str, default_region: str) -> str:
    """E.164 form of a phone number written in any national or international form."""
    text = raw.strip()
    for prefix in ("whatsapp:", "tel:", "sms:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentifier(f"not a phone number: {exc}") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentifier("not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str) -> str:
    """Lower-cases the domain; the local part is left as sent (RFC 5321 makes it case-sensitive)."""
    local, at, domain = raw.strip().rpartition("@")
    if not at or not local or not domain:
        raise InvalidIdentifier("not an email address")
    return f"{local}@{domain.lower()}"


def phone_identifier(raw: str, default_region: str) -> Identifier:
    return Identifier(kind=IdentifierKind.PHONE, value=normalize_phone(raw, default_region))


def email_identifier(raw: str) -> Identifier:
    return Identifier(kind=IdentifierKind.EMAIL, value=normalize_email(raw))


def resolve_customer(conn: Connection, party: Party, *, message_id: str) -> tuple[str, bool]:
    """The customer id for a sender party, creating the customer or attaching new identifiers as needed.

    Returns (customer id, created). Runs inside the pipeline's transaction; a concurrent insert of the same
    identifier raises IntegrityError, and the pipeline then retries the whole message.
    """
    keys = [(ident.kind.value, ident.value) for ident in party.identifiers]
    owners: dict[tuple[str, str], str] = {}
    for kind, value in keys:
        found = conn.execute(select(identities.c.customer_id).where(
            identities.c.kind == kind, identities.c.value == value)).scalar_one_or_none()
        if found is not None:
            owners[(kind, value)] = found
    now = utcnow()
    created = False
    if owners:
        customer_id = next(owners[key] for key in keys if key in owners)
        if party.display_name:
            conn.execute(update(customers).where(
                customers.c.id == customer_id, customers.c.display_name.is_(None)).values(
                display_name=party.display_name, updated_at=now))
    else:
        customer_id = new_id()
        created = True
        conn.execute(customers.insert().values(
            id=customer_id, display_name=party.display_name, created_at=now, updated_at=now))
    distinct_owners = set(owners.values())
    for kind, value in keys:
        if (kind, value) in owners:
            continue
        if len(distinct_owners) > 1:
            continue  # conflicting evidence: never join two existing customers here
        evidence = "first_seen" if created else "asserted_by_channel"
        conn.execute(identities.insert().values(
            kind=kind, value=value, customer_id=customer_id, evidence=evidence,
            source_message_id=message_id, created_at=now))
    return customer_id, created
