"""The plain request and response objects connectors see: no Flask in here, so connectors test without a server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl

from gateway.errors import MalformedRequest


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only header mapping."""

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items = {key.lower(): (key, value) for key, value in pairs}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()][1]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (original for original, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items


@dataclass(frozen=True)
class HookRequest:
    """A webhook request as received.

    ``public_url`` is the URL the provider was told to call (``server.public_url`` + path + query): signatures that
    cover the URL are checked against it, never against what a proxy forwarded.
    """

    method: str
    path: str
    query_string: str
    headers: Headers
    body: bytes
    public_url: str
    remote_addr: str | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    def form(self) -> list[tuple[str, str]]:
        """The urlencoded form body as ordered pairs (repeated names kept); parsed once per request."""
        return self._form

    @cached_property
    def _form(self) -> list[tuple[str, str]]:
        if self.content_type != "application/x-www-form-urlencoded":
            raise MalformedRequest(f"expected application/x-www-form-urlencoded, got {self.content_type or 'none'}")
        try:
            text = self.body.decode("utf-8")
            return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedRequest(f"body is not a valid urlencoded form: {exc.__class__.__name__}") from None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; parsed once per request (the same dict every call: do not change it).

        Raises ``MalformedRequest`` when the body is not JSON, or is JSON but not an object. The content type is not
        looked at.
        """
        return self._json_object

    @cached_property
    def _json_object(self) -> dict[str, Any]:
        data = load_json(self.body)
        if not isinstance(data, dict):
            raise MalformedRequest(f"body is not a JSON object (a JSON {_json_kind(data)})")
        return data


def load_json(body: bytes | str) -> Any:
    """JSON from a request body, holding only text that can be stored; ``MalformedRequest`` when it is not JSON.

    A body nested deeper than the parser can follow is refused like any other unreadable one. JSON may escape half
    of a surrogate pair (``"\\ud83d"``, a text cut inside an emoji): no UTF-8 text can hold it, so it becomes
    U+FFFD, as a decoder does with bytes that are not UTF-8.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise MalformedRequest("body is not valid JSON") from None
    except RecursionError:
        raise MalformedRequest("body is JSON nested too deeply") from None
    if _ESCAPED_SURROGATE.search(body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")):
        data = _without_lone_surrogates(data)
    return data


_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(data: Any) -> Any:
    """``data`` with every lone surrogate in its strings (keys too) replaced by U+FFFD; iterative, as deep JSON
    would exhaust the interpreter's recursion limit."""
    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return _LONE_SURROGATE.sub("\ufffd", value)
        if isinstance(value, dict):
            copy: dict[Any, Any] = {}
            pending.append((value, copy))
            return copy
        if isinstance(value, list):
            items: list[Any] = []
            pending.append((value, items))
            return items
        return value

    pending: list[tuple[Any, Any]] = []
    root = clean(data)
    while pending:
        source, target = pending.pop()
        if isinstance(source, dict):
            for key, value in source.items():
                target[clean(key)] = clean(value)
        else:
            target.extend(clean(value) for value in source)
    return root


def _json_kind(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


@dataclass(frozen=True)
class HookResponse:
    """What the gateway answers the provider."""

    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
