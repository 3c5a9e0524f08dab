"""What one WhatsApp Cloud API message says, by its ``type``: text, attachments, what it changes, channel extras.

Every type in Meta's messages webhook reference
(https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages) gives either
content an agent can read or an ``Ignored`` with its reason, which the connector logs; a type this module does not
know yet becomes a note naming it, never an empty message. Text the gateway writes itself (an order's item lines, a
note for a system event) is marked by ``language="und"`` so that it never decides a ticket's language.
"""

from __future__ import annotations

import json
import mimetypes
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.model import Attachment, MessageKind

MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
# every message type may carry these (context.forwarded, a click-to-WhatsApp ad's referral): kept in the extras
_REFERRAL_KEYS = ("source_url", "source_id", "source_type", "headline", "body", "media_type", "image_url",
                  "video_url", "thumbnail_url", "ctwa_clid", "welcome_message")


@dataclass(frozen=True)
class Content:
    """The readable part of one message."""

    text: str = ""
    kind: MessageKind = MessageKind.MESSAGE
    target: str | None = None
    attachments: tuple[Attachment, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)
    language: str | None = None  # "und" when the text is the gateway's note rather than the customer's words


@dataclass(frozen=True)
class Ignored:
    """A message that carries nothing for an agent, and why."""

    reason: str


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _error_line(errors: list[Any]) -> str:
    parts = []
    for error in errors:
        error = _object(error)
        title = error.get("title") or error.get("message") or "error"
        details = _object(error.get("error_data")).get("details")
        parts.append(f"{error.get('code', '')} {title}".strip() + (f": {details}" if details else ""))
    return "; ".join(parts)


def _media(mtype: str, body: dict[str, Any], media_base: str) -> tuple[str, tuple[Attachment, ...], dict[str, Any]]:
    extras: dict[str, Any] = {}
    if not body.get("id"):
        return body.get("caption", ""), (), {"media_missing": mtype}
    content_type = str(body.get("mime_type") or "application/octet-stream").split(";")[0].strip()
    filename = body.get("filename") or f"{mtype}{mimetypes.guess_extension(content_type) or ''}"
    if body.get("sha256"):
        extras["media_sha256"] = body["sha256"]
    if body.get("voice"):
        extras["voice"] = True
    attachment = Attachment(filename=filename, content_type=content_type, location=f"{media_base}/{body['id']}")
    return body.get("caption", ""), (attachment,), extras


def _order(body: dict[str, Any]) -> Content:
    items = [_object(item) for item in body.get("product_items") or ()]
    lines = [f"Order from catalog {body.get('catalog_id', '?')}:"]
    lines += [f"- {item.get('quantity', '?')} x {item.get('product_retailer_id', '?')} at "
              f"{item.get('item_price', '?')} {item.get('currency', '')}".rstrip() for item in items]
    note = str(body.get("text") or "").strip()
    order = {"catalog_id": body.get("catalog_id"), "text": body.get("text"),
             "product_items": [{key: item.get(key) for key in ("product_retailer_id", "quantity", "item_price",
                                                                "currency")} for item in items]}
    # the customer's own note first: it decides the language; the item lines are ours
    return Content("\n".join([note, *lines]) if note else "\n".join(lines), extras={"order": order},
                   language=None if note else "und")


def _system(body: dict[str, Any]) -> Content:
    kind = body.get("type") or "system"
    text = str(body.get("body") or "")
    if not text:
        new = body.get("wa_id") or body.get("new_wa_id")
        text = (f"Changed their WhatsApp number to +{new}" if kind in ("user_changed_number", "customer_changed_number")
                and new else f"WhatsApp system event: {kind}")
    return Content(f"({text})", extras={"system": body}, language="und")


def _fields(values: dict[str, Any]) -> list[str]:
    return [f"- {key}: {value if isinstance(value, str | int | float) else json.dumps(value, ensure_ascii=False)}"
            for key, value in values.items() if key != "flow_token"]


def _nfm_reply(reply: dict[str, Any]) -> Content:
    """A WhatsApp Flow completed (``name: flow``, body "Sent") or an address sent (``address_message``): the
    answers are in ``response_json``, a JSON string."""
    name = reply.get("name") or "flow"
    raw = reply.get("response_json")
    try:
        answers = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        answers = None
    heading = "Address sent" if name == "address_message" else "Form submitted"
    extras: dict[str, Any] = {"nfm_reply_name": name}
    if isinstance(answers, dict):
        extras["flow_response"] = answers
        lines = _fields(answers)
    else:
        extras["flow_response_raw"] = raw
        lines = [str(raw)] if raw else []
    body = str(reply.get("body") or "")
    if body and body != "Sent":
        lines.insert(0, body)
    return Content("\n".join([f"{heading}:", *lines]), extras=extras, language="und")


def _call_permission(reply: dict[str, Any]) -> Content:
    response = reply.get("response") or "unknown"
    text = f"(Call permission {'granted' if response == 'accept' else 'refused' if response == 'reject' else response}"
    if response == "accept":
        if reply.get("is_permanent"):
            text += ", permanently"
        elif str(reply.get("expiration_timestamp") or "").isdigit():
            until = datetime.fromtimestamp(int(reply["expiration_timestamp"]), UTC)
            text += f" until {until:%Y-%m-%d %H:%M} UTC"
    return Content(text + ")", extras={"call_permission": reply}, language="und")


def _interactive(body: dict[str, Any]) -> Content:
    itype = body.get("type")
    sub = _object(body.get(itype)) if isinstance(itype, str) else {}
    if itype == "nfm_reply":
        return _nfm_reply(sub)
    if itype == "call_permission_reply":
        return _call_permission(sub)
    reply = _object(body.get("button_reply")) or _object(body.get("list_reply"))
    return Content(str(reply.get("title", "")), extras={"interactive": body})


def _common_extras(message: dict[str, Any]) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    context = _object(message.get("context"))
    for marker in ("forwarded", "frequently_forwarded"):
        if context.get(marker):
            extras[marker] = True
    if context.get("referred_product"):
        extras["referred_product"] = context["referred_product"]
    referral = _object(message.get("referral"))
    if referral:
        extras["referral"] = {key: referral[key] for key in _REFERRAL_KEYS if key in referral}
    if message.get("errors"):
        extras["errors"] = message["errors"]
    return extras


def _by_type(message: dict[str, Any], media_base: str) -> Content | Ignored:
    mtype = str(message.get("type") or "unknown")
    body = _object(message.get(mtype))
    if mtype == "text":
        return Content(str(body.get("body", "")))
    if mtype in MEDIA_TYPES:
        text, attachments, extras = _media(mtype, body, media_base)
        return Content(text, attachments=attachments, extras=extras)
    if mtype == "location":
        text = " ".join(str(body[k]) for k in ("name", "address") if body.get(k)) or (
            f"{body.get('latitude')},{body.get('longitude')}")
        return Content(text, extras={"location": body})
    if mtype == "contacts":
        contacts = [_object(c) for c in message.get("contacts") or ()]
        return Content(", ".join(_object(c.get("name")).get("formatted_name", "") for c in contacts),
                       extras={"contacts": contacts})
    if mtype == "interactive":
        return _interactive(body)
    if mtype == "button":  # a quick-reply button of a template
        return Content(str(body.get("text", "")), extras={"button_payload": body.get("payload")})
    if mtype == "reaction":
        if not body.get("message_id"):
            return Ignored("a reaction that names no message")
        emoji = str(body.get("emoji", ""))
        return Content(emoji, kind=MessageKind.REACTION, target=body["message_id"],
                       extras={} if emoji else {"action": "unreact"}, language="und")
    if mtype == "order":
        return _order(body)
    if mtype == "system":
        return _system(body)
    if mtype == "edit":
        return _edit(body, media_base)
    if mtype == "revoke":
        if not body.get("original_message_id"):
            return Ignored("a revoke that names no message")
        return Content(kind=MessageKind.DELETE, target=body["original_message_id"], language="und")
    if mtype == "unsupported":
        what = body.get("type") or "unknown"
        why = _error_line(message.get("errors") or [])
        return Content(f"(WhatsApp did not pass this message on ({what})" + (f": {why})" if why else ")"),
                       extras={"unsupported_type": what}, language="und")
    if mtype == "request_welcome":
        return Ignored("request_welcome: the customer opened the chat for the first time and wrote nothing yet")
    return Content(f"(A WhatsApp message of type {mtype} that the gateway does not read yet)",
                   extras={"unread": {mtype: body}}, language="und")


def _edit(body: dict[str, Any], media_base: str) -> Content | Ignored:
    """An edit (WhatsApp Business app numbers): the whole new message under ``edit.message``; the media of an edited
    caption is the original's, so only its text is taken."""
    target = body.get("original_message_id")
    if not target:
        return Ignored("an edit that names no message")
    inner = _by_type(_object(body.get("message")), media_base)
    text = inner.text if isinstance(inner, Content) else ""
    return Content(text, kind=MessageKind.EDIT, target=target, language=None if text else "und")


def read_message(message: dict[str, Any], media_base: str) -> Content | Ignored:
    """The content of one ``messages[]`` element; ``media_base`` is the Graph API base media ids resolve under."""
    content = _by_type(message, media_base)
    if isinstance(content, Ignored):
        return content
    extras = {**content.extras, **_common_extras(message)}
    if not content.text and not content.attachments and content.kind is MessageKind.MESSAGE:
        # an interactive reply (or any other type) that arrived with an error instead of its content
        why = _error_line(message.get("errors") or []) or "no text, no media"
        return Content(f"(WhatsApp sent this {message.get('type', 'message')} message without content: {why})",
                       extras=extras, language="und")
    return Content(content.text, content.kind, content.target, content.attachments, extras, content.language)
