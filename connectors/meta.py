"""Meta webhooks: Messenger, Instagram messaging and the WhatsApp Business Cloud API, from one app (replies:
``_meta_outbound``).

Subscription: GET ``hub.mode=subscribe&hub.verify_token=..&hub.challenge=..`` is answered with the challenge.
Deliveries carry ``X-Hub-Signature-256: sha256=hex(HMAC-SHA256(app secret, raw body))`` over the raw bytes
(https://developers.facebook.com/docs/graph-api/webhooks/getting-started). One POST may batch many entries and
messages: each message is stored as its own inbox item under its own id (Messenger/Instagram ``mid``, WhatsApp
``wamid``), so Meta's retries and overlapping batches store each message once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import mimetypes
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, SecretStr

from connectors._meta_outbound import MetaSender, MetaTemplate
from connectors._whatsapp_content import Ignored, read_message
from gateway.attachments import MediaRequest
from gateway.errors import MalformedRequest, SignatureInvalid
from gateway.identity.normalize import InvalidIdentifier, normalize_phone, scoped_identifier
from gateway.model import (
    Attachment,
    ChannelType,
    Identifier,
    IdentifierKind,
    Message,
    MessageKind,
    Party,
    StatusUpdate,
    ThreadRef,
)
from gateway.plugins import ConnectorConfig, WebhookChannel
from gateway.records import InboxItem, RawRecord
from gateway.redact import mask_identifier
from gateway.signing import current_or_previous, matches_any
from gateway.webhooks import Headers, HookRequest, HookResponse

log = logging.getLogger(__name__)
GRAPH_BASE = "https://graph.facebook.com/v21.0"
SIGNATURE_HEADER = "X-Hub-Signature-256"
MEDIA_HOSTS = ("fbcdn.net", "fbsbx.com", "cdninstagram.com", "whatsapp.net")
_OBJECTS = {"page": ChannelType.MESSENGER, "instagram": ChannelType.INSTAGRAM,
            "whatsapp_business_account": ChannelType.WHATSAPP}


class MetaConfig(ConnectorConfig):
    """Settings of a ``meta`` channel: one Meta app serving Messenger, Instagram and WhatsApp."""

    type: Literal["meta"] = "meta"
    app_secret: SecretStr = Field(description="The app secret Meta signs deliveries with (X-Hub-Signature-256).")
    previous_app_secret: SecretStr | None = Field(
        None, description="The former app secret, accepted too while a rotation is under way.")
    verify_token: SecretStr = Field(description="The token entered with the callback URL (hub.verify_token).")
    access_token: SecretStr = Field(
        description="System-user (or page) token: WhatsApp media and replies, and replies on pages not in page_tokens.")
    graph_api_base_url: str = Field(GRAPH_BASE, description="Graph API base URL with version (proxies, tests).")
    media_hosts: list[str] = Field(list(MEDIA_HOSTS), description="Hosts media may be downloaded from.")
    max_media_bytes: int = Field(100 * 1024 * 1024, gt=0, description="Larger media are refused.")
    default_region: str | None = Field(
        None, pattern=r"^[A-Z]{2}$", description="Region for phone numbers; default identity.default_region.")
    page_tokens: dict[str, SecretStr] = Field(
        default_factory=dict, description="Page access tokens for Messenger/Instagram replies, by the page or "
                                          "Instagram account id the webhooks name (entry id).")
    human_agent_tag: bool = Field(
        False, description="Answer Messenger/Instagram up to 7 days after the customer wrote (HUMAN_AGENT tag; needs "
                           "Meta's approval); off: 24 hours.")
    whatsapp_templates: dict[str, MetaTemplate] = Field(
        default_factory=dict, description="Approved WhatsApp templates by customer language (`es`, `default`): "
                                          "`{name, language, parameters: [\"{text}\"]}`, sent after 24 hours.")
    send_per_minute: float = Field(600.0, gt=0, description="Replies per minute per page or WhatsApp number.")
    reconcile_settle_seconds: float = Field(
        60.0, ge=0, description="After an interrupted Messenger/Instagram send, how long the thread is given to "
                                "show it before the reply counts as not sent and goes again.")


def _short_id(value: Any, name: str) -> str:
    """An id or phone number Meta sends (a few dozen characters at most), as a string."""
    text = str(value)
    if len(text) > 64:
        raise MalformedRequest(f"{name} is over 64 characters")
    return text


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise MalformedRequest(f"{what} is not a list of objects")
    return value


def _receipt_id(event: dict[str, Any]) -> str:
    """The inbox key of a Messenger/Instagram delivery or read receipt: its reader and how far it reaches."""
    sender = event.get("sender")
    reader = sender.get("id") if isinstance(sender, dict) else None
    delivered = isinstance(event.get("delivery"), dict)
    receipt = event["delivery"] if delivered else event["read"]
    reach = receipt.get("mid") or receipt.get("watermark") or ",".join(map(str, receipt.get("mids") or ()))
    if not reader or not reach:
        raise MalformedRequest("a receipt has no sender or watermark")
    return f"{'delivery' if delivered else 'read'}:{reader}:{reach}"


def _receipts(connector: str, event: dict[str, Any]) -> list[StatusUpdate]:
    """Receipts for messages the page or account sent. A watermark covers every message sent at or before it;
    Messenger names the messages (``mids``) only sometimes, Instagram names the one read (``read.mid``)."""
    status = "delivered" if isinstance(event.get("delivery"), dict) else "read"
    receipt: dict[str, Any] = event["delivery"] if status == "delivered" else event["read"]
    reader = str(event["sender"]["id"])
    occurred_at = datetime.fromtimestamp(int(event.get("timestamp") or receipt.get("watermark") or 0) / 1000, UTC)
    extras: dict[str, Any] = {"recipient_id": reader}
    mids = [str(mid) for mid in receipt.get("mids") or ()] or ([str(receipt["mid"])] if receipt.get("mid") else [])
    if "watermark" in receipt:
        extras["watermark"] = receipt["watermark"]
    if not mids:  # a watermark alone: the update stands for all of this person's messages up to it
        mids = [f"{reader}:up-to:{receipt['watermark']}"]
        extras["covers"] = "every message sent to recipient_id at or before watermark (epoch ms)"
    return [StatusUpdate(connector=connector, provider_message_id=mid, status=status, occurred_at=occurred_at,
                         extras=extras) for mid in mids]


def _item(data: dict[str, Any], provider_id: Any, kind: str = "message") -> InboxItem:
    if not isinstance(provider_id, str) or not provider_id:
        raise MalformedRequest("a message has no id")
    return InboxItem(provider_id, json.dumps(data, ensure_ascii=False).encode(), "application/json", kind)


class MetaChannel(WebhookChannel, MetaSender):
    """Messenger, Instagram and WhatsApp Cloud API messages from Meta webhooks; replies sent back (``MetaSender``)."""

    type_name = "meta"
    Config = MetaConfig
    summary = ("Meta webhooks: Messenger, Instagram, WhatsApp Cloud API (X-Hub-Signature-256, hub.challenge); replies "
               "through the Send and Cloud APIs")
    channel_types = (ChannelType.MESSENGER, ChannelType.INSTAGRAM, ChannelType.WHATSAPP)
    enriches_only_media = True
    config: MetaConfig

    # -- ingress -------------------------------------------------------------------------------------------------
    def handshake(self, request: HookRequest) -> HookResponse | None:
        if request.method != "GET" or "hub.mode" not in request.query:
            return None
        query = request.query
        token = query.get("hub.verify_token", "").encode()
        expected = self.config.verify_token.get_secret_value().encode()
        if query.get("hub.mode") != "subscribe" or not hmac.compare_digest(token, expected):
            return HookResponse(403, "hub.verify_token does not match\n")
        return HookResponse(200, query.get("hub.challenge", ""), "text/plain; charset=utf-8")

    def verify(self, request: HookRequest) -> None:
        header = request.headers.get(SIGNATURE_HEADER, "")
        if not header:
            raise SignatureInvalid(f"missing {SIGNATURE_HEADER} header")
        scheme, _, given = header.partition("=")
        if scheme != "sha256" or not given:
            raise SignatureInvalid(f"{SIGNATURE_HEADER} is not sha256=<hex>")
        secrets = current_or_previous(self.config.app_secret, self.config.previous_app_secret)
        if not matches_any(given.lower(), secrets,
                           lambda secret: hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()):
            raise SignatureInvalid(f"{SIGNATURE_HEADER} does not match the app secret")

    def split(self, request: HookRequest) -> list[InboxItem]:
        data = request.json_object()
        obj = data.get("object")
        if obj not in _OBJECTS:
            raise MalformedRequest(f"object {obj!r} is not page, instagram or whatsapp_business_account")
        entries = data.get("entry")
        if not isinstance(entries, list):
            raise MalformedRequest("entry is not a list")
        items: list[InboxItem] = []
        for entry in _list(entries, "entry"):
            if obj == "whatsapp_business_account":
                items += self._split_whatsapp(entry)
            else:
                items += self._split_messaging(obj, entry)
        return items

    def _split_messaging(self, obj: str, entry: dict[str, Any]) -> list[InboxItem]:
        items = []
        for event in _list(entry.get("messaging"), "entry.messaging"):
            wrapped = {"object": obj, "entry_id": _short_id(entry.get("id", ""), "entry.id"), "event": event}
            if isinstance(event.get("message"), dict):
                items.append(_item(wrapped, event["message"].get("mid")))
            elif isinstance(event.get("message_edit"), dict):
                edit = event["message_edit"]
                items.append(_item(wrapped, f"{edit.get('mid')}:edit:{edit.get('num_edit', event.get('timestamp'))}"))
            elif isinstance(event.get("postback"), dict):
                items.append(_item(wrapped, event["postback"].get("mid") or f"postback:{event.get('timestamp')}"))
            elif isinstance(event.get("reaction"), dict):
                reaction = event["reaction"]
                items.append(_item(wrapped, f"{reaction.get('mid')}:{reaction.get('action')}:"
                                            f"{(event.get('sender') or {}).get('id')}:{event.get('timestamp')}"))
            elif isinstance(event.get("delivery"), dict) or isinstance(event.get("read"), dict):
                items.append(_item(wrapped, _receipt_id(event), "status"))
            else:  # optins, referrals, handovers: nothing a customer wrote
                log.info("%s: %s event %s acknowledged, not stored: no customer message", self.name, obj,
                         sorted(set(event) - {"sender", "recipient", "timestamp"}))
        return items

    def _split_whatsapp(self, entry: dict[str, Any]) -> list[InboxItem]:
        items = []
        for change in _list(entry.get("changes"), "entry.changes"):
            value = change.get("value")
            if change.get("field") != "messages" or not isinstance(value, dict):
                log.info("%s: WhatsApp %r change acknowledged, not stored: no customer messages", self.name,
                         change.get("field"))
                continue
            if value.get("errors"):  # the account or app could not be served (rate limits, system problems)
                log.warning("%s: WhatsApp reports errors for the account: %s", self.name,
                            "; ".join(f"{e.get('code')} {e.get('title')}" for e in _list(value["errors"], "errors")))
            others = sorted(set(value) - {"messaging_product", "metadata", "contacts", "messages", "statuses",
                                          "errors"})
            if others:
                log.info("%s: WhatsApp %s acknowledged, not stored: not customer messages", self.name,
                         ", ".join(others))
            metadata = value.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise MalformedRequest("metadata is not an object")
            # every row of the POST carries these, so they are kept short: only what normalising reads
            common = {"object": "whatsapp_business_account", "entry_id": _short_id(entry.get("id", ""), "entry.id"),
                      "metadata": {key: _short_id(metadata[key], f"metadata.{key}")
                                   for key in ("display_phone_number", "phone_number_id") if key in metadata}}
            # and each message its sender's contact only: a copy of every contact in every row made n messages and
            # n contacts in one POST n squared bytes of rows
            contacts: dict[str, dict[str, Any]] = {}
            for contact in _list(value.get("contacts"), "contacts"):
                contacts.setdefault(str(contact.get("wa_id")), contact)
            for message in _list(value.get("messages"), "messages"):
                sender = contacts.get(str(message.get("from")))
                items.append(_item({**common, "contacts": [sender] if sender else [], "message": message},
                                   message.get("id")))
            for status in _list(value.get("statuses"), "statuses"):
                if not isinstance(status.get("status"), str):
                    raise MalformedRequest("a status has no status")
                items.append(_item({**common, "contacts": [], "status": status},
                                   f"{status.get('id')}:status:{status['status']}", "status"))
        return items

    # -- normalising ---------------------------------------------------------------------------------------------
    def normalize(self, record: RawRecord) -> list[Message]:
        if record.kind != "message":
            return []
        data = json.loads(record.body)
        if data["object"] == "whatsapp_business_account":
            return self._whatsapp(record, data)
        return self._messaging(record, data)

    def _base(self, record: RawRecord, channel: ChannelType, provider_id: str, sender: Party, sent_at: datetime,
              **fields: Any) -> Message:
        return self.message(record, channel=channel, provider_message_id=provider_id, sender=sender, sent_at=sent_at,
                            **fields)

    def _messaging(self, record: RawRecord, data: dict[str, Any]) -> list[Message]:
        channel = _OBJECTS[data["object"]]
        event: dict[str, Any] = data["event"]
        owner = data["entry_id"] or str((event.get("recipient") or {}).get("id", ""))
        sender_id = str((event.get("sender") or {}).get("id", ""))
        if not sender_id or sender_id == owner:
            return []  # the page or account itself (our own sends)
        kind = IdentifierKind.MESSENGER if channel is ChannelType.MESSENGER else IdentifierKind.INSTAGRAM
        sender = Party(identifiers=(scoped_identifier(kind, owner, sender_id),))
        sent_at = datetime.fromtimestamp(int(event.get("timestamp", 0)) / 1000, UTC)
        extras: dict[str, Any] = {"object": data["object"], "entry_id": owner}
        if "reaction" in event:
            reaction = event["reaction"]
            if reaction.get("action") == "unreact":
                extras["action"] = "unreact"
            emoji = reaction.get("emoji") or reaction.get("reaction") or ""
            return [self._base(record, channel, record.provider_id, sender, sent_at, kind=MessageKind.REACTION,
                               target_provider_message_id=reaction["mid"], text=emoji, full_text=emoji,
                               extras=extras)]
        if "message_edit" in event:
            edit = event["message_edit"]
            text = edit.get("text") or ""
            return [self._base(record, channel, record.provider_id, sender, sent_at, kind=MessageKind.EDIT,
                               target_provider_message_id=edit["mid"], text=text, full_text=text, extras=extras)]
        if "postback" in event:
            postback = event["postback"]
            extras["postback_payload"] = postback.get("payload")
            text = postback.get("title") or ""
            return [self._base(record, channel, record.provider_id, sender, sent_at, text=text, full_text=text,
                               extras=extras)]
        message: dict[str, Any] = event["message"]
        if message.get("is_echo"):
            return []
        if message.get("is_deleted"):
            return [self._base(record, channel, f"{message['mid']}:delete", sender, sent_at,
                               kind=MessageKind.DELETE, target_provider_message_id=message["mid"], extras=extras)]
        if isinstance(message.get("quick_reply"), dict):
            extras["quick_reply_payload"] = message["quick_reply"].get("payload")
        attachments = []
        for n, attachment in enumerate(message.get("attachments") or []):
            payload = attachment.get("payload") or {}
            if attachment.get("type") == "location" or isinstance(payload.get("coordinates"), dict):
                extras["location"] = payload.get("coordinates")
            elif payload.get("url"):
                content_type = _messaging_type(attachment.get("type"), payload["url"])
                attachments.append(Attachment(filename=f"{attachment.get('type', 'file')}{n}",
                                              content_type=content_type, location=payload["url"]))
        reply_to = (message.get("reply_to") or {}).get("mid")
        text = message.get("text") or ""
        return [self._base(record, channel, message["mid"], sender, sent_at, text=text, full_text=text,
                           attachments=tuple(attachments), extras=extras,
                           thread=ThreadRef(message_id=message["mid"], in_reply_to=reply_to))]

    def _region(self) -> str:
        return self.config.default_region or self.context.default_region

    def _whatsapp(self, record: RawRecord, data: dict[str, Any]) -> list[Message]:
        message: dict[str, Any] = data["message"]
        wa_id = str(message["from"])
        try:
            phone = normalize_phone(wa_id, self._region(), international=True)
        except InvalidIdentifier as exc:
            raise ValueError(f"from {mask_identifier(wa_id)!r}: {exc}") from None
        name = next((c.get("profile", {}).get("name") for c in data["contacts"] if str(c.get("wa_id")) == wa_id),
                    None)
        sender = Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value=phone),
                                    Identifier(kind=IdentifierKind.WHATSAPP, value=phone)), display_name=name)
        recipients: tuple[Party, ...] = ()
        metadata = data["metadata"]
        try:
            business = normalize_phone(str(metadata.get("display_phone_number", "")), self._region(),
                                       international=True)
            recipients = (Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value=business),)),)
        except InvalidIdentifier:
            pass
        mtype = message.get("type", "unknown")
        extras: dict[str, Any] = {"type": mtype, "wa_id": wa_id,
                                  "phone_number_id": metadata.get("phone_number_id"), "waba_id": data["entry_id"]}
        sent_at = datetime.fromtimestamp(int(message.get("timestamp", 0)), UTC)
        context = message.get("context") or {}
        thread = ThreadRef(message_id=message["id"], in_reply_to=context.get("id"))
        content = read_message(message, self.config.graph_api_base_url)
        if isinstance(content, Ignored):
            log.info("%s: inbox row %s (WhatsApp %s) ignored: %s", record.connector, record.inbox_id, mtype,
                     content.reason)
            return []
        return [self._base(record, ChannelType.WHATSAPP, message["id"], sender, sent_at, kind=content.kind,
                           target_provider_message_id=content.target, thread=thread, recipients=recipients,
                           text=content.text, full_text=content.text, attachments=content.attachments,
                           language=content.language, extras={**extras, **content.extras})]

    def statuses(self, record: RawRecord) -> list[StatusUpdate]:
        data = json.loads(record.body)
        if "event" in data:
            return _receipts(record.connector, data["event"])
        status = data["status"]
        errors = status.get("errors") or []
        extras = {key: status[key] for key in ("recipient_id", "conversation", "pricing", "biz_opaque_callback_data")
                  if key in status}
        if errors:
            extras["errors"] = errors
            extras["error_title"] = errors[0].get("title") or errors[0].get("message") or ""
        return [StatusUpdate(connector=record.connector, provider_message_id=status["id"], status=status["status"],
                             occurred_at=datetime.fromtimestamp(int(status.get("timestamp", 0)), UTC),
                             error_code=str(errors[0].get("code")) if errors else None, extras=extras)]

    # -- network: media ------------------------------------------------------------------------------------------
    def enrich(self, message: Message) -> Message:
        """Media fetched into the attachment store: WhatsApp's by media id, Messenger's and Instagram's by URL."""
        return self.context.attachments.fetch_into(self.context.http, message,
                                                   allowed_hosts=tuple(self.config.media_hosts),
                                                   max_bytes=self.config.max_media_bytes, prepare=self.media_request)

    def media_request(self, attachment: Attachment) -> MediaRequest:
        """WhatsApp media: the media id resolves to a short-lived URL, fetched with the same token. Messenger and
        Instagram give a CDN URL, fetched as it is."""
        if not attachment.location.startswith(self.config.graph_api_base_url + "/"):
            return MediaRequest(attachment.location)
        auth = {"Authorization": f"Bearer {self.config.access_token.get_secret_value()}"}
        answer = self.context.http.get(attachment.location, headers=auth, timeout=20)
        answer.raise_for_status()
        return MediaRequest(answer.json()["url"], headers=auth)

    def sample_request(self, *, sender: str, text: str, recipient: str | None, public_url: str) -> HookRequest:
        now = int(time.time())
        body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": (recipient or "15550000000").lstrip("+"),
                             "phone_number_id": "0"},
                "contacts": [{"profile": {"name": "Simulated"}, "wa_id": sender.lstrip("+")}],
                "messages": [{"from": sender.lstrip("+"), "id": "wamid.SIM" + uuid.uuid4().hex,
                              "timestamp": str(now), "type": "text", "text": {"body": text}}]}}]}]}).encode()
        return signed_request(self.config.app_secret.get_secret_value(), body, public_url)


def _messaging_type(kind: str | None, url: str) -> str:
    guessed = mimetypes.guess_type(url.split("?")[0])[0]
    if guessed:
        return guessed
    return {"image": "image/jpeg", "video": "video/mp4", "audio": "audio/mpeg"}.get(kind or "",
                                                                                    "application/octet-stream")


def signed_request(secret: str, body: bytes, public_url: str) -> HookRequest:
    """A POST signed as Meta signs deliveries."""
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = Headers({"Content-Type": "application/json", SIGNATURE_HEADER: signature})
    return HookRequest("POST", "", "", headers, body, public_url)
