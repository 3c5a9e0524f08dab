"""Twilio replies: agent answers sent back as SMS, MMS or WhatsApp through Twilio's Messages API.

``POST {api_base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`` (form To, From or MessagingServiceSid, Body,
MediaUrl, StatusCallback; ContentSid + ContentVariables for an approved WhatsApp template),
https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource. The calls go through the
gateway's own session with basic auth rather than twilio's ``Client``: the SDK fixes the host at api.twilio.com (a
proxy or test server needs ``api_base_url``) and its ``TwilioRestException`` drops the response headers, so a 429's
``Retry-After`` could not be honoured.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import requests
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors._reply_text import require_links
from gateway.errors import DeliveryError, OutcomeUnknown, PermanentError, RetryableError, retry_after_seconds
from gateway.model import ChannelType, IdentifierKind
from gateway.plugins import ConnectorContext, ReplySender, SendRequest, SendResult
from gateway.reply_windows import FREE_WINDOW, check_placeholders, fill, pick_template, window_age, window_closed

if TYPE_CHECKING:
    from connectors.twilio import TwilioConfig

MAX_BODY = 1600  # characters, SMS and WhatsApp alike
MAX_MEDIA = 10
SEND_TIMEOUT = (5.0, 15.0)  # connect, read (seconds)
LIST_PAGE_SIZE = 50
LIST_MAX_PAGES = 3
CLOCK_SLACK = timedelta(minutes=2)  # between our clock and Twilio's date_created
WHATSAPP_PREFIX = "whatsapp:"


class TwilioTemplate(BaseModel):
    """An approved WhatsApp template (Content API) and how its variables are filled from the reply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content_sid: str = Field(pattern=r"^HX[0-9a-fA-F]{32}$", description="The template's Content SID (HX...).")
    variables: dict[str, str] = Field(
        default_factory=lambda: {"1": "{text}"},
        description="Template variables by number; {text} is the reply, {agent} the agent's name, {customer} the "
                    "customer's.")

    @field_validator("variables")
    @classmethod
    def _known_placeholders(cls, value: dict[str, str]) -> dict[str, str]:
        for item in value.values():
            check_placeholders(item)
        return value


@dataclass(frozen=True)
class _Route:
    """Who a reply goes to and from."""

    to: str  # +E164, or whatsapp:+E164
    sender: str | None  # From: the number (or whatsapp: sender) the customer wrote to
    service: str | None  # MessagingServiceSid, when replies go through a Messaging Service
    whatsapp: bool

    @property
    def bucket(self) -> str:
        return self.sender or self.service or self.to


class TwilioSender(ReplySender):
    """Sends agent replies through Twilio, from the number (or WhatsApp sender) the customer wrote to.

    WhatsApp's 24-hour window: once it has closed only an approved template goes out (``whatsapp_templates``, picked
    by the customer's language); with none configured the reply is refused with ``window_closed``. Twilio's status
    callbacks for the reply come back to this channel's webhook and are stored as statuses.
    """

    name: str
    config: TwilioConfig
    context: ConnectorContext

    def _now(self) -> datetime:
        return datetime.now(UTC)

    # -- the contract ------------------------------------------------------------------------------------------
    def send(self, request: SendRequest) -> SendResult:
        route = self._route(request)
        form = self._content(request, route, self._now())
        response = self.context.http.post(self._messages_url, data=form, auth=self._auth, timeout=SEND_TIMEOUT)
        if not response.ok:
            raise twilio_error(response)
        data = response.json()
        return SendResult(provider_message_id=str(data["sid"]), status=str(data.get("status") or "queued"))

    def reconcile(self, request: SendRequest) -> SendResult | None:
        """Find an interrupted attempt in Twilio's message list.

        Twilio keeps no key of ours on a message, so the attempt is recognised by what it was: an outbound message
        To the customer, From the same sender (or through the same Messaging Service), created no earlier than the
        attempt started (less ``CLOCK_SLACK`` for the two clocks), whose body is the reply's text (for a template:
        whose body holds every filled variable). The list is read newest first with ``DateSent>=`` the day the
        attempt started, ``LIST_PAGE_SIZE`` a page and at most ``LIST_MAX_PAGES`` pages; a longer list cannot be
        searched to the end, and the outcome is then unknown rather than guessed.

        Absent is only answered once ``reconcile_settle_seconds`` have passed since the attempt started: a request
        Twilio is still working on, a message still queued (no ``date_sent`` yet, so outside a ``DateSent`` filter)
        and the list's own lag would otherwise read as "never sent" and the customer would get the reply twice.
        Until then the answer is RetryableError: the core asks again later and sends nothing meanwhile.
        """
        now = self._now()
        started = request.attempt_started_at or now
        route = self._route(request)
        for message in self._recent_messages(route, started - CLOCK_SLACK):
            if self._is_attempt(message, request, route, started - CLOCK_SLACK):
                return SendResult(provider_message_id=str(message["sid"]), status=str(message.get("status") or ""),
                                  detail="found in Twilio's message list after an interrupted attempt")
        waited = (now - started).total_seconds()
        settle = self.config.reconcile_settle_seconds
        if waited < settle:
            raise RetryableError(
                f"Twilio's message list does not show the interrupted attempt yet ({waited:.0f} s after it started); "
                "looking again before anything is resent", code="reconcile_pending", retry_after=settle - waited)
        return None

    def send_limit(self, request: SendRequest) -> tuple[str, float]:
        """Per sending number (or Messaging Service): a US long code takes about one message a second."""
        try:
            bucket = self._route(request).bucket
        except DeliveryError:
            bucket = "unknown"  # send() refuses it with the reason
        return (f"send:{self.name}:{bucket}", self.config.send_per_minute)

    # -- building the message ----------------------------------------------------------------------------------
    @property
    def _messages_url(self) -> str:
        return f"{self.config.api_base_url.rstrip('/')}/2010-04-01/Accounts/{self.config.account_sid}/Messages.json"

    @property
    def _auth(self) -> tuple[str, str]:
        return (self.config.account_sid, self.config.auth_token.get_secret_value())

    def _route(self, request: SendRequest) -> _Route:
        answered = request.reply_to
        phone = next((i.value for i in answered.sender.identifiers if i.kind is IdentifierKind.PHONE), None)
        if phone is None:
            raise PermanentError("the customer's message carries no phone number to answer", code="no_recipient")
        business = str(answered.extras.get("To") or "")
        if answered.channel is ChannelType.WHATSAPP:
            if not business.lower().startswith(WHATSAPP_PREFIX):
                raise PermanentError("the WhatsApp sender the customer wrote to is not known, so the reply cannot "
                                     "be sent from it", code="no_sender")
            return _Route(WHATSAPP_PREFIX + phone, business, None, whatsapp=True)
        if self.config.messaging_service_sid:
            return _Route(phone, None, self.config.messaging_service_sid, whatsapp=False)
        if not business:
            raise PermanentError("the number the customer texted is not known and no messaging_service_sid is "
                                 "configured, so there is nothing to send from", code="no_sender")
        return _Route(phone, business, None, whatsapp=False)

    def _content(self, request: SendRequest, route: _Route, now: datetime) -> list[tuple[str, str]]:
        """The form to post; a reply with an attachment that has no public URL is refused (``require_links``)."""
        require_links(request.message, "WhatsApp" if route.whatsapp else "SMS")
        form = [("To", route.to)]
        form.append(("From", route.sender) if route.sender else ("MessagingServiceSid", route.service or ""))
        form.append(("StatusCallback", f"{self.context.public_url.rstrip('/')}/hooks/{self.name}"))
        age = window_age(request.last_inbound_at, now)
        if route.whatsapp and age > FREE_WINDOW:
            variables = self._template_variables(request)
            if variables is None:
                raise window_closed("WhatsApp", age, "24-hour", "only an approved template can be sent, and none is "
                                    "configured for this channel (whatsapp_templates).")
            content_sid, values = variables
            return [*form, ("ContentSid", content_sid),
                    ("ContentVariables", json.dumps(values, ensure_ascii=False))]
        text = request.message.text
        if len(text) > MAX_BODY:
            raise PermanentError(f"the reply is {len(text)} characters long and Twilio takes at most {MAX_BODY:,} in "
                                 "one message; shorten it or split it into several replies.", code="too_long")
        media = [a.location for a in request.message.attachments if _public(a.location)]
        if len(media) > MAX_MEDIA:
            raise PermanentError(f"the reply has {len(media)} attachments and Twilio takes at most {MAX_MEDIA} in one "
                                 "message; send the others in another reply.", code="too_many_attachments")
        if not text.strip() and not media:
            raise PermanentError("the reply has no text and no attachment with a public URL, so there is nothing "
                                 "to send", code="empty")
        if text:
            form.append(("Body", text))
        form += [("MediaUrl", url) for url in media]
        return form

    def _template_variables(self, request: SendRequest) -> tuple[str, dict[str, str]] | None:
        template = pick_template(self.config.whatsapp_templates, request.reply_to.language)
        if template is None:
            return None
        fields = {"text": request.message.text, "agent": request.message.sender.display_name or "",
                  "customer": request.customer.display_name or request.reply_to.sender.display_name or ""}
        return template.content_sid, {key: fill(value, fields) for key, value in template.variables.items()}

    # -- looking an attempt up ---------------------------------------------------------------------------------
    def _recent_messages(self, route: _Route, since: datetime) -> Iterator[dict[str, Any]]:
        first = {"To": route.to, "DateSent>": since.date().isoformat(), "PageSize": str(LIST_PAGE_SIZE)}
        if route.sender:
            first["From"] = route.sender
        params: dict[str, str] | None = first
        url = self._messages_url
        for _ in range(LIST_MAX_PAGES):
            response = self.context.http.get(url, params=params, auth=self._auth, timeout=SEND_TIMEOUT)
            if not response.ok:
                raise twilio_error(response)
            page = response.json()
            yield from page.get("messages") or []
            next_uri = page.get("next_page_uri")
            if not next_uri:
                return
            url, params = f"{self.config.api_base_url.rstrip('/')}{next_uri}", None
        raise OutcomeUnknown(f"more than {LIST_PAGE_SIZE * LIST_MAX_PAGES} messages were sent to this number since "
                             "then, too many to search Twilio's list for it.")

    def _is_attempt(self, message: dict[str, Any], request: SendRequest, route: _Route, since: datetime) -> bool:
        if not str(message.get("direction", "")).startswith("outbound") or message.get("to") != route.to:
            return False
        if route.sender and message.get("from") != route.sender:
            return False
        if route.service and message.get("messaging_service_sid") != route.service:
            return False
        created = _date(message.get("date_created"))
        if created is None or created < since:
            return False
        body = str(message.get("body") or "").strip()
        if body == request.message.text.strip() and (body or int(message.get("num_media") or 0) > 0):
            return True
        variables = self._template_variables(request) if route.whatsapp else None
        return variables is not None and bool(body) and all(v.strip() in body for v in variables[1].values())


def twilio_error(response: requests.Response) -> DeliveryError:
    """Twilio's error answer as a delivery error: throttling and outages retry, refusals say why.

    Codes from https://www.twilio.com/docs/api/errors: 21610 the recipient texted STOP, 63016 outside the WhatsApp
    window, 20429 too many requests, 20003 authentication.
    """
    try:
        data = response.json()
    except ValueError:
        data = {}
    code = str(data.get("code") or "") if isinstance(data, dict) else ""
    said = str(data.get("message") or "") if isinstance(data, dict) else ""
    said = (said or response.reason or "")[:500]
    status = response.status_code
    label = f"error {code}" if code else f"HTTP {status}"
    if status == 429 or code == "20429":
        return RetryableError(f"Twilio is throttling sends ({label}): {said}", code=code or "429",
                              retry_after=retry_after_seconds(response.headers))
    if status >= 500:
        return RetryableError(f"Twilio answered {status}: {said}", code=code or str(status),
                              retry_after=retry_after_seconds(response.headers))
    if code == "21610":
        return PermanentError("the customer has opted out of messages from this number (they texted STOP); they "
                              "must text START before they can be messaged again.", code="opted_out")
    if code == "63016":
        return PermanentError("WhatsApp's 24-hour window with this customer has closed: only an approved template "
                              f"can be sent (Twilio {label}: {said})", code="window_closed")
    if status in (401, 403):
        return PermanentError(f"Twilio refused this channel's credentials ({label}); an admin must check "
                              "account_sid and auth_token.", code=code or str(status))
    return PermanentError(f"Twilio refused the message ({label}): {said}", code=code or str(status))


def _public(location: str) -> bool:
    return location.startswith(("https://", "http://"))


def _date(value: Any) -> datetime | None:
    """An RFC 2822 date as Twilio writes them (``Thu, 30 Jul 2015 20:12:31 +0000``)."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

