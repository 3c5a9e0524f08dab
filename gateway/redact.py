"""Customers' phone numbers and email addresses kept out of logs and stored failure reasons.

``mask_identifier`` shortens one identifier to what still tells an operator which one it was (``+1415…0100``,
``a…@example.com``); ``redact`` does the same to every number and address in a text, such as a provider's error
message that quotes them. Log lines built from errors go through ``redact``; what the processes write
(``gateway.logs``), tracebacks included, goes through ``hash_identifiers``: there an address or number is a short
keyed hash instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from stdnum import luhn

ELLIPSIS = "…"
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# +digits with the separators people write (+44 20 7946 0958), or a bare run of 10 to 15 digits that is not part of
# a longer token (an id, a decimal timestamp such as Slack's 1700000000.000100)
_PHONE = re.compile(r"\+\d[\d \t().\-]{6,}\d|(?<![\w.])\d{10,15}(?![\w.])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PREFIX = re.compile(r"^([a-z]+:)(?=\S)")  # whatsapp:+1..., tel:+1...


def mask_identifier(value: str) -> str:
    """``+14155550100`` -> ``+1415…0100``, ``asha@example.com`` -> ``a…@example.com``; short values -> ``…``."""
    prefix = _PREFIX.match(value)
    if prefix and "@" not in value:
        return prefix.group(1) + mask_identifier(value[prefix.end():])
    local, at, domain = value.rpartition("@")
    if at and local:
        return f"{local[0]}{ELLIPSIS}@{domain}"
    plus = "+" if value.startswith("+") else ""
    body = value[len(plus):]
    if len(body) < 10:
        return ELLIPSIS
    return f"{plus}{body[:4]}{ELLIPSIS}{body[-4:]}"


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return f"**** **** **** {digits[-4:]}" if luhn.is_valid(digits) else match.group()


def mask_cards(text: str) -> str:
    """``text`` with each payment card number (13 to 19 digits, Luhn-valid) as ``**** **** **** 4242``."""
    return _CARD.sub(_card, text)


def redact(text: str) -> str:
    """``text`` with every card number, email address and phone number in it masked (``mask_identifier``)."""
    if not text:
        return text
    text = mask_cards(text)
    text = _EMAIL.sub(lambda m: mask_identifier(m.group()), text)
    return _PHONE.sub(lambda m: mask_identifier(m.group()), text)


def hash_identifiers(text: str, digest: Callable[[str], str]) -> str:
    """``text`` with each email address as ``email#1a2b3c4d`` and each phone number as ``phone#5e6f7a8b``, card
    numbers masked: ``digest`` (a keyed hash) gives the same digits for the same address or number however it was
    written, so one customer can be followed across log lines."""
    if not text:
        return text
    text = mask_cards(text)
    text = _EMAIL.sub(lambda m: f"email#{digest(m.group().lower())}", text)
    return _PHONE.sub(lambda m: "phone#" + digest("+" + re.sub(r"\D", "", m.group()).lstrip("0")), text)


def describe_error(exc: BaseException) -> str:
    """``ClassName: message`` of an exception, masked: for log lines and stored failure reasons."""
    return redact(f"{type(exc).__name__}: {exc}")
