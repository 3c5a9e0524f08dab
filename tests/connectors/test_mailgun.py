"""The Mailgun routes channel: the shared conformance suite plus signature rotation, replay window and modes.

Fields are those Mailgun documents for routes' ``forward()`` posts (recipient, sender, from, subject, body-plain,
stripped-text, body-html, message-headers as JSON pairs, attachment-count, attachment-N, content-id-map, timestamp,
token, signature); a route URL ending in ``mime`` gets ``body-mime`` instead of the parsed bodies. Signature:
hex HMAC-SHA256(signing key, timestamp + token).
"""

from __future__ import annotations

import email
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from connectors.mailgun import MailgunChannel, signature_for
from connectors.sendgrid import multipart_body
from gateway.config import load_config
from gateway.errors import SignatureInvalid
from gateway.plugins import ChannelConnector
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import inbox
from gateway.web import create_app
from gateway.webhooks import Headers, HookRequest
from tests.conformance.channel import ChannelConformance, Expected, config_text, count, split_records
from tests.conftest import PUBLIC_URL
from tests.mail.corpus import CASES_FOR_WEBHOOKS, PNG, sha

CHANNEL = "mail-mailgun"
KEY = "test-mailgun-signing-key"
HOOK_URL = f"{PUBLIC_URL}/hooks/{CHANNEL}"
MESSAGE_HEADERS = [
    ["Received", "from mx.example.org by mxa.mailgun.org"], ["From", "Ravi Kumar <ravi@example.in>"],
    ["To", "support@example.test"], ["Subject", "=?utf-8?b?4LCG4LCw4LGN4LCh4LCw4LGN?= 12"],
    ["Date", "Mon, 03 Jun 2024 15:42:00 +0530"], ["Message-Id", "<mg1@mail.example.in>"],
    ["Mime-Version", "1.0"], ["Content-Type", "multipart/mixed; boundary=\"x\""]]


def signed(fields: dict[str, Any], *, key: str = KEY, timestamp: int | None = None,
           urlencoded: bool = False) -> HookRequest:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    token = uuid.uuid4().hex + uuid.uuid4().hex[:18]
    all_fields = {**fields, "timestamp": ts, "token": token, "signature": signature_for(key, ts, token)}
    if urlencoded:
        body, content_type = urlencode(all_fields).encode(), "application/x-www-form-urlencoded"
    else:
        body, content_type = multipart_body(all_fields)
    return HookRequest("POST", f"/hooks/{CHANNEL}", "", Headers({"Content-Type": content_type}), body, HOOK_URL)


PARSED = {
    "recipient": "support@example.test", "sender": "ravi@example.in", "from": "Ravi Kumar <ravi@example.in>",
    "subject": "ఆర్డర్ 12", "body-plain": "నా ఆర్డర్ ఇంకా రాలేదు 📦\n\n-- \nRavi",
    "stripped-text": "నా ఆర్డర్ ఇంకా రాలేదు 📦", "body-html": "<p>నా ఆర్డర్ ఇంకా రాలేదు 📦</p><img src=\"cid:ii_1\">",
    "message-headers": json.dumps(MESSAGE_HEADERS), "attachment-count": "1",
    "content-id-map": json.dumps({"<ii_1>": "attachment-1"}), "attachment-1": ("photo.png", "image/png", PNG),
}
FIXTURES: dict[str, tuple[dict[str, Any], bool]] = {
    "parsed_with_inline_image": (PARSED, False),
    "urlencoded_no_attachments": ({k: v for k, v in PARSED.items() if not k.startswith(("attachment", "content-id"))},
                                  True),
    "body_mime_koi8_r": ({"recipient": "support@example.test", "sender": "x@example.ru",
                          "body-mime": CASES_FOR_WEBHOOKS["koi8_r"].raw.decode("ascii", "replace")}, False),
    "body_mime_bounce": ({"recipient": "support@example.test",
                          "body-mime": CASES_FOR_WEBHOOKS["bounce_dsn"].raw.decode("ascii")}, False),
}


class TestMailgunConformance(ChannelConformance):
    """The shared suite for ``mailgun``: signatures carry a timestamp, so stale posts are refused; no handshake."""

    connector_class = MailgunChannel
    channel_name = CHANNEL
    required_secrets = ("signing_key",)
    has_timestamp = True
    common = {"sender.identifiers": [{"kind": "email", "value": "ravi@example.in"}],
              "sender.display_name": "Ravi Kumar", "subject": "ఆర్డర్ 12", "thread.message_id": "mg1@mail.example.in",
              "text": "నా ఆర్డర్ ఇంకా రాలేదు 📦", "sent_at": "2024-06-03T10:12:00Z",
              "extras.stripped_text": "నా ఆర్డర్ ఇంకా రాలేదు 📦"}
    expected = {
        "parsed_with_inline_image": Expected("message", ({
            **common, "attachments.0.filename": "photo.png", "attachments.0.inline": True,
            "attachments.0.sha256": sha(PNG), "extras.content_ids": {"ii_1": sha(PNG)}},), ("mg1@mail.example.in",)),
        "urlencoded_no_attachments": Expected("message", (common,), ("mg1@mail.example.in",)),
        "body_mime_koi8_r": Expected("message", ({"subject": "Заказ", "thread.message_id": "koi@mail.example.ru"},)),
        "body_mime_bounce": Expected("message", ()),
    }

    def channel_settings(self) -> dict[str, Any]:
        return {"type": "mailgun", "signing_key": KEY}

    def signed_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        fields, urlencoded = FIXTURES[fixture]
        return signed(fields, urlencoded=urlencoded)

    def stale_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        fields, urlencoded = FIXTURES[fixture]
        return signed(fields, urlencoded=urlencoded, timestamp=int(time.time()) - 3600)

    def tamper(self, request: HookRequest) -> HookRequest:
        return HookRequest(request.method, request.path, request.query_string, request.headers,
                           request.body.replace(b"ravi@example.in", b"evil@example.in", 1).replace(
                               b'name="timestamp"\r\n\r\n1', b'name="timestamp"\r\n\r\n2', 1), request.public_url)

    def _refused_request(self, refusal: str, connector: ChannelConnector) -> HookRequest:
        if refusal == "missing_signature":  # Mailgun's signature travels in the body
            body, content_type = multipart_body(PARSED)
            return HookRequest("POST", f"/hooks/{CHANNEL}", "", Headers({"Content-Type": content_type}), body,
                               HOOK_URL)
        return super()._refused_request(refusal, connector)

    def malformed_requests(self, connector: ChannelConnector) -> dict[str, HookRequest]:
        good = signed(PARSED)
        return {
            "json_body": HookRequest("POST", good.path, "", Headers({"Content-Type": "application/json"}),
                                     b'{"signature": {}}', HOOK_URL),
            "truncated_multipart": HookRequest("POST", good.path, "", good.headers, good.body[:300], HOOK_URL),
            "signed_but_no_message": signed({"recipient": "support@example.test"}),
        }


def test_previous_key_accepted_during_rotation() -> None:
    """While the key rotates, a signature with the new or the previous key verifies; any other does not."""
    connector = TestMailgunConformance().make_connector(
        {"type": "mailgun", "signing_key": "test-new-signing-key", "previous_signing_key": KEY})
    connector.verify(signed(PARSED))
    connector.verify(signed(PARSED, key="test-new-signing-key"))
    for other in ("test-unrelated-key", KEY[:-1], "test-new-signing-key" + "x"):
        with pytest.raises(SignatureInvalid):
            connector.verify(signed(PARSED, key=other))


def test_future_timestamp_outside_window_refused() -> None:
    connector = TestMailgunConformance().make_connector()
    with pytest.raises(SignatureInvalid, match="replay window"):
        connector.verify(signed(PARSED, timestamp=int(time.time()) + 3600))


def test_retry_with_fresh_signature_keeps_the_key() -> None:
    connector = TestMailgunConformance().make_connector()
    first = split_records(connector, signed(PARSED))
    again = split_records(connector, signed(PARSED))
    assert [r.provider_id for r in first] == [r.provider_id for r in again] == ["mg1@mail.example.in"]


def test_sample_request_verifies_and_normalises() -> None:
    connector = TestMailgunConformance().make_connector()
    request = connector.sample_request(sender="ravi@example.in", text="Hello", recipient=None, public_url=HOOK_URL)
    connector.verify(request)
    [record] = split_records(connector, request)
    [message] = connector.normalize(record)
    assert message.text == "Hello"


# -- replays, cost before the signature, limits -------------------------------------------------------------------

def triple(key: str = KEY) -> dict[str, str]:
    """A fresh timestamp, token and signature, as Mailgun puts on one post."""
    timestamp, token = str(int(time.time())), uuid.uuid4().hex + uuid.uuid4().hex[:18]
    return {"timestamp": timestamp, "token": token, "signature": signature_for(key, timestamp, token)}


def post_form(client: FlaskClient, fields: dict[str, Any], **headers: str) -> TestResponse:
    body, content_type = multipart_body(fields)
    return client.post(f"/hooks/{CHANNEL}", data=body, headers={"Content-Type": content_type, **headers})


@pytest.fixture
def mg_runtime(write_config: Callable[..., Path]) -> Iterator[Runtime]:
    rt = build_runtime(load_config(write_config(config_text(CHANNEL, {"type": "mailgun", "signing_key": KEY}))),
                       http=requests.Session())
    yield rt
    rt.close()


def sender_variant(n: int) -> dict[str, Any]:
    """Other content under the same signature: another sender, another body, no Message-Id to deduplicate on."""
    headers = [pair for pair in MESSAGE_HEADERS if pair[0] not in ("From", "Message-Id")]
    return {**PARSED, "sender": f"evil{n}@example.org", "from": f"Evil {n} <evil{n}@example.org>",
            "body-plain": f"Pay invoice {n} to account 0000", "stripped-text": f"Pay invoice {n}",
            "message-headers": json.dumps([*headers, ["From", f"evil{n}@example.org"]])}


def test_a_captured_signature_is_refused_with_other_content(mg_runtime: Runtime) -> None:
    """A timestamp/token/signature triple taken off one post and replayed inside the window with 20 other senders
    and bodies: only the post it came with is taken. The same post again (a retry) is still answered 200."""
    client = create_app(mg_runtime).test_client()
    signature = triple()
    genuine = {**PARSED, **signature}
    assert post_form(client, genuine).status_code == 200
    answers = [post_form(client, {**sender_variant(n), **signature}).status_code for n in range(20)]
    assert answers == [401] * 20
    assert count(mg_runtime, inbox, CHANNEL) == 1
    with mg_runtime.engine.connect() as conn:
        assert b"evil" not in conn.execute(select(inbox.c.body)).scalar_one()


def test_a_replay_is_refused_by_every_web_process(write_config: Callable[..., Path], postgres_url: str) -> None:
    """Two web processes (two engines on one PostgreSQL database): a token used on one is refused on the other."""
    path = write_config(config_text(CHANNEL, {"type": "mailgun", "signing_key": KEY}), storage_url=postgres_url)
    first, second = build_runtime(load_config(path)), build_runtime(load_config(path))
    try:
        signature = triple()
        assert post_form(create_app(first).test_client(), {**PARSED, **signature}).status_code == 200
        replayed = post_form(create_app(second).test_client(), {**sender_variant(1), **signature})
        assert replayed.status_code == 401
        assert count(second, inbox, CHANNEL) == 1
    finally:
        first.close()
        second.close()


def huge_form(fields: int, signature: dict[str, str] | None) -> tuple[bytes, str]:
    """About 4.8 MB in ``fields`` small fields, the signature fields (if any) at the end."""
    boundary = "xYzZY" + uuid.uuid4().hex[:12]
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="f{{}}"\r\n\r\n{"v" * 16}\r\n'
    chunks = [part.format(n).encode() for n in range(fields)]
    for name, value in (signature or {}).items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("signature", [None, "signed"])
def test_a_huge_form_costs_nothing_before_it_is_refused(mg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
                                                        signature: str | None) -> None:
    """52,000 fields in 4.8 MB, unsigned or signed: refused from a scan of the raw bytes; the form is never parsed
    (parsing it took about 10 s of CPU)."""
    client = create_app(mg_runtime).test_client()
    body, content_type = huge_form(52_000, triple() if signature else None)
    assert 4_500_000 < len(body) < 5_000_000
    parsed: list[bytes] = []
    real = email.message_from_bytes
    monkeypatch.setattr(email, "message_from_bytes", lambda data, *a, **k: parsed.append(data) or real(data, *a, **k))
    started = time.process_time()
    response = client.post(f"/hooks/{CHANNEL}", data=body, headers={"Content-Type": content_type})
    spent = time.process_time() - started
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert not parsed, "the form was parsed"
    assert spent < 2.0
    assert count(mg_runtime, inbox, CHANNEL) == 0


@pytest.mark.parametrize("bad", [{"signature": "é" * 64}, {"signature": "\u00b2" * 64}, {"timestamp": "\u00b2\u00b3"},
                                 {"timestamp": "9" * 40}, {"token": "t" * 4000}, {"token": "\x00"}])
def test_odd_signature_fields_are_4xx(mg_runtime: Runtime, bad: dict[str, str]) -> None:
    client = create_app(mg_runtime).test_client()
    response = post_form(client, {**PARSED, **triple(), **bad})
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert "Retry-After" not in response.headers
    assert count(mg_runtime, inbox, CHANNEL) == 0


def big_post(size: int) -> tuple[bytes, str]:
    attachment = ("big.bin", "application/octet-stream", b"\x00" * size)
    return multipart_body({**PARSED, "attachment-1": attachment, **triple()})


@pytest.mark.parametrize("chunked", [False, True])
def test_a_signed_post_over_5_mb_is_taken(mg_runtime: Runtime, chunked: bool) -> None:
    """Mailgun's own limit (40 MB here) applies, not a server-wide 5 MB: with a length or sent chunked."""
    client = create_app(mg_runtime).test_client()
    body, content_type = big_post(5_500_000)
    headers = {"Content-Type": content_type}
    if chunked:
        response = client.post(f"/hooks/{CHANNEL}", input_stream=io.BytesIO(body),
                               headers={**headers, "Transfer-Encoding": "chunked"},
                               environ_overrides={"wsgi.input_terminated": True})
    else:
        response = client.post(f"/hooks/{CHANNEL}", data=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    with mg_runtime.engine.connect() as conn:
        assert conn.execute(select(inbox.c.body)).scalar_one() == body
