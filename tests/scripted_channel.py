"""A sending channel for core tests: Twilio's inbound side, and a provider whose answers a test scripts.

The "provider" keeps what it accepted, so a test can tell what reached the customer's phone from what the gateway
believes, the difference that matters after a timeout or a crash.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import requests

from connectors.twilio import TwilioChannel, TwilioConfig
from gateway.errors import OutcomeUnknown, PermanentError, RetryableError
from gateway.plugins import Registry, ReplySender, SendRequest, SendResult

# what the provider does with the next send: accept it; accept it but the answer is lost on the way (timeout);
# lose it before it arrives; refuse it; throttle it
Step = Literal["accept", "accept_then_timeout", "timeout", "refuse", "throttle", "opted_out"]


@dataclass
class ScriptedProvider:
    steps: list[Step] = field(default_factory=list)
    accepted: list[tuple[str, str, str]] = field(default_factory=list)  # (provider id, to, text)
    reconcile_calls: int = 0
    lookup: Literal["exact", "unknown", "cannot_tell"] = "exact"

    def next_step(self) -> Step:
        return self.steps.pop(0) if self.steps else "accept"

    def by_token(self, token: str) -> Iterator[str]:
        return (sid for sid, _to, text in self.accepted if text.endswith(f"[{token}]"))


class ScriptedConfig(TwilioConfig):
    type: Literal["scripted"] = "scripted"  # type: ignore[assignment]


class ScriptedChannel(TwilioChannel, ReplySender):
    """Twilio's inbound side; replies go to ``provider`` (one per process, shared by every instance)."""

    type_name = "scripted"
    Config = ScriptedConfig
    provider = ScriptedProvider()

    def send(self, request: SendRequest) -> SendResult:
        step = self.provider.next_step()
        to = request.message.recipients[0].identifiers[0].value
        # the token travels with the text so that the lookup below can find exactly this reply
        text = f"{request.message.text} [{request.token}]"
        if step == "refuse":
            raise PermanentError("the customer's WhatsApp window closed 26 h ago; send a template", code="63016")
        if step == "opted_out":
            raise PermanentError("the customer has opted out of messages from this number", code="opted_out")
        if step == "throttle":
            raise RetryableError("HTTP 429", code="429", retry_after=1.0)
        if step == "timeout":
            raise requests.Timeout("read timed out")
        sid = f"SM{len(self.provider.accepted):032d}"
        self.provider.accepted.append((sid, to, text))
        if step == "accept_then_timeout":
            raise requests.Timeout("read timed out")
        return SendResult(sid, status="queued")

    def reconcile(self, request: SendRequest) -> SendResult | None:
        self.provider.reconcile_calls += 1
        if self.provider.lookup == "unknown":
            raise OutcomeUnknown("this provider keeps no list of sent messages.")
        if self.provider.lookup == "cannot_tell":
            raise RetryableError("the provider's message list is not up to date yet", code="lookup")
        found = next(self.provider.by_token(request.token), None)
        return SendResult(found, status="sent", detail="found by reconciliation") if found else None


def registry_with_scripted() -> Registry:
    registry = Registry.from_entry_points()
    registry.add("scripted", ScriptedChannel)
    return registry
