"""Who sent a message: identifier normalisation, customer resolution, merges and suggestions."""

from __future__ import annotations

from gateway.config import IdentityConfig
from gateway.identity.normalize import (
    EmailRule,
    IdentityRules,
    InvalidIdentifier,
    email_identifier,
    name_key,
    normalize_email,
    normalize_phone,
    phone_identifier,
    scoped_identifier,
)
from gateway.identity.resolve import Resolution, resolve_customer

__all__ = [
    "EmailRule", "IdentityRules", "InvalidIdentifier", "Resolution", "email_identifier", "name_key",
    "normalize_email", "normalize_phone", "phone_identifier", "resolve_customer", "rules_from_config",
    "scoped_identifier",
]


def rules_from_config(config: IdentityConfig) -> IdentityRules:
    return IdentityRules(
        default_region=config.default_region,
        email_rules={domain.lower(): EmailRule(**rule.model_dump()) for domain, rule in config.email_rules.items()},
        role_local_parts=frozenset(part.lower().replace(".", "").replace("-", "").replace("_", "")
                                   for part in config.role_local_parts),
        blocked_emails=tuple(config.blocked_emails),
        blocked_phones=frozenset(config.blocked_phones),
        max_per_kind=config.max_identifiers_per_kind,
    )
