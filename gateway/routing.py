"""Routing on every message: which CRMs a message goes to (``routes[].when``), and what its mapping is told.

A route without ``when`` takes every message of its channels, as before. A route with ``when`` takes a message when
all its conditions hold (each list holds when any of its values does); a route with ``otherwise: true`` takes it when
no ``when`` route of the channel did. The CRMs are chosen when a conversation opens: later messages of the
conversation go to the CRMs that hold its ticket, so a ticket is never split, and what changes on every message is
the mapping's work (group, priority, tags), which sees the routes that held as ``route.name`` and ``route.names``.

Business hours are judged at the time the message was received, so a replay routes a message as it was routed then.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Connection, bindparam, select

from gateway.calendars import build_calendars
from gateway.model import ChannelType, Message
from gateway.storage.prepared import Prepared
from gateway.storage.tables import outbox
from gateway.yamlsource import ConfigIssue, YamlDocument

if TYPE_CHECKING:
    from gateway.config import GatewayConfig, GatewaySettings, RouteConfig

log = logging.getLogger(__name__)
# an outbox row of another message of the conversation, to this CRM
_SENT_ELSEWHERE_IN_CONVERSATION = Prepared(select(outbox.c.id).where(
    outbox.c.crm == bindparam("crm"), outbox.c.conversation_id == bindparam("conversation_id"),
    outbox.c.message_id != bindparam("message_id")).limit(1))
NO_ROUTE: dict[str, Any] = {"name": "", "names": []}
"""What a mapping sees when no named route holds (and in mapping tests that give no ``route``)."""


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class CustomerWhen(BaseModel):
    """Conditions on the customer who wrote."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    identifier: list[str] = Field([], description="The customer has an identifier of one of these kinds "
                                                  "(email, phone, whatsapp, slack, ...).")
    email_domain: list[str] = Field([], description="One of the customer's email addresses is at one of these "
                                                    "domains or their subdomains.")
    phone_prefix: list[str] = Field([], description="One of the customer's numbers starts so, such as '+91'.")

    @field_validator("identifier", "email_domain", "phone_prefix", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _listed(value)

    def holds(self, identifiers: Iterable[tuple[str, str]]) -> bool:
        idents = list(identifiers)
        if self.identifier and not any(kind in self.identifier for kind, _ in idents):
            return False
        if self.email_domain:
            domains = [v.rpartition("@")[2].lower() for k, v in idents if k == "email"]
            wanted = [d.lower().lstrip("@") for d in self.email_domain]
            if not any(d == w or d.endswith("." + w) for d in domains for w in wanted):
                return False
        phones = [v for k, v in idents if k in ("phone", "whatsapp")]
        return not self.phone_prefix or any(p.startswith(tuple(self.phone_prefix)) for p in phones)


class RouteWhen(BaseModel):
    """When a route takes a message: every condition given must hold; a list holds when any of its values does."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    channel: list[str] = Field([], description="Channel names from `channels:` or channel types "
                                               "(email, sms, mms, whatsapp, slack, messenger, instagram, x).")
    language: list[str] = Field([], description="Detected language codes, such as en, ml, te, hi.")
    keywords: list[str] = Field([], description="Words or phrases in the text or subject: whole words, any case, "
                                                "any script (Chinese, Japanese and Thai: anywhere in the text).")
    customer: CustomerWhen | None = Field(None, description="Conditions on the customer.")
    business_hours: dict[str, Literal["open", "closed"]] = Field(
        {}, description="Calendar name from `business_hours:` to `open` or `closed`, when the message arrived.")

    @field_validator("channel", "language", "keywords", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _listed(value)

    def holds(self, message: Message, identifiers: Iterable[tuple[str, str]], settings: GatewaySettings) -> bool:
        """Whether the message (received at ``message.received_at``) meets every condition."""
        if self.channel and message.connector not in self.channel and message.channel.value not in self.channel:
            return False
        if self.language and (message.language or "") not in self.language:
            return False
        if self.keywords and not has_keyword(" ".join(filter(None, (message.subject, message.text))), self.keywords):
            return False
        if self.customer is not None and not self.customer.holds(identifiers):
            return False
        if self.business_hours:
            calendars = build_calendars({name: settings.business_hours[name] for name in self.business_hours})
            return all(calendars[name].is_open(message.received_at) == (state == "open")
                       for name, state in self.business_hours.items())
        return True


# Scripts written without spaces between words: a keyword in them matches anywhere in the text.
_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN", "HALFWIDTH KATAKANA")


def _words(text: str) -> list[str]:
    """Words of any script: letters, digits and combining marks (the vowel signs of Indic scripts) together."""
    words, current = [], []
    for char in unicodedata.normalize("NFC", text).casefold():
        if unicodedata.category(char)[0] in "LNM" or char in "_\u200c\u200d":
            current.append(char)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


def _unspaced(text: str) -> bool:
    return any(unicodedata.name(char, "").startswith(_UNSPACED) for char in text)


def has_keyword(text: str, keywords: Sequence[str]) -> bool:
    """Whether ``text`` holds one of ``keywords`` as whole words (a phrase: its words in a row), in any case."""
    words = _words(text)
    folded = unicodedata.normalize("NFC", text).casefold()
    for keyword in keywords:
        wanted = _words(keyword)
        if not wanted:
            continue
        if _unspaced(keyword):
            if unicodedata.normalize("NFC", keyword).casefold().strip() in folded:
                return True
            continue
        size = len(wanted)
        if any(words[i:i + size] == wanted for i in range(len(words) - size + 1)):
            return True
    return False


@dataclass(frozen=True)
class Chosen:
    """A CRM a message goes to, with what its mapping sees as ``route``."""

    crm: str
    route: dict[str, Any]


def _conditional(route: RouteConfig) -> bool:
    return route.when is not None or route.otherwise


def _holding(routes: list[RouteConfig], message: Message, identifiers: list[tuple[str, str]],
             settings: GatewaySettings) -> list[RouteConfig]:
    """The routes whose conditions hold for this message: unconditional ones, ``when`` ones that hold, and
    ``otherwise`` ones when no ``when`` route holds."""
    hits = [r for r in routes if r.when is not None and r.when.holds(message, identifiers, settings)]
    return [r for r in routes if r in hits or (r.when is None and (not r.otherwise or not hits))]


def route_label(holding: list[RouteConfig], crm: str) -> dict[str, Any]:
    """``route`` as the mapping of ``crm`` sees it: the first holding route's name and all their names."""
    names = [r.name for r in holding if r.to == crm and r.name]
    return {"name": names[0] if names else "", "names": names}


def choose(config: GatewayConfig, message: Message, identifiers: list[tuple[str, str]],
           earlier_crms: set[str]) -> list[Chosen]:
    """The CRMs a message goes to, in route order. ``earlier_crms``: where the conversation's earlier messages
    went (empty for a conversation's first message): conditional routes then keep to those CRMs."""
    routes = config.routes_from(message.connector)
    holding = _holding(routes, message, identifiers, config.settings)
    crms: list[str] = []
    for route in routes:
        if not _conditional(route):
            takes = True
        elif earlier_crms:
            takes = route.to in earlier_crms
            if not takes and route in holding:
                log.info("message %s: route to %s holds, but its conversation stays with %s", message.id,
                         route.to, ", ".join(sorted(earlier_crms)))
        else:
            takes = route in holding
        if takes and route.to not in crms:
            crms.append(route.to)
    return [Chosen(crm, route_label(holding, crm)) for crm in crms]


def label_for(config: GatewayConfig, message: Message, identifiers: list[tuple[str, str]], crm: str) -> dict[str, Any]:
    """``route`` for a stored message rendered again (a replay): the routes that hold for it now."""
    return route_label(_holding(config.routes_from(message.connector), message, identifiers, config.settings), crm)


def earlier_crms(conn: Connection, config: GatewayConfig, message: Message, conversation_id: str,
                 unwritten: Iterable[Mapping[str, Any]] = ()) -> set[str]:
    """The CRMs of the channel's routes that the conversation's other messages went to; only asked (one indexed
    look-up per CRM) when the channel has a conditional route, since only those keep to a conversation's CRMs.
    ``unwritten``: outbox rows of this transaction not inserted yet (``gateway.message_store``)."""
    routes = config.routes_from(message.connector)
    if not any(_conditional(route) for route in routes):
        return set()
    crms = dict.fromkeys(route.to for route in routes)
    found = {row["crm"] for row in unwritten if row["crm"] in crms
             and row["conversation_id"] == conversation_id and row["message_id"] != message.id}
    for crm in crms:
        if crm not in found and _SENT_ELSEWHERE_IN_CONVERSATION.first(conn, {
                "crm": crm, "conversation_id": conversation_id, "message_id": message.id}) is not None:
            found.add(crm)
    return found


def route_issues(doc: YamlDocument, settings: GatewaySettings, channels: Iterable[str]) -> list[ConfigIssue]:
    """Names in ``routes[].when`` that the config does not define (channels, calendars)."""
    issues = []
    known = set(channels) | {c.value for c in ChannelType}
    for index, route in enumerate(settings.routes):
        if route.when is None:
            if route.otherwise and not any(r.when is not None and set(r.sources) & set(route.sources)
                                           for r in settings.routes):
                issues.append(doc.issue(("routes", index, "otherwise"),
                                        "no route with `when` shares a channel with this one"))
            continue
        if route.otherwise:
            issues.append(doc.issue(("routes", index, "otherwise"), "a route has `when` or `otherwise`, not both"))
        for position, channel in enumerate(route.when.channel):
            if channel not in known:
                issues.append(doc.issue(("routes", index, "when", "channel", position),
                                        f"no channel or channel type named {channel!r}"))
        for name in route.when.business_hours:
            if name not in settings.business_hours:
                issues.append(doc.issue(("routes", index, "when", "business_hours", name),
                                        f"no calendar named {name!r} in business_hours"))
    return issues


def _rank(value: str | None, order: Sequence[str]) -> int | None:
    folded = [o.casefold() for o in order]
    return folded.index(value.casefold()) if isinstance(value, str) and value.casefold() in folded else None


def highest(values: Iterable[str], order: Sequence[str]) -> str | None:
    """The highest of ``values`` in ``order`` (values not in it rank below all); None for none."""
    ranked = sorted(values, key=lambda value: -1 if (r := _rank(value, order)) is None else r)
    return ranked[-1] if ranked else None


def priority_refusal(current: str | None, wanted: str, order: Sequence[str]) -> str | None:
    """Why a rule's priority ``wanted`` is not written over the ticket's ``current`` one (None: write it).

    A priority only rises: a lower one, or one that cannot be ranked against the ticket's, leaves the ticket as it is.
    """
    if current in (None, ""):
        return None
    have, want = _rank(current, order), _rank(wanted, order)
    if want is None or have is None:
        return (f"priority stays {current!r}: {wanted!r} cannot be ranked against it "
                f"(priorities from low to high: {', '.join(order)})")
    if want < have:
        return f"priority stays {current!r}: a rule asked for {wanted!r}, and a priority never falls"
    return None
