"""Raw payloads as the console shows them: decoded, with every value that could be a credential masked.

The console shows customers' identifiers (finding them is its purpose) but never a secret. Stored webhook bodies
can carry some: Slack's legacy verification ``token``, Mailgun's ``token`` and ``signature``, and the signature
headers; any JSON key, form field or header whose name looks like a credential is replaced.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

MASK = "••••••"
_SECRET_NAME = re.compile(r"token|secret|passw|signature|api[_-]?key|auth|cookie|credential", re.IGNORECASE)
MAX_SHOWN = 64 * 1024


def _mask_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if _SECRET_NAME.search(str(k)) and v not in (None, "") else _mask_json(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_json(v) for v in value]
    return value


def headers_shown(headers: dict[str, str]) -> dict[str, str]:
    return {k: MASK if _SECRET_NAME.search(k) else v for k, v in headers.items()}


def body_shown(body: bytes, content_type: str) -> str:
    """The body as text for an admin: JSON pretty-printed and forms listed, credentials masked; others as text."""
    text = body[:MAX_SHOWN].decode("utf-8", "replace")
    cut = "\n… (cut)" if len(body) > MAX_SHOWN else ""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json" or text.lstrip().startswith(("{", "[")):
        try:
            return json.dumps(_mask_json(json.loads(text)), indent=2, ensure_ascii=False) + cut
        except ValueError:
            pass
    if kind == "application/x-www-form-urlencoded":
        fields = parse_qsl(text, keep_blank_values=True)
        return "\n".join(f"{k} = {MASK if _SECRET_NAME.search(k) else v}" for k, v in fields) + cut
    if kind.startswith("multipart/"):
        return f"[{len(body)} bytes of {kind}: not shown]"
    return text + cut
