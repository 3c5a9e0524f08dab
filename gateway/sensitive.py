"""Masking what must not reach a CRM: payment card numbers, national ids, and an admin's own patterns.

A card number is a run of 13 to 19 digits (spaces or dashes between them allowed) that passes the Luhn check; it
becomes ``**** **** **** 4242``. National ids are checked as far as their format allows (python-stdnum): a US
SSN's reserved areas, groups and known-invalid numbers, an Aadhaar number's Verhoeff check digit, a UK National
Insurance number's prefixes. A number
that fails its check is left alone, so order numbers and phone numbers pass through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stdnum.in_ import aadhaar
from stdnum.us import ssn

from gateway.model import Message
from gateway.redact import mask_cards

NATIONAL_IDS = ("us_ssn", "in_aadhaar", "uk_nino")

_SSN = re.compile(r"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])")
_AADHAAR = re.compile(r"(?<!\d)(?<!\d )([2-9]\d{3}) ?(\d{4}) ?(\d{4})(?!\d)(?! \d)")
_NINO = re.compile(r"\b([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])\b", re.IGNORECASE)
_NINO_NEVER = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})

def _ssn(match: re.Match[str]) -> str:
    return f"***-**-{match.group(4)}" if ssn.is_valid(match.group()) else match.group()


def _aadhaar(match: re.Match[str]) -> str:
    digits = "".join(match.groups())
    return f"**** **** {digits[-4:]}" if aadhaar.is_valid(digits) else match.group()


def _nino(match: re.Match[str]) -> str:
    return match.group() if match.group(1).upper() in _NINO_NEVER else "** ** ** ** *"


_NATIONAL: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = {
    "us_ssn": (_SSN, _ssn), "in_aadhaar": (_AADHAAR, _aadhaar), "uk_nino": (_NINO, _nino)}


@dataclass(frozen=True)
class Masker:
    """What one message's text is masked with: the union of the rules of every route its channel feeds."""

    cards: bool = False
    national_ids: frozenset[str] = frozenset()
    patterns: tuple[tuple[re.Pattern[str], str], ...] = ()

    @property
    def active(self) -> bool:
        return self.cards or bool(self.national_ids) or bool(self.patterns)

    def mask(self, text: str) -> str:
        """``text`` with every card number, chosen national id and custom pattern masked."""
        if not text:
            return text
        for pattern, replacement in self.patterns:
            text = pattern.sub(replacement, text)
        if self.cards:
            text = mask_cards(text)
        for name in NATIONAL_IDS:
            if name in self.national_ids:
                pattern, replace = _NATIONAL[name]
                text = pattern.sub(replace, text)
        return text

    def message(self, message: Message) -> Message:
        """``message`` with its subject, texts and HTML masked (the same object when nothing changed)."""
        if not self.active:
            return message
        update = {name: self.mask(value) for name in ("subject", "text", "full_text", "html")
                  if isinstance(value := getattr(message, name), str)}
        changed = {name: value for name, value in update.items() if value != getattr(message, name)}
        return message.model_copy(update=changed) if changed else message


def combined(rules: Iterable[tuple[bool, Iterable[str], Iterable[tuple[str, str]]]]) -> Masker:
    """One masker from several routes' (cards, national ids, (regex, replacement) pairs): the strictest union."""
    cards, national, patterns = False, set(), {}
    for route_cards, route_ids, route_patterns in rules:
        cards |= route_cards
        national |= set(route_ids)
        for regex, replacement in route_patterns:
            patterns.setdefault(regex, replacement)
    return Masker(cards, frozenset(national), tuple((re.compile(r), rep) for r, rep in patterns.items()))
