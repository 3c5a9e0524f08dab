"""Meta replies: agent answers sent back on Messenger, Instagram and the WhatsApp Cloud API.

- Messenger and Instagram: ``POST {graph}/me/messages`` with the token of the page (or Instagram account) the
  customer wrote to, ``recipient.id`` their page-scoped id, ``messaging_type`` RESPONSE inside 24 hours and, when the
  admin enables it, MESSAGE_TAG + HUMAN_AGENT up to 7 days
  (https://developers.facebook.com/docs/messenger-platform/reference/send-api).
- WhatsApp: ``POST {graph}/{phone-number-id}/messages`` with ``messaging_product: whatsapp``, ``context.message_id``
  (the customer's message being answered) and ``biz_opaque_callback_data`` (our token, echoed in status webhooks);
  after 24 hours only an approved template
  (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages).

One reply is one provider message, so an interrupted attempt can be recognised as a whole: Messenger carries a text
or one attachment, so a reply with both sends its text with the attachments' links below it; WhatsApp sends one
attachment with the text as its caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import requests
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors._reply_text import require_links
from gateway.errors import DeliveryError, OutcomeUnknown, PermanentError, RetryableError, retry_after_seconds
from gateway.model import Attachment, ChannelType, IdentifierKind
from gateway.plugins import ConnectorContext, ReplySender, SendRequest, SendResult
from gateway.reply_windows import FREE_WINDOW, check_placeholders, fill, pick_template, window_age, window_closed

if TYPE_CHECKING:
    from connectors.meta import MetaConfig

SEND_TIMEOUT = (5.0, 20.0)  # connect, read (seconds)
HUMAN_AGENT_WINDOW = timedelta(days=7)
CLOCK_SLACK = timedelta(minutes=2)
THREAD_MESSAGES = 20  # the conversations API shows a thread's 20 most recent messages
MAX_TEXT = {ChannelType.MESSENGER: 2000, ChannelType.INSTAGRAM: 1000, ChannelType.WHATSAPP: 4096}
# Graph error codes worth trying again: API throttling (4, 17, 32, 341, 613), transient errors (1, 2), WhatsApp
# throughput and pair limits (130429, 131056, 80007) and its temporary failures (131000, 131016).
# https://developers.facebook.com/docs/graph-api/guides/error-handling,
# https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes
RETRYABLE_CODES = frozenset({1, 2, 4, 17, 32, 341, 613, 80007, 130429, 131000, 131016, 131056})
LABELS = {ChannelType.MESSENGER: "Messenger", ChannelType.INSTAGRAM: "Instagram", ChannelType.WHATSAPP: "WhatsApp"}


class MetaTemplate(BaseModel):
    """An approved WhatsApp message template and how its body parameters are filled from the reply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_]{1,512}$", description="The template's name as approved.")
    language: str = Field(pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$", description="Its language code (`en_US`, `es`).")
    parameters: list[str] = Field(
        default_factory=lambda: ["{text}"],
        description="Body parameters in order; {text} is the reply, {agent} the agent's name, {customer} the "
                    "customer's.")

    @field_validator("parameters")
    @classmethod
    def _known_placeholders(cls, value: list[str]) -> list[str]:
        for item in value:
            check_placeholders(item)
        return value


@dataclass(frozen=True)
class _Thread:
    """Where a reply goes: the customer's id, the page / account / number it wrote to, and the channel."""

    channel: ChannelType
    owner: str  # page id, Instagram account id, or WhatsApp phone number id
    recipient: str  # PSID, IGSID, or wa_id


class MetaSender(ReplySender):
    """Sends agent replies on the Messenger, Instagram or WhatsApp thread the customer wrote in."""

    name: str
    config: MetaConfig
    context: ConnectorContext

    def _now(self) -> datetime:
        return datetime.now(UTC)

    # -- the contract ------------------------------------------------------------------------------------------
    def send(self, request: SendRequest) -> SendResult:
        thread = _thread(request)
        require_links(request.message, LABELS[thread.channel])
        payload = self._payload(request, thread, self._now())
        url = f"{self._graph}/{thread.owner if thread.channel is ChannelType.WHATSAPP else 'me'}/messages"
        response = self.context.http.post(url, json=payload, headers=self._auth(thread), timeout=SEND_TIMEOUT)
        if not response.ok:
            raise self._error(response, thread)
        data = response.json()
        message_id = data["messages"][0]["id"] if thread.channel is ChannelType.WHATSAPP else data["message_id"]
        return SendResult(provider_message_id=str(message_id), status="accepted")

    def reconcile(self, request: SendRequest) -> SendResult | None:
        """Find an interrupted attempt in the Messenger or Instagram thread; WhatsApp offers no such lookup.

        The conversations API (``GET /me/conversations?platform=..&user_id=..``) shows the thread's 20 most recent
        messages. The attempt is the one sent by the page (or Instagram account) itself, created no earlier than
        the attempt started (less ``CLOCK_SLACK``), whose text is the one this reply sends. When all 20 are newer
        than that and none is it, the thread has moved on too far to tell: the outcome is unknown. Absent is only
        answered once ``reconcile_settle_seconds`` have passed since the attempt started, as a message Meta is
        still working on would otherwise read as never sent.

        The WhatsApp Cloud API has no way to look a sent message up (its id only comes back in the answer that was
        lost), so an interrupted WhatsApp attempt is ``OutcomeUnknown``: never resent, and the agent is told.
        """
        thread = _thread(request)
        if thread.channel is ChannelType.WHATSAPP:
            raise OutcomeUnknown("the WhatsApp Cloud API offers no way to look up whether it went out.")
        now = self._now()
        since = (request.attempt_started_at or now) - CLOCK_SLACK
        expected = _text_with_links(request, thread)
        recent = self._thread_messages(thread)
        for message in recent:
            created = _graph_time(message.get("created_time"))
            sender = (message.get("from") or {}).get("id")
            if str(sender) == thread.owner and created is not None and created >= since \
                    and (message.get("message") or "").strip() == expected.strip():
                return SendResult(provider_message_id=str(message["id"]), status="accepted",
                                  detail="found in the conversation after an interrupted attempt")
        times = [_graph_time(m.get("created_time")) for m in recent]
        if len(recent) >= THREAD_MESSAGES and all(t is not None and t >= since for t in times):
            raise OutcomeUnknown(f"the {LABELS[thread.channel]} thread has moved on by more than {THREAD_MESSAGES} "
                                 "messages since, too many to tell whether it was among them.")
        waited = (now - (request.attempt_started_at or now)).total_seconds()
        settle = self.config.reconcile_settle_seconds
        if waited < settle:
            raise RetryableError(f"the {LABELS[thread.channel]} thread does not show the interrupted attempt yet "
                                 f"({waited:.0f} s after it started); looking again before anything is resent",
                                 code="reconcile_pending", retry_after=settle - waited)
        return None

    def send_limit(self, request: SendRequest) -> tuple[str, float]:
        """Per page, Instagram account or WhatsApp number."""
        try:
            owner = _thread(request).owner
        except DeliveryError:
            owner = "unknown"
        return (f"send:{self.name}:{owner}", self.config.send_per_minute)

    # -- building the message ----------------------------------------------------------------------------------
    @property
    def _graph(self) -> str:
        return self.config.graph_api_base_url.rstrip("/")

    def _token(self, thread: _Thread) -> str:
        if thread.channel is not ChannelType.WHATSAPP and thread.owner in self.config.page_tokens:
            return self.config.page_tokens[thread.owner].get_secret_value()
        return self.config.access_token.get_secret_value()

    def _auth(self, thread: _Thread) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token(thread)}"}

    def _payload(self, request: SendRequest, thread: _Thread, now: datetime) -> dict[str, Any]:
        age = window_age(request.last_inbound_at, now)
        label = LABELS[thread.channel]
        if thread.channel is ChannelType.WHATSAPP:
            return self._whatsapp_payload(request, thread, age)
        if age <= FREE_WINDOW:
            kind: dict[str, Any] = {"messaging_type": "RESPONSE"}
        elif age <= HUMAN_AGENT_WINDOW and self.config.human_agent_tag:
            kind = {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}
        elif self.config.human_agent_tag:
            raise window_closed(label, age, "24-hour", "with the human agent tag a page may answer for 7 days, and "
                                                       "those have passed too: the customer must write again first.")
        else:
            raise window_closed(label, age, "24-hour", "answering later needs the human agent tag (up to 7 days), "
                                                       "which is off for this channel (human_agent_tag).")
        public = [a for a in request.message.attachments if _public(a.location)]
        text = _text_with_links(request, thread)
        if not text.strip() and len(public) == 1:
            message: dict[str, Any] = {"attachment": {"type": _media_kind(public[0], thread.channel),
                                                      "payload": {"url": public[0].location, "is_reusable": False}}}
        else:
            message = {"text": _checked(text, thread)}
            choices = _choices(request)
            if choices:  # https://developers.facebook.com/docs/messenger-platform/send-messages/quick-replies
                message["quick_replies"] = [{"content_type": "text", "title": c, "payload": f"CHOICE_{c}"}
                                            for c in choices]
        if thread.channel is ChannelType.MESSENGER:
            message["metadata"] = request.token  # comes back on the echo of this message
        return {"recipient": {"id": thread.recipient}, "message": message, **kind}

    def _whatsapp_payload(self, request: SendRequest, thread: _Thread, age: timedelta) -> dict[str, Any]:
        payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual",
                                   "to": thread.recipient, "biz_opaque_callback_data": request.token}
        if age > FREE_WINDOW:
            template = pick_template(self.config.whatsapp_templates, request.reply_to.language)
            if template is None:
                raise window_closed("WhatsApp", age, "24-hour", "only an approved template can be sent, and none "
                                    "is configured for this channel (whatsapp_templates).")
            fields = {"text": request.message.text, "agent": request.message.sender.display_name or "",
                      "customer": request.customer.display_name or request.reply_to.sender.display_name or ""}
            body: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
            if template.parameters:
                body["components"] = [{"type": "body", "parameters": [
                    {"type": "text", "text": fill(value, fields)} for value in template.parameters]}]
            return {**payload, "type": "template", "template": body}
        payload["context"] = {"message_id": request.reply_to.provider_message_id}
        public = [a for a in request.message.attachments if _public(a.location)]
        if len(public) == 1 and _media_kind(public[0], thread.channel) != "audio":
            kind = _media_kind(public[0], thread.channel)
            media: dict[str, Any] = {"link": public[0].location}
            if request.message.text.strip():
                media["caption"] = _checked(request.message.text, thread)
            if kind == "document":
                media["filename"] = public[0].filename
            return {**payload, "type": kind, kind: media}
        text = _text_with_links(request, thread)
        choices = _choices(request)
        if choices:
            # reply buttons take at most 3, so a list (up to 10 rows); the answer comes back as its row's title
            rows = [{"id": f"choice_{c}", "title": c} for c in choices]
            return {**payload, "type": "interactive", "interactive": {
                "type": "list", "body": {"text": _checked(text, thread)[:1024]},
                "action": {"button": "Choose", "sections": [{"title": "Choose one", "rows": rows}]}}}
        return {**payload, "type": "text", "text": {"body": _checked(text, thread), "preview_url": False}}

    # -- looking an attempt up ---------------------------------------------------------------------------------
    def _thread_messages(self, thread: _Thread) -> list[dict[str, Any]]:
        params = {"platform": "instagram" if thread.channel is ChannelType.INSTAGRAM else "messenger",
                  "user_id": thread.recipient,
                  "fields": f"messages.limit({THREAD_MESSAGES}){{id,message,from,created_time}}"}
        response = self.context.http.get(f"{self._graph}/me/conversations", params=params, headers=self._auth(thread),
                                         timeout=SEND_TIMEOUT)
        if not response.ok:
            raise self._error(response, thread)
        found: list[dict[str, Any]] = []
        for conversation in (response.json().get("data") or [])[:5]:
            found += ((conversation.get("messages") or {}).get("data") or [])[:THREAD_MESSAGES]
        return found

    def _error(self, response: requests.Response, thread: _Thread) -> DeliveryError:
        error = graph_error(response, LABELS[thread.channel])
        secrets = [self.config.access_token, *self.config.page_tokens.values()]
        text = str(error)
        for secret in secrets:
            text = text.replace(secret.get_secret_value(), "***")
        if text == str(error):
            return error
        if isinstance(error, RetryableError):
            return RetryableError(text, code=error.code, retry_after=error.retry_after)
        return PermanentError(text, code=error.code)


def graph_error(response: requests.Response, channel: str) -> DeliveryError:
    """A Graph API error answer as a delivery error: throttling and outages retry, refusals say why."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = _int(error.get("code"))
    subcode = _int(error.get("error_subcode"))
    said = str(error.get("message") or response.reason or "")[:300]
    details = str((error.get("error_data") or {}).get("details") or "")[:300] if isinstance(
        error.get("error_data"), dict) else ""
    label = f"error {code}" + (f"/{subcode}" if subcode else "") if code is not None else f"HTTP {response.status_code}"
    reason = said + (f" ({details})" if details and details not in said else "")
    if response.status_code == 429 or response.status_code >= 500 or code in RETRYABLE_CODES:
        return RetryableError(f"Meta is throttling or unavailable ({label}): {reason}",
                              code=str(code or response.status_code), retry_after=retry_after_seconds(response.headers))
    if (code == 10 and subcode == 2018278) or code == 131047:
        return PermanentError(f"{channel} refused the reply because its messaging window with this customer has "
                              f"closed ({label}); the customer must write again first, or, on WhatsApp, an approved "
                              "template must be configured.", code="window_closed")
    if code == 551:
        return PermanentError(f"this person is not available on {channel} right now ({label}): they may have blocked "
                              "the page or left; answer through another channel.", code="unavailable")
    if code == 131026:
        return PermanentError(f"WhatsApp could not deliver to this number ({label}): it may not be on WhatsApp or "
                              "may not have accepted the latest terms; answer through another channel.",
                              code="undeliverable")
    if code == 190 or response.status_code == 401:
        return PermanentError(f"Meta refused this channel's access token ({label}): it has expired or been "
                              "revoked; an admin must renew it.", code=str(code or 401))
    return PermanentError(f"{channel} refused the reply ({label}): {reason}", code=str(code or response.status_code))


def _thread(request: SendRequest) -> _Thread:
    answered = request.reply_to
    channel = answered.channel
    if channel is ChannelType.WHATSAPP:
        owner, recipient = answered.extras.get("phone_number_id"), answered.extras.get("wa_id")
    else:
        owner = answered.extras.get("entry_id")
        kind = IdentifierKind.MESSENGER if channel is ChannelType.MESSENGER else IdentifierKind.INSTAGRAM
        scoped = next((i.value for i in answered.sender.identifiers if i.kind is kind), "")
        recipient = scoped.partition(":")[2] or None
    if channel not in LABELS or not owner or not recipient:
        raise PermanentError(f"the customer's {channel.value} message does not say which thread to answer in",
                             code="no_recipient")
    return _Thread(channel, str(owner), str(recipient))


def _text_with_links(request: SendRequest, thread: _Thread) -> str:
    """The reply's text, with the links of attachments that cannot travel as attachments below it.

    Messenger and Instagram take a text or one attachment; a lone attachment goes as itself (no text then)."""
    text = request.message.text
    public = [a for a in request.message.attachments if _public(a.location)]
    if thread.channel is not ChannelType.WHATSAPP and not text.strip() and len(public) == 1:
        return ""
    links = "\n".join(f"{a.filename}: {a.location}" for a in public)
    return (f"{text}\n\n{links}" if text.strip() else links) if links else text


def _choices(request: SendRequest) -> list[str]:
    """Quick-reply choices an automatic message offers (a satisfaction survey's 1-5), at most 10."""
    choices = request.message.extras.get("quick_replies")
    if not isinstance(choices, list) or request.message.attachments:
        return []
    return [str(choice)[:20] for choice in choices[:10]]


def _checked(text: str, thread: _Thread) -> str:
    limit = MAX_TEXT[thread.channel]
    if not text.strip():
        raise PermanentError("the reply has no text and no attachment with a public URL, so there is nothing to "
                             "send", code="empty")
    if len(text) > limit:
        raise PermanentError(f"the reply is {len(text):,} characters long and {LABELS[thread.channel]} takes at most "
                             f"{limit:,} in one message; shorten it or split it into several replies.",
                             code="too_long")
    return text


def _media_kind(attachment: Attachment, channel: ChannelType) -> str:
    major = attachment.content_type.split("/")[0]
    if major in ("image", "video", "audio"):
        return major
    return "document" if channel is ChannelType.WHATSAPP else "file"


def _public(location: str) -> bool:
    return location.startswith(("https://", "http://"))


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _graph_time(value: Any) -> datetime | None:
    """Graph's times: ``2024-03-05T10:00:00+0000``."""
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None
