"""X (Twitter) Account Activity API: direct messages to the business's account.

CRC: ``GET ?crc_token=T`` is answered ``{"response_token": "sha256=" + base64(HMAC-SHA256(consumer secret, T))}``;
deliveries carry ``x-twitter-webhooks-signature: sha256=base64(HMAC-SHA256(consumer secret, raw body))``
(https://docs.x.com/x-api/account-activity/introduction). One delivery may hold several ``direct_message_events``:
each is stored under its own event id. Messages our own account sent give no customer message.

Both HMACs are X's and use the same key over unprefixed data, so an answered CRC is a valid delivery signature for
a body equal to its token. The two are kept apart by their domains: a CRC token is answered only when it is a short
opaque string (``CRC_TOKEN``: letters, digits and ``-._~+/=``, as X's base64 tokens are), and a delivery is
verified only when its body is a JSON object, which starts with ``{`` (after JSON whitespace), a character no
answered token holds. No body that can be accepted is ever a token that is answered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from requests_oauthlib import OAuth1

from connectors._x_outbound import XReplies
from connectors._x_profiles import XProfiles
from gateway.attachments import MediaRequest
from gateway.errors import MalformedRequest, SignatureInvalid, TooManyRequests
from gateway.model import Attachment, ChannelType, Identifier, IdentifierKind, Message, Party, ThreadRef
from gateway.plugins import ConnectorConfig, ConnectorContext, WebhookChannel
from gateway.ratelimit import MemoryRateLimiter
from gateway.records import InboxItem, RawRecord
from gateway.signing import current_or_previous, matches_any
from gateway.webhooks import Headers, HookRequest, HookResponse

SIGNATURE_HEADER = "x-twitter-webhooks-signature"
API_BASE = "https://api.x.com/2/"
_MEDIA_TYPES = {"photo": "image/jpeg", "video": "video/mp4", "animated_gif": "video/mp4"}
CRC_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,255}")
# X sends a CRC about hourly, at registration and when asked; per web process, as no two processes need agree
CRC_PER_MINUTE = 12
CRC_BURST = 6
_JSON_WHITESPACE = b" \t\r\n"


class XConfig(ConnectorConfig):
    """Settings of an ``x`` channel: direct messages to one X account through the Account Activity API."""

    type: Literal["x"] = "x"
    consumer_secret: SecretStr = Field(description="The app's consumer (API key) secret: signs CRCs and deliveries.")
    previous_consumer_secret: SecretStr | None = Field(
        None, description="The former consumer secret, accepted too while a rotation is under way.")
    user_id: str = Field(pattern=r"^\d+$", description="Our own account's numeric user id: its messages are ours.")
    consumer_key: str | None = Field(
        None, description="The app's consumer (API) key. With access_token and access_token_secret it lets the "
                          "gateway send agent replies and fetch DM media (OAuth 1.0a user context); without them "
                          "replies cannot be sent and media stay links.")
    access_token: SecretStr | None = Field(None, description="Our account's OAuth 1.0a access token.")
    access_token_secret: SecretStr | None = Field(None, description="Our account's OAuth 1.0a access token secret.")
    media_hosts: list[str] = Field(["ton.twitter.com"], description="Hosts DM media may be downloaded from.")
    max_media_bytes: int = Field(15 * 1024 * 1024, gt=0, description="Larger media are refused (X DMs: 15 MB).")
    api_base_url: str = Field(API_BASE, description="X API v2 base URL, for sending and looking up DMs (for proxies "
                                                    "and local test servers).")
    bearer_token: SecretStr | None = Field(
        None, description="App-only bearer token for looking up the profile names of senders a delivery does not "
                          "name (GET /2/users/:id); without it the OAuth 1.0a keys are used, if set.")
    profile_cache_seconds: int = Field(3600, ge=0, description="How long a looked-up profile name is reused.")
    profile_timeout_seconds: float = Field(
        5.0, gt=0, le=30, description="Deadline of one profile lookup; the message goes on unnamed after it.")

    @model_validator(mode="after")
    def _media_credentials_together(self) -> XConfig:
        given = [self.consumer_key is not None, self.access_token is not None, self.access_token_secret is not None]
        if any(given) and not all(given):
            raise ValueError("consumer_key, access_token and access_token_secret go together (replies, media)")
        return self


def sign(secret: str, data: bytes) -> str:
    """``sha256=`` + base64 HMAC-SHA256, the form of both the CRC answer and the delivery signature."""
    return "sha256=" + base64.b64encode(hmac.new(secret.encode(), data, hashlib.sha256).digest()).decode()


class XChannel(XReplies, WebhookChannel):
    """X direct messages from Account Activity API webhooks; agent replies go back through ``XReplies``."""

    type_name = "x"
    Config = XConfig
    summary = "X Account Activity API direct messages (CRC answered, x-twitter-webhooks-signature checked)"
    channel_types = (ChannelType.X,)
    config: XConfig

    def __init__(self, name: str, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(name, config, context)
        self.crc_budget = MemoryRateLimiter(CRC_PER_MINUTE, burst=CRC_BURST)
        self.profiles = XProfiles(context.http, self.config.api_base_url, self._lookup_auth(),
                                  cache_seconds=self.config.profile_cache_seconds,
                                  timeout_seconds=self.config.profile_timeout_seconds)

    def _oauth1(self) -> OAuth1 | None:
        if self.config.access_token is None:
            return None
        assert self.config.consumer_key and self.config.access_token_secret
        return OAuth1(self.config.consumer_key, self.config.consumer_secret.get_secret_value(),
                      self.config.access_token.get_secret_value(),
                      self.config.access_token_secret.get_secret_value())

    def _lookup_auth(self) -> Callable[[], dict[str, Any]] | None:
        """Request arguments authenticating a user lookup: the bearer token, else our account's OAuth 1.0a keys."""
        if self.config.bearer_token is not None:
            token = self.config.bearer_token
            return lambda: {"headers": {"Authorization": f"Bearer {token.get_secret_value()}"}}
        oauth1 = self._oauth1()
        return (lambda: {"auth": oauth1}) if oauth1 is not None else None

    def handshake(self, request: HookRequest) -> HookResponse | None:
        if request.method != "GET" or "crc_token" not in request.query:
            return None
        token = request.query["crc_token"]
        if not CRC_TOKEN.fullmatch(token):
            raise MalformedRequest("crc_token is not a CRC token (1 to 255 of A-Z a-z 0-9 - . _ ~ + / =)")
        wait = self.crc_budget.try_acquire()
        if wait:
            raise TooManyRequests(f"more than {CRC_PER_MINUTE} CRC requests a minute", retry_after=wait)
        body = json.dumps({"response_token": sign(self.config.consumer_secret.get_secret_value(), token.encode())})
        return HookResponse(200, body, "application/json")

    def verify(self, request: HookRequest) -> None:
        if not request.body.lstrip(_JSON_WHITESPACE).startswith(b"{"):
            # never verified: a body of this shape could be a CRC token, whose HMAC the CRC hands to anyone
            raise MalformedRequest("a delivery is a JSON object and this body is not one")
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not given:
            raise SignatureInvalid(f"missing {SIGNATURE_HEADER} header")
        secrets = current_or_previous(self.config.consumer_secret, self.config.previous_consumer_secret)
        if not matches_any(given, secrets, lambda secret: sign(secret, request.body)):
            raise SignatureInvalid(f"{SIGNATURE_HEADER} does not match the consumer secret")

    def split(self, request: HookRequest) -> list[InboxItem]:
        data = request.json_object()
        events = data.get("direct_message_events")
        if events is None:
            return []  # likes, follows, typing indicators, ...: nothing a customer wrote to us
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise MalformedRequest("direct_message_events is not a list of objects")
        users = data.get("users") if isinstance(data.get("users"), dict) else {}
        for_user_id = data.get("for_user_id")
        if for_user_id is not None and not (isinstance(for_user_id, str) and for_user_id.isascii()
                                            and for_user_id.isdigit() and len(for_user_id) <= 20):
            raise MalformedRequest("for_user_id is not an X user id")
        items = []
        for event in events:
            if event.get("type") != "message_create":
                continue
            event_id, create = event.get("id"), event.get("message_create")
            if not isinstance(event_id, str) or not event_id.isdigit():
                raise MalformedRequest("a direct message event has no id")
            if not isinstance(create, dict) or not isinstance(create.get("sender_id"), str):
                raise MalformedRequest("message_create has no sender_id")
            sender = create["sender_id"]
            recipient = str((create.get("target") or {}).get("recipient_id", ""))
            # every row of the POST carries these: only the two users' name and handle, which normalising reads
            body = {"for_user_id": for_user_id, "event": event,
                    "users": {key: _user_names(users[key]) for key in (sender, recipient) if key in users}}
            items.append(InboxItem(event_id, json.dumps(body, ensure_ascii=False).encode(), "application/json"))
        return items

    def normalize(self, record: RawRecord) -> list[Message]:
        data = json.loads(record.body)
        event: dict[str, Any] = data["event"]
        create = event["message_create"]
        sender_id = create["sender_id"]
        if sender_id in (self.config.user_id, str(data.get("for_user_id") or "")):
            return []  # our own account's message (sent from the X app or by the gateway)
        recipient_id = str((create.get("target") or {}).get("recipient_id", ""))
        message_data = create.get("message_data") or {}
        text = html.unescape(message_data.get("text") or "")
        attachments = []
        media = (message_data.get("attachment") or {}).get("media")
        if isinstance(media, dict) and media.get("media_url_https"):
            url = media["media_url_https"]
            text = text.replace(media.get("url", "\0"), "").strip()
            attachments.append(Attachment(filename=url.rsplit("/", 1)[-1],
                                          content_type=_MEDIA_TYPES.get(media.get("type", ""), "image/jpeg"),
                                          location=url))
        user = (data.get("users") or {}).get(sender_id) or {}
        extras: dict[str, Any] = {"for_user_id": data.get("for_user_id"), "recipient_id": recipient_id}
        if user.get("screen_name"):
            extras["screen_name"] = user["screen_name"]
        if create.get("source_app_id"):
            extras["source_app_id"] = create["source_app_id"]
        low, high = sorted([sender_id, recipient_id], key=lambda v: (len(v), v))
        return [self.message(
            record, channel=ChannelType.X, provider_message_id=event["id"],
            thread=ThreadRef(provider_thread_id=f"{low}-{high}"),
            sender=Party(identifiers=(Identifier(kind=IdentifierKind.X, value=sender_id),),
                         display_name=user.get("name") or None),
            recipients=(Party(identifiers=(Identifier(kind=IdentifierKind.X, value=recipient_id),)),)
            if recipient_id else (),
            text=text, full_text=text, attachments=tuple(attachments),
            sent_at=datetime.fromtimestamp(int(event.get("created_timestamp", 0)) / 1000, UTC), extras=extras)]

    def enrich(self, message: Message) -> Message:
        """The sender's profile name when the delivery gave none; DM media fetched from X's media host, signed with
        OAuth 1.0a as our account, when its keys are set."""
        if not message.sender.display_name:
            name = self.profiles.name(message.sender.identifiers[0].value)
            if name:
                message = message.model_copy(update={"sender": message.sender.model_copy(
                    update={"display_name": name})})
        auth = self._oauth1()
        if auth is None:
            return message  # media stay links
        return self.context.attachments.fetch_into(
            self.context.http, message, allowed_hosts=tuple(self.config.media_hosts),
            max_bytes=self.config.max_media_bytes,
            prepare=lambda attachment: MediaRequest(attachment.location, auth=auth))

    def sample_request(self, *, sender: str, text: str, recipient: str | None, public_url: str) -> HookRequest:
        body = json.dumps({"for_user_id": self.config.user_id, "direct_message_events": [{
            "type": "message_create", "id": str(uuid.uuid4().int)[:19],
            "created_timestamp": str(int(time.time() * 1000)),
            "message_create": {"target": {"recipient_id": self.config.user_id}, "sender_id": sender,
                               "message_data": {"text": text, "entities": {}}}}]}).encode()
        return signed_request(self.config.consumer_secret.get_secret_value(), body, public_url)


def signed_request(secret: str, body: bytes, public_url: str) -> HookRequest:
    """A delivery signed as X signs it."""
    headers = Headers({"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)})
    return HookRequest("POST", "", "", headers, body, public_url)


def _user_names(user: Any) -> dict[str, str]:
    """A user object's name and handle (X allows 50 and 15 characters)."""
    if not isinstance(user, dict):
        return {}
    return {key: value for key in ("name", "screen_name")
            if isinstance(value := user.get(key), str) and len(value) <= 200}
