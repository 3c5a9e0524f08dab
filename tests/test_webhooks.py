"""The plain request object connectors see: its JSON and form bodies."""

from __future__ import annotations

import pytest

from gateway.errors import MalformedRequest
from gateway.webhooks import Headers, HookRequest


def request(body: bytes, content_type: str = "application/json") -> HookRequest:
    return HookRequest("POST", "/hooks/x", "", Headers({"Content-Type": content_type}), body, "https://gw/hooks/x")


def test_json_object_is_parsed_once() -> None:
    hook = request('{"object": "page", "entry": [], "name": "Zoë"}'.encode())
    first = hook.json_object()
    assert first == {"object": "page", "entry": [], "name": "Zoë"}
    assert hook.json_object() is first


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "body is not valid JSON"),
    (b"{not json", "body is not valid JSON"),
    (b"\xff\xfe{", "body is not valid JSON"),
    (b"[1, 2]", "body is not a JSON object (a JSON array)"),
    (b'"text"', "body is not a JSON object (a JSON string)"),
    (b"null", "body is not a JSON object (a JSON null)"),
    (b"12", "body is not a JSON object (a JSON number)"),
])
def test_json_object_refuses_other_bodies_with_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        request(body).json_object()
    assert caught.value.reason == reason and caught.value.status == 400


def test_json_object_does_not_look_at_the_content_type() -> None:
    assert request(b'{"a": 1}', "text/plain").json_object() == {"a": 1}


def test_form_keeps_order_and_repeats_and_refuses_other_types() -> None:
    hook = request(b"a=1&b=2&a=3", "application/x-www-form-urlencoded; charset=utf-8")
    assert hook.form() == [("a", "1"), ("b", "2"), ("a", "3")]
    with pytest.raises(MalformedRequest, match="expected application/x-www-form-urlencoded"):
        request(b"a=1").form()
