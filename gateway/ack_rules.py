"""The ``acknowledgements:`` rules: which new conversations are answered automatically, and with which text.

A rule names the channels it answers (none: every channel), its texts per language (``default`` is the fallback;
a plain string is the default alone), optionally a business-hours calendar and a different text for the hours it is
closed. Texts are sandboxed Jinja templates; every one is rendered against a sample at load time, so a misspelled
placeholder is a config error, never a customer reading a blank.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.calendars import BusinessCalendar
from gateway.yamlsource import ConfigIssue, YamlDocument

DEFAULT = "default"
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
SAMPLE_CONTEXT: dict[str, Any] = {
    "ticket": {"id": "12345", "number": "12345"},
    "customer": {"name": "Asha"},
    "channel": "sms-main", "channel_type": "sms", "language": "en",
    "business_hours": "Mon-Fri 09:00-18:00 (Asia/Kolkata)", "is_open": True,
    "next_open": "2026-01-12 09:00 IST", "expected_response": "2026-01-12 13:00 IST", "response_minutes": 240,
}


@lru_cache(maxsize=512)
def compiled(source: str) -> Any:
    return _ENV.from_string(source)


def render(source: str, context: dict[str, Any]) -> str:
    """The text for one customer; raises ``jinja2.TemplateError`` (a placeholder that does not exist)."""
    return str(compiled(source).render(context)).strip()


class AckRule(BaseModel):
    """One ``acknowledgements:`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[str] = Field([], description="Channels whose new conversations this rule answers; none: all.")
    routes: list[str] = Field(
        [], description="Route names (`routes[].name`): the rule answers only conversations whose first message one "
                        "of them takes, and names that route's CRM's ticket; none: any route.")
    crm: str | None = Field(
        None, description="The CRM whose ticket the text names and where the public comment is written; default: "
                          "the first route from the customer's channel.")
    text: dict[str, str] = Field(
        description="The text per language code (en, ml, te, hi, pt-BR, ...); `default` for any other language. "
                    "Jinja placeholders: ticket.id, ticket.number, customer.name, channel, language, "
                    "business_hours, is_open, next_open, expected_response.")
    closed_text: dict[str, str] | None = Field(
        None, description="The text outside the calendar's business hours (needs business_hours).")
    business_hours: str | None = Field(None, description="Name of a `business_hours:` calendar.")
    response_minutes: float | None = Field(
        None, gt=0, description="Expected first response, in open minutes of the calendar (wall-clock minutes "
                                "without one): shown as expected_response.")
    repeat_after_hours: float = Field(
        24.0, ge=0, description="A customer acknowledged less than this many hours ago is not acknowledged again.")
    max_delay_minutes: float = Field(
        30.0, gt=0, description="No acknowledgement when the ticket is written later than this after the "
                                "customer's message (the CRM was down): it would come too late to help.")

    @field_validator("text", "closed_text", mode="before")
    @classmethod
    def _plain_string(cls, value: Any) -> Any:
        return {DEFAULT: value} if isinstance(value, str) else value

    @field_validator("text", "closed_text")
    @classmethod
    def _languages(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if DEFAULT not in value:
            raise ValueError("needs a `default` text, for customers writing in any other language")
        for language, source in value.items():
            if language != DEFAULT and not _LANGUAGE.match(language):
                raise ValueError(f"{language!r} is not a language code such as en, ml or pt-BR")
            try:
                if not render(source, SAMPLE_CONTEXT):
                    raise ValueError(f"{language}: the text is empty")
            except TemplateError as exc:
                raise ValueError(f"{language}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _closed_needs_calendar(self) -> AckRule:
        if self.closed_text is not None and self.business_hours is None:
            raise ValueError("closed_text needs business_hours (the calendar that says when the business is closed)")
        return self

    def applies_to(self, channel: str, route_names: set[str] | None = None) -> bool:
        """Whether the rule answers a message of ``channel`` taken by the routes named ``route_names``."""
        if self.channels and channel not in self.channels:
            return False
        return not self.routes or bool(route_names and route_names.intersection(self.routes))

    def text_for(self, language: str | None, is_open: bool) -> tuple[str, str]:
        """(language key used, template): the customer's language, its primary subtag, else ``default``."""
        texts = self.text if is_open or self.closed_text is None else self.closed_text
        wanted = (language or "").strip()
        for key in (wanted, wanted.split("-")[0].lower()):
            if key and key in texts:
                return key, texts[key]
        return DEFAULT, texts[DEFAULT]


def local_time(at: datetime, calendar: BusinessCalendar | None) -> str:
    """A moment as a customer reads it: in the calendar's zone (UTC without one), such as 2026-01-12 09:00 IST."""
    if calendar is None:
        return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    return at.astimezone(calendar.zone).strftime("%Y-%m-%d %H:%M %Z")


def timing(rule: AckRule, calendar: BusinessCalendar | None, at: datetime) -> dict[str, Any]:
    """The business-hours placeholders for a message written at ``at``."""
    is_open = calendar.is_open(at) if calendar is not None else True
    next_open = calendar.next_open(at) if calendar is not None else at
    expected = None
    if rule.response_minutes is not None:
        expected = calendar.add_business_minutes(at, rule.response_minutes) if calendar is not None \
            else at + timedelta(minutes=rule.response_minutes)
    return {
        "business_hours": calendar.describe() if calendar is not None else "",
        "is_open": is_open,
        "next_open": local_time(next_open, calendar) if next_open is not None else "",
        "expected_response": local_time(expected, calendar) if expected is not None else "",
        "response_minutes": rule.response_minutes,
    }


def reference_issues(doc: YamlDocument, raw_rules: Any, channels: set[str], crms: set[str], calendars: set[str],
                     routes: list[tuple[list[str], str]], route_names: set[str] | None = None) -> list[ConfigIssue]:
    """Names the rules use that the config does not define, each with its line; read from the YAML as written, so
    they are reported alongside a rule's other mistakes."""
    issues: list[ConfigIssue] = []
    for index, rule in enumerate(raw_rules if isinstance(raw_rules, list) else []):
        if not isinstance(rule, dict):
            continue
        path: tuple[str | int, ...] = ("acknowledgements", index)
        rule_channels = rule.get("channels") if isinstance(rule.get("channels"), list) else []
        crm, calendar = rule.get("crm"), rule.get("business_hours")
        if isinstance(crm, str) and crm not in crms:
            issues.append(doc.issue((*path, "crm"), f"no crm named {crm!r}"))
        if isinstance(calendar, str) and calendar not in calendars:
            known = ", ".join(sorted(calendars)) or "none defined"
            issues.append(doc.issue((*path, "business_hours"),
                                    f"no business_hours calendar named {calendar!r} (known: {known})"))
        for position, name in enumerate(rule.get("routes") if isinstance(rule.get("routes"), list) else []):
            if name not in (route_names or set()):
                known = ", ".join(sorted(route_names or [])) or "none named"
                issues.append(doc.issue((*path, "routes", position), f"no route named {name!r} (known: {known})"))
        for position, channel in enumerate(rule_channels):
            targets = [to for sources, to in routes if channel in sources]
            if channel not in channels:
                issues.append(doc.issue((*path, "channels", position), f"no channel named {channel!r}"))
            elif not targets:
                issues.append(doc.issue((*path, "channels", position),
                                        f"{channel!r} is routed to no crm: no ticket to name"))
            elif isinstance(crm, str) and crm in crms and crm not in targets:
                issues.append(doc.issue((*path, "channels", position),
                                        f"{channel!r} is not routed to {crm!r}: no ticket there to name"))
    return issues
