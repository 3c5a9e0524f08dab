"""Identifier normalisation: every identifier is brought to one canonical form before any comparison.

- Phones become E.164 (``phonenumbers``, with the channel's default region for national forms). Known national
  variants of one mobile number map to one form: Brazil's mobile ninth digit (added since 2012-2016, still missing
  from many WhatsApp ids) and Mexico's former mobile ``1`` after +52 (dropped in 2019).
- Emails get a lower-cased domain and, by default, a lower-cased local part: every major mailbox provider and CRM
  treats addresses case-insensitively. Anything further (``+tag`` removal, dots ignored, another domain) happens
  only where a per-domain rule says so, and a rule can turn case folding off for a domain that needs it: RFC 5321
  leaves the local part to the receiving domain, so the gateway never guesses beyond that.

Channels write a sender's address as it came (``AS_WRITTEN``: only the domain lower-cased); the resolver applies the
configured rules (``canonical_identifiers``), so a domain's rule decides even about case.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch

import phonenumbers

from gateway.model import Identifier, IdentifierKind


class InvalidIdentifier(ValueError):
    pass


_PREFIXES = ("whatsapp:", "tel:", "sms:", "mms:")


def _apply_national_variants(number: phonenumbers.PhoneNumber) -> phonenumbers.PhoneNumber:
    national = str(number.national_number)
    if number.country_code == 55 and len(national) == 10 and national[2] in "6789":
        # Brazil: an 8-digit mobile subscriber number gains a leading 9 (area code + 9 + 8 digits)
        return phonenumbers.parse(f"+55{national[:2]}9{national[2:]}")
    if number.country_code == 52 and len(national) == 11 and national.startswith("1"):
        # Mexico: "+52 1 ..." was the international form of mobiles until 2019
        return phonenumbers.parse(f"+52{national[1:]}")
    return number


def normalize_phone(raw: str, default_region: str, *, international: bool = False) -> str:
    """E.164 form of a phone number written in any national or international form.

    ``international=True`` reads bare digits as an international number without its ``+`` (WhatsApp's wa_id).
    """
    text = raw.strip()
    for prefix in _PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix):].strip()
    if international and text.isdigit():
        text = "+" + text
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentifier(f"not a phone number: {exc}") from None
    number = _apply_national_variants(number)
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentifier("not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True)
class EmailRule:
    """What a domain's addresses may be folded by: case by default, everything else off."""

    fold_case: bool = True
    strip_plus: bool = False
    ignore_dots: bool = False
    canonical_domain: str | None = None


@dataclass(frozen=True)
class IdentityRules:
    """Normalisation and guardrail settings, built from the config's ``identity`` section."""

    default_region: str = "US"
    email_rules: Mapping[str, EmailRule] = field(default_factory=dict)
    role_local_parts: frozenset[str] = frozenset()
    blocked_emails: tuple[str, ...] = ()
    blocked_phones: frozenset[str] = frozenset()
    max_per_kind: int = 5

    def email_rule(self, domain: str) -> EmailRule:
        return self.email_rules.get(domain) or self.email_rules.get("*") or EmailRule()

    def isolation_reason(self, identifier: Identifier) -> str | None:
        """Why an identifier must never join a customer to anything else (None when it may)."""
        if identifier.kind is IdentifierKind.EMAIL:
            local, _, _domain = identifier.value.rpartition("@")
            if any(fnmatch(identifier.value.lower(), pattern.lower()) for pattern in self.blocked_emails):
                return "blocked"
            if re.sub(r"[._-]", "", local.lower().split("+")[0]) in self.role_local_parts:
                return "role_address"
        if identifier.kind in (IdentifierKind.PHONE, IdentifierKind.WHATSAPP) and (
                identifier.value in self.blocked_phones):
            return "blocked"
        return None


def normalize_email(raw: str, rules: IdentityRules | None = None) -> str:
    """Lower-cased domain; the local part changed only as the domain's rule allows."""
    local, at, domain = raw.strip().strip("<>").rpartition("@")
    if not at or not local or not domain or " " in local:
        raise InvalidIdentifier("not an email address")
    domain = domain.lower().rstrip(".")
    rule = (rules or IdentityRules()).email_rule(domain)
    if rule.strip_plus:
        local = local.split("+", 1)[0]
    if rule.ignore_dots:
        local = local.replace(".", "")
    if rule.fold_case:
        local = local.lower()
    return f"{local}@{rule.canonical_domain or domain}"


AS_WRITTEN = IdentityRules(email_rules={"*": EmailRule(fold_case=False)})
"""Rules that keep an address as written (domain lower-cased): for channels, before the configured rules apply."""


def canonical_identifiers(identifiers: Iterable[Identifier], rules: IdentityRules) -> tuple[Identifier, ...]:
    """Identifiers with the configured email rules applied, duplicates dropped (order kept)."""
    out: dict[str, Identifier] = {}
    for ident in identifiers:
        if ident.kind is IdentifierKind.EMAIL:
            try:
                value = normalize_email(ident.value, rules)
            except InvalidIdentifier:
                value = ident.value
            if value != ident.value:
                ident = Identifier(kind=IdentifierKind.EMAIL, value=value)
        out.setdefault(ident.key, ident)
    return tuple(out.values())


def phone_identifier(raw: str, default_region: str) -> Identifier:
    return Identifier(kind=IdentifierKind.PHONE, value=normalize_phone(raw, default_region))


def email_identifier(raw: str, rules: IdentityRules | None = None) -> Identifier:
    return Identifier(kind=IdentifierKind.EMAIL, value=normalize_email(raw, rules))


def scoped_identifier(kind: IdentifierKind, scope: str, local_id: str) -> Identifier:
    """Slack ``team:user``, Messenger ``page:psid``, Instagram ``account:igsid``: ids only unique in a scope."""
    if not scope or not local_id or ":" in scope:
        raise InvalidIdentifier(f"{kind} ids need a scope and an id")
    return Identifier(kind=kind, value=f"{scope}:{local_id}")


def name_key(name: str | None) -> str | None:
    """A comparison key for display names: accents removed, case folded, tokens sorted."""
    if not name:
        return None
    text = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    tokens = sorted(re.findall(r"\w+", text))
    return " ".join(tokens)[:128] or None
