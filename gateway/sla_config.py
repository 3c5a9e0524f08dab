"""Settings of escalations and satisfaction surveys (`escalations:` and `surveys:` in the config)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.yamlsource import ConfigIssue, YamlDocument


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlackNotify(_Section):
    via: str = Field(description="A `slack` channel of this config: its bot token posts the notice.")
    channel: str = Field(min_length=1, description="Slack channel id (C0123...) the notice is posted in; the bot "
                                                   "must be a member.")


class EmailNotify(_Section):
    via: str = Field(description="An email channel of this config with an `smtp:` block: the notice is sent by it.")
    to: list[str] = Field(min_length=1, description="Addresses the notice goes to.")


class NotifyConfig(_Section):
    slack: SlackNotify | None = None
    email: EmailNotify | None = None


class EscalationRule(_Section):
    """One `escalations:` entry."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Names the rule in notices and metrics.")
    channels: list[str] = Field([], description="Channels whose conversations the rule watches; empty: all.")
    after_minutes: float = Field(gt=0, description="Minutes without an agent reply before the ticket is escalated.")
    calendar: str | None = Field(
        None, description="A `business_hours` calendar: only its open minutes count. Unset: every minute counts.")
    priority: Literal["low", "normal", "high", "urgent"] | None = Field(
        None, description="Raise the ticket's priority to this (never lowers it).")
    tags: list[str] = Field([], description="Tags added to the ticket (Zendesk).")
    group: str | None = Field(None, description="Zendesk group id, or Salesforce queue/user id (Case OwnerId).")
    notify: NotifyConfig = NotifyConfig()


class SurveyRule(_Section):
    """One `surveys:` entry."""

    name: str = Field("csat", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    channels: list[str] = Field([], description="Channels whose customers are asked; empty: every channel.")
    crms: list[str] = Field([], description="CRMs whose solved tickets trigger it; empty: every CRM.")
    text: dict[str, str] = Field(
        description="The question per language (the customer's detected language), with `default`: "
                    "{default: 'How did we do? Reply with a number from 1 (poor) to 5 (great).'}.")
    window_hours: float = Field(72.0, gt=0, description="How long a rating is waited for after the question.")
    field: str | None = Field(None, description="Where the CRM keeps the rating: a Zendesk custom ticket field id, "
                                                "or a Salesforce Case field (CSAT__c).")
    comment_field: str | None = Field(None, description="Salesforce Case field for the comment; Zendesk keeps it "
                                                        "as an internal note.")
    tags: bool = Field(True, description="Zendesk: tag the ticket csat_1 ... csat_5.")

    @field_validator("text")
    @classmethod
    def _default(cls, value: dict[str, str]) -> dict[str, str]:
        if not value.get("default", "").strip():
            raise ValueError("needs a non-empty `default` text")
        return value


def _survey_issues(doc: YamlDocument, data: dict[str, Any]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    sections = {"channels": "channel", "crms": "crm"}
    for index, rule in enumerate(data.get("surveys") or []):
        if not isinstance(rule, dict):
            continue
        for key, kind in sections.items():
            known = data.get(key) if isinstance(data.get(key), dict) else {}
            for position, name in enumerate(rule.get(key) or []):
                if name not in known:
                    issues.append(doc.issue(("surveys", index, key, position), f"no {kind} named {name!r}"))
    return issues


def _escalation_issues(doc: YamlDocument, data: dict[str, Any]) -> list[ConfigIssue]:
    """The channels and calendars the `escalations:` entries name exist (the models check the rest)."""
    issues: list[ConfigIssue] = []
    channels = data.get("channels") if isinstance(data.get("channels"), dict) else {}
    calendars = data.get("business_hours") if isinstance(data.get("business_hours"), dict) else {}
    names: set[str] = set()
    for index, rule in enumerate(data.get("escalations") or []):
        if not isinstance(rule, dict):
            continue
        if rule.get("name") in names:
            issues.append(doc.issue(("escalations", index, "name"), f"{rule.get('name')!r} is used twice"))
        names.add(str(rule.get("name")))
        for position, channel in enumerate(rule.get("channels") or []):
            if channel not in channels:
                issues.append(doc.issue(("escalations", index, "channels", position), f"no channel named {channel!r}"))
        calendar = rule.get("calendar")
        if calendar is not None and calendar not in calendars:
            issues.append(doc.issue(("escalations", index, "calendar"), f"no business_hours calendar {calendar!r}"))
        notify = rule.get("notify") if isinstance(rule.get("notify"), dict) else {}
        for kind, wanted in (("slack", "slack"), ("email", "smtp")):
            block = notify.get(kind)
            if not isinstance(block, dict):
                continue
            via = channels.get(block.get("via"))
            if not isinstance(via, dict):
                issues.append(doc.issue(("escalations", index, "notify", kind, "via"),
                                        f"no channel named {block.get('via')!r}"))
            elif kind == "slack" and via.get("type") != "slack":
                issues.append(doc.issue(("escalations", index, "notify", kind, "via"), "must be a slack channel"))
            elif kind == "email" and not isinstance(via.get(wanted), dict):
                issues.append(doc.issue(("escalations", index, "notify", kind, "via"),
                                        "must be an email channel with an smtp: block"))
    return issues


def check_references(doc: YamlDocument, data: dict[str, Any]) -> list[ConfigIssue]:
    """The channels, CRMs and calendars the `escalations:` and `surveys:` entries name exist."""
    return _escalation_issues(doc, data) + _survey_issues(doc, data)
