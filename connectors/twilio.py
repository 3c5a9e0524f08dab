"""Twilio Programmable Messaging: inbound SMS, MMS and WhatsApp webhooks (replies: ``_twilio_outbound``).

Signatures are checked with twilio's own ``RequestValidator`` over ``server.public_url`` + the hook path and every
form parameter received (Twilio adds parameters without notice, so none are dropped).
https://www.twilio.com/docs/usage/webhooks/webhooks-security
"""

from __future__ import annotations

import contextlib
import hmac
import mimetypes
import uuid
from functools import cached_property, lru_cache
from typing import Literal
from urllib.parse import unquote, urlencode

from pydantic import Field, SecretStr
from twilio.request_validator import RequestValidator, get_signature_algorithm
from werkzeug.datastructures import MultiDict

from connectors._twilio_outbound import TwilioSender, TwilioTemplate
from gateway.attachments import MediaRequest
from gateway.errors import MalformedRequest, OnlineCheckFailed, SignatureInvalid
from gateway.identity.normalize import InvalidIdentifier, normalize_phone
from gateway.model import (
    Attachment,
    ChannelType,
    Identifier,
    IdentifierKind,
    Message,
    Party,
    StatusUpdate,
)
from gateway.plugins import ConnectorConfig, WebhookChannel, online_check
from gateway.records import InboxItem, RawRecord
from gateway.redact import mask_identifier
from gateway.signing import current_or_previous
from gateway.webhooks import Headers, HookRequest, HookResponse

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
API_BASE = "https://api.twilio.com"
MEDIA_HOSTS = ("api.twilio.com",)
# where api.twilio.com redirects a media download: mms.twiliocdn.com when HTTP auth on media is enforced, the older
# s3-external-1.amazonaws.com otherwise (help.twilio.com/articles/223183748)
MEDIA_CDN_HOSTS = ("twiliocdn.com", "s3-external-1.amazonaws.com")
# a message carries at most 10 media (https://www.twilio.com/docs/messaging/api/media-resource); NumMedia is checked
# against it, as the count says how many MediaUrlN fields to read
MAX_MEDIA = 10


class TwilioConfig(ConnectorConfig):
    """Settings of a ``twilio`` channel (SMS, MMS and WhatsApp numbers of one Twilio account)."""

    type: Literal["twilio"] = "twilio"
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$", description="Account SID (AC + 32 hex digits).")
    auth_token: SecretStr = Field(description="Auth token the account signs webhooks with.")
    previous_auth_token: SecretStr | None = Field(
        None, description="The former auth token, accepted too while a token rotation is under way.")
    default_region: str | None = Field(
        None, pattern=r"^[A-Z]{2}$", description="Region for national phone numbers; default identity.default_region.")
    api_base_url: str = Field(API_BASE, description="Twilio REST API base URL (for proxies and test servers).")
    media_hosts: list[str] = Field(list(MEDIA_HOSTS), description="Hosts MMS media may be downloaded from.")
    media_redirect_hosts: list[str] = Field(
        list(MEDIA_CDN_HOSTS), description="Hosts a media download may be redirected to (Twilio's media CDN); "
                                           "the account's credentials are never sent there.")
    max_media_bytes: int = Field(5 * 1024 * 1024, gt=0, description="Larger MMS media are refused (Twilio: 5 MB).")
    messaging_service_sid: str | None = Field(
        None, pattern=r"^MG[0-9a-fA-F]{32}$",
        description="Send SMS/MMS replies through this Messaging Service; unset: from the number the customer texted.")
    send_per_minute: float = Field(
        60.0, gt=0, description="Replies per minute per sending number (a US long code takes about 1 a second).")
    whatsapp_templates: dict[str, TwilioTemplate] = Field(
        default_factory=dict,
        description="Approved WhatsApp templates by customer language (`es`, `pt-BR`, `default`): `{content_sid: "
                    "HX..., variables: {\"1\": \"{text}\"}}`, sent once the 24-hour window has closed.")
    reconcile_settle_seconds: float = Field(
        120.0, ge=0, description="After an interrupted send, how long Twilio's message list is given to show it "
                                 "before the reply counts as not sent and goes again.")


class _SignedParams(MultiDict[str, str]):
    """The form as RequestValidator reads it: it asks for ``getall`` first and falls back through exceptions."""

    def getall(self, key: str) -> list[str]:
        return self.getlist(key)


class TwilioChannel(WebhookChannel, TwilioSender):
    """SMS/MMS/WhatsApp messages from Twilio webhooks; agent replies sent back through Twilio (``TwilioSender``)."""

    type_name = "twilio"
    Config = TwilioConfig
    summary = ("Twilio SMS, MMS and WhatsApp webhooks (X-Twilio-Signature checked with RequestValidator); replies "
               "through the Messages API")
    channel_types = (ChannelType.SMS, ChannelType.MMS, ChannelType.WHATSAPP)
    enriches_only_media = True
    max_body_bytes = 64 * 1024  # Twilio caps inbound bodies at 32 KB; form encoding can double that
    config: TwilioConfig

    @cached_property
    def _validators(self) -> list[RequestValidator]:
        tokens = current_or_previous(self.config.auth_token, self.config.previous_auth_token)
        return [RequestValidator(token) for token in tokens]

    def verify(self, request: HookRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        checked = f"{SIGNATURE_HEADER} over {request.public_url}"
        if not signature:
            raise SignatureInvalid(f"missing {SIGNATURE_HEADER} header")
        params = _SignedParams(request.form())
        algorithm = get_signature_algorithm(request.headers.get(SETTINGS_HEADER))
        try:
            # the URL exactly as configured matches in the common case: one HMAC; validate() then also tries
            # the URL with and without its default port, as Twilio's own signing varies there
            valid = any(hmac.compare_digest(v.compute_signature(request.public_url, params, algorithm), signature)
                        or v.validate(request.public_url, params, signature, algorithm) for v in self._validators)
        except ValueError:
            raise SignatureInvalid(f"unsupported signature algorithm {algorithm!r}") from None
        if not valid:
            raise SignatureInvalid(
                f"{checked} does not match: the URL configured at Twilio must equal this one "
                "(check server.public_url and any proxy rewriting) and the auth token must be the account's")
        if params.get("AccountSid") != self.config.account_sid:
            raise SignatureInvalid("AccountSid does not match this channel's account_sid")

    def split(self, request: HookRequest) -> list[InboxItem]:
        form = dict(request.form())
        sid = form.get("MessageSid") or form.get("SmsSid")
        if not sid:
            raise MalformedRequest("MessageSid is missing")
        for key in ("NumMedia", "NumSegments"):
            if not _whole_number(form.get(key, "0")):
                raise MalformedRequest(f"{key} is not a whole number")
        _media_count(form.get("NumMedia", "0"), MalformedRequest)
        if "MessageStatus" in form and form.get("SmsStatus", form["MessageStatus"]) != "received":
            return [InboxItem(f"{sid}:status:{form['MessageStatus']}", request.body, request.content_type, "status")]
        return [InboxItem(sid, request.body, request.content_type, "message")]

    def acknowledge(self, request: HookRequest, items: list[InboxItem]) -> HookResponse:
        return HookResponse(200, EMPTY_TWIML, "text/xml; charset=utf-8")

    def normalize(self, record: RawRecord) -> list[Message]:
        if record.kind != "message":
            return []
        form = _first_values(_parse(record.body))
        sender_raw = form.get("From", "")
        is_whatsapp = sender_raw.lower().startswith("whatsapp:")
        region = self.config.default_region or self.context.default_region
        try:
            phone = _normalized_phone(sender_raw, region)
        except InvalidIdentifier as exc:
            raise ValueError(f"From {mask_identifier(sender_raw)!r}: {exc}") from None
        identifiers = [Identifier(kind=IdentifierKind.PHONE, value=phone)]
        if is_whatsapp:
            identifiers.append(Identifier(kind=IdentifierKind.WHATSAPP, value=phone))
        recipients = _business_number(form.get("To", ""), region)
        num_media = _media_count(form.get("NumMedia", "0") or "0", ValueError)
        attachments = tuple(
            Attachment(filename=_media_name(n, form.get(f"MediaContentType{n}")),
                       content_type=form.get(f"MediaContentType{n}") or "application/octet-stream",
                       location=form[f"MediaUrl{n}"])
            for n in range(num_media) if form.get(f"MediaUrl{n}"))
        channel = ChannelType.WHATSAPP if is_whatsapp else (ChannelType.MMS if attachments else ChannelType.SMS)
        body = form.get("Body", "")
        extras = {key: form[key] for key in (
            "To", "AccountSid", "MessagingServiceSid", "NumSegments", "FromCountry", "FromState", "FromCity",
            "WaId", "ProfileName", "ButtonText", "ButtonPayload", "OriginalRepliedMessageSid", "Latitude",
            "Longitude") if form.get(key)}
        return [self.message(
            record, channel=channel, provider_message_id=record.provider_id,
            sender=Party(identifiers=tuple(identifiers), display_name=form.get("ProfileName") or None),
            recipients=recipients, text=body, full_text=body, attachments=attachments,
            sent_at=record.received_at, extras=extras)]

    def statuses(self, record: RawRecord) -> list[StatusUpdate]:
        """A status callback: the state of a message the business sent, with Twilio's error code if any."""
        form = dict(_parse(record.body))
        extras = {key: form[key] for key in ("To", "From", "ErrorMessage", "ChannelStatusMessage") if form.get(key)}
        return [StatusUpdate(connector=record.connector, provider_message_id=form.get("MessageSid") or form["SmsSid"],
                             status=form["MessageStatus"], occurred_at=record.received_at,
                             error_code=form.get("ErrorCode") or None, extras=extras)]

    def enrich(self, message: Message) -> Message:
        """MMS and WhatsApp media fetched with the account's credentials, only from Twilio's media hosts.

        Twilio answers with a redirect to its media CDN, which is followed without the credentials.
        """
        credentials = (self.config.account_sid, self.config.auth_token.get_secret_value())
        return self.context.attachments.fetch_into(
            self.context.http, message, allowed_hosts=tuple(self.config.media_hosts),
            redirect_hosts=tuple(self.config.media_redirect_hosts), max_bytes=self.config.max_media_bytes,
            prepare=lambda attachment: MediaRequest(attachment.location, auth=credentials))

    def sample_request(self, *, sender: str, text: str, recipient: str | None, public_url: str) -> HookRequest:
        sid = "SM" + uuid.uuid4().hex
        params = {
            "ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
            "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "", "Body": text,
            "FromCountry": "", "To": recipient or "+15005550006", "ToZip": "", "NumSegments": "1",
            "MessageSid": sid, "AccountSid": self.config.account_sid, "From": sender, "ApiVersion": "2010-04-01",
        }
        signature = RequestValidator(self.config.auth_token.get_secret_value()).compute_signature(public_url, params)
        body = urlencode(params).encode()
        headers = Headers({"Content-Type": "application/x-www-form-urlencoded", SIGNATURE_HEADER: signature})
        return HookRequest("POST", "", "", headers, body, public_url)

    @online_check
    def check_online(self) -> str:
        """Read the account (tests the account_sid and auth_token)."""
        url = f"{self.config.api_base_url}/2010-04-01/Accounts/{self.config.account_sid}.json"
        response = self.context.http.get(
            url, auth=(self.config.account_sid, self.config.auth_token.get_secret_value()), timeout=10)
        if response.status_code == 401:
            raise OnlineCheckFailed("Twilio refused the account_sid/auth_token (401)")
        response.raise_for_status()
        return f"account {response.json().get('friendly_name', self.config.account_sid)} reachable"


def _media_count(value: str, error: type[Exception]) -> int:
    """NumMedia as a number within Twilio's limit, or ``error``."""
    if not _whole_number(value):
        raise error("NumMedia is not a whole number")
    if len(value) > 2 or int(value) > MAX_MEDIA:
        raise error(f"NumMedia {value[:40]} is over Twilio's limit of {MAX_MEDIA}")
    return int(value)


def _whole_number(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _media_name(n: int, content_type: str | None) -> str:
    extension = mimetypes.guess_extension((content_type or "").split(";")[0].strip()) or ""
    return f"media{n}{'.jpg' if extension == '.jpe' else extension}"


def _parse(body: bytes) -> list[tuple[str, str]]:
    """The form's fields, as ``parse_qsl(..., keep_blank_values=True)`` reads them (tests/connectors/test_twilio.py
    compares both), at a third of its CPU: a field without ``+`` or ``%`` is taken as it is."""
    fields = []
    for field in body.decode("utf-8").split("&"):
        if field:
            name, _, value = field.partition("=")
            fields.append((_unquote_plus(name), _unquote_plus(value)))
    return fields


def _unquote_plus(text: str) -> str:
    return unquote(text.replace("+", " ")) if "+" in text or "%" in text else text


def _first_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """A form's fields, each with its first value (as a ``MultiDict`` reads them)."""
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


# the business's number is on every message and a customer's on each of theirs: each is parsed once
_normalized_phone = lru_cache(maxsize=4096)(normalize_phone)


@lru_cache(maxsize=256)
def _business_number(to: str, region: str) -> tuple[Party, ...]:
    """The recipients of a message sent to ``to``: the business's number, built once per number (a short code or
    alphanumeric id stays in extras only)."""
    with contextlib.suppress(InvalidIdentifier):
        return (Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value=_normalized_phone(to, region)),)),)
    return ()
