"""Audit rows for reads of personal data: a search (message trace, customers) or a view (a customer, a dead letter,
a JSON export) by the logged-in account.

A searched phone number, email address, scoped id or name is never stored as typed: the row's target holds a keyed
hash of it (``gateway.privacy``, the install's key), after the masked form for a number or an address so an auditor
can tell which one it was. The same value in any spelling gives the same hash, so the audit page finds every search
for a number from the number itself. Ids the gateway mints (conversations, messages, customers) are kept as they are.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

from flask import g

from gateway.console.app import audit
from gateway.identity.normalize import InvalidIdentifier, normalize_email, normalize_phone
from gateway.privacy import identifier_hash
from gateway.redact import mask_identifier

READ_ACTIONS = ("view", "search")
_GATEWAY_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Searched:
    kind: str  # phone | email | identifier (kind:value) | id (minted by the gateway) | text
    target: str  # the audit row's target
    suffix: str  # the end of every target that names this value


def searched(query: str, region: str, key: bytes) -> Searched:
    """What an audit row says about a searched value, without the value itself unless it is a gateway id."""
    value = query.strip()
    if _GATEWAY_ID.fullmatch(value):
        return Searched("id", f"id {value}", f" {value}")
    if "@" in value:
        with contextlib.suppress(InvalidIdentifier):
            email = normalize_email(value)
            return _hashed("email", email, key, mask_identifier(email))
    with contextlib.suppress(InvalidIdentifier):
        phone = normalize_phone(value, region)
        return _hashed("phone", phone, key, mask_identifier(phone))
    return _hashed("identifier" if ":" in value else "text", value, key)


def _hashed(kind: str, value: str, key: bytes, shown: str | None = None) -> Searched:
    digest = f"#{identifier_hash(key, kind, value)[:16]}"
    return Searched(kind, " ".join(part for part in (kind, shown, digest) if part), digest)


def _key() -> bytes:
    return bytes(g.runtime.config.privacy_key)


def _region() -> str:
    return str(g.runtime.config.settings.identity.default_region)


def audit_search(page: str, query: str, results: int) -> None:
    """Record a search for ``query`` on ``page`` (nothing for an empty search: nothing was read)."""
    if not query.strip():
        return
    found = searched(query, _region(), _key())
    audit("search", found.target, {"page": page, "kind": found.kind, "results": results})


def audit_view(page: str, target: str, detail: dict[str, Any] | None = None) -> None:
    """Record that the logged-in account read ``target`` on ``page``."""
    audit("view", target, {"page": page, **(detail or {})})


def target_suffixes(value: str) -> tuple[str, ...]:
    """For the audit page's filter: the endings of the targets that name ``value``, as searched or as viewed."""
    value = value.strip()
    if not value:
        return ()
    return tuple(dict.fromkeys((f" {value}", searched(value, _region(), _key()).suffix)))
