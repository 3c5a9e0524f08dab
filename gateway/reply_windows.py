"""Messaging windows and approved templates, shared by the channels that have them (WhatsApp, Messenger, Instagram).

A customer's message opens a window in which the business may answer freely (24 hours on WhatsApp and Messenger);
after it only an approved template may be sent (WhatsApp), or a tagged message for a while longer (Messenger's
human agent tag, 7 days). Channels say which; this module measures the window, picks the template configured for
the customer's language and fills its variables, and words the refusal an agent reads when nothing may be sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TypeVar

from gateway.errors import PermanentError

FREE_WINDOW = timedelta(hours=24)
PLACEHOLDER = re.compile(r"\{(\w+)\}")
PLACEHOLDERS = ("text", "agent", "customer")  # what a template variable may name
DEFAULT_TEMPLATE = "default"

T = TypeVar("T")


def window_age(last_inbound_at: datetime, now: datetime) -> timedelta:
    """How long ago the customer last wrote (never negative, whatever the clocks say)."""
    return max(now - last_inbound_at, timedelta(0))


def describe_age(age: timedelta) -> str:
    """An age as an agent reads it: "26 h", "3 days"."""
    hours = int(age.total_seconds() // 3600)
    return f"{hours} h" if hours < 72 else f"{hours // 24} days"


def check_placeholders(value: str) -> str:
    """Validate a template variable: only ``{text}``, ``{agent}`` and ``{customer}`` may appear in it."""
    unknown = sorted({name for name in PLACEHOLDER.findall(value) if name not in PLACEHOLDERS})
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}: use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    return value


def fill(value: str, fields: Mapping[str, str]) -> str:
    """A template variable with its placeholders replaced (once: a reply's own braces stay as typed)."""
    return PLACEHOLDER.sub(lambda m: fields.get(m.group(1), m.group(0)), value)


def pick_template(templates: Mapping[str, T], language: str | None) -> T | None:
    """The template configured for a language: its exact tag (``pt-BR``), then its primary subtag (``pt``), then
    ``default``; None when none applies."""
    candidates = []
    if language and language != "und":
        candidates += [language, language.split("-")[0].split("_")[0]]
    candidates.append(DEFAULT_TEMPLATE)
    lowered = {key.lower(): value for key, value in templates.items()}
    return next((lowered[c.lower()] for c in candidates if c.lower() in lowered), None)


def window_closed(channel: str, age: timedelta, window: str, rule: str) -> PermanentError:
    """The refusal for a closed window, worded for the agent (the core prefixes it with "Not delivered:")."""
    return PermanentError(
        f"the customer last wrote on {channel} {describe_age(age)} ago, outside its {window} window; {rule}",
        code="window_closed")
