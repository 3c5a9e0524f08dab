"""Raw payloads as the console shows them (and an access request exports them): decoded, with every value that
could be a credential masked, and payment card numbers too.

The console shows customers' identifiers (finding them is its purpose) but never a secret. Stored webhook bodies
can carry some: Slack's legacy verification ``token``, Mailgun's ``token`` and ``signature``, and the signature
headers; any JSON key, form field or header whose name looks like a credential is replaced. A card number the
customer typed (Luhn-checked, ``gateway.sensitive``) becomes ``**** **** **** 4242``; values named as ids (``id``,
``*_id``, ``id_str``, ``*Sid``) are left as they are, since a long numeric id may pass the Luhn check.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from gateway.errors import MalformedRequest
from gateway.mail.forms import parse_form
from gateway.sensitive import Masker

MASK = "••••••"
_SECRET_NAME = re.compile(r"token|secret|passw|signature|api[_-]?key|auth|cookie|credential", re.IGNORECASE)
_ID_NAME = re.compile(r"(^|[_-])(id|ids|id_str)$|[a-z]Sid$|^(ts|event_ts|thread_ts|mid|wamid)$", re.IGNORECASE)
_CARDS = Masker(cards=True)
MAX_SHOWN = 64 * 1024


def _field(name: str, value: str) -> str:
    if _SECRET_NAME.search(name):
        return MASK if value else value
    return value if _ID_NAME.search(name) else _CARDS.mask(value)


def _mask_json(value: Any, name: str = "") -> Any:
    if isinstance(value, dict):
        return {k: MASK if _SECRET_NAME.search(str(k)) and v not in (None, "") else _mask_json(v, str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_json(v, name) for v in value]
    if isinstance(value, str) and not _ID_NAME.search(name):
        return _CARDS.mask(value)
    return value


def headers_shown(headers: dict[str, str]) -> dict[str, str]:
    return {k: MASK if _SECRET_NAME.search(k) else v for k, v in headers.items()}


def body_shown(body: bytes, content_type: str, limit: int | None = MAX_SHOWN) -> str:
    """The body as text for an admin: JSON pretty-printed and forms listed, credentials and card numbers masked;
    others as text. With ``limit`` None (an export) nothing is cut and multipart forms are listed too."""
    text = body[:limit].decode("utf-8", "replace")
    cut = "\n… (cut)" if limit is not None and len(body) > limit else ""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json" or text.lstrip().startswith(("{", "[")):
        try:
            return json.dumps(_mask_json(json.loads(text)), indent=2, ensure_ascii=False) + cut
        except ValueError:
            pass
    if kind == "application/x-www-form-urlencoded":
        fields = parse_qsl(text, keep_blank_values=True)
        return "\n".join(f"{k} = {_field(k, v)}" for k, v in fields) + cut
    if kind.startswith("multipart/"):
        if limit is None:
            return _multipart(body, content_type)
        return f"[{len(body)} bytes of {kind}: not shown]"
    return _CARDS.mask(text) + cut


def _multipart(body: bytes, content_type: str) -> str:
    """Each field as ``name = value``; a file as its name, type and size (the bytes are exported on their own)."""
    try:
        fields = parse_form(body, content_type)
    except MalformedRequest:
        return f"[{len(body)} bytes of unreadable {content_type.split(';')[0]}]"
    return "\n".join(f"{f.name} = [file {f.filename!r}, {f.content_type}, {len(f.data)} bytes]" if f.filename
                     else f"{f.name} = {_field(f.name, f.text())}" for f in fields)
