"""Media downloads through ``AttachmentStore.fetch_into``: one set of rules, a per-connector request hook."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

from gateway.attachments import SCHEME, AttachmentStore, AttachmentTooLarge, MediaRefused, MediaRequest
from gateway.model import Attachment, ChannelType, Identifier, IdentifierKind, Message, Party, RawRef

API = "https://api.provider.example/media/ME1"
CDN = "https://cdn.provider-media.example/m/abc"
TOKEN = "Bearer test-media-token"
BASIC = "Basic " + base64.b64encode(b"AC1:test-secret").decode()
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg" * 10


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        yield mocked


@pytest.fixture
def store(tmp_path: Path) -> AttachmentStore:
    return AttachmentStore(tmp_path / "attachments")


def message(*locations: str, content_type: str = "image/jpeg") -> Message:
    now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    return Message(
        channel=ChannelType.MMS, connector="sms-main", connector_type="twilio", provider_message_id="MM1",
        sender=Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value="+14155550100"),)),
        attachments=tuple(Attachment(filename=f"media{n}", content_type=content_type, location=location)
                          for n, location in enumerate(locations)),
        sent_at=now, received_at=now, raw=RawRef(inbox_id=1, connector="sms-main"))


def fetch(store: AttachmentStore, msg: Message, **options: object) -> Message:
    defaults: dict[str, object] = {"allowed_hosts": ("api.provider.example",), "max_bytes": 1000}
    return store.fetch_into(requests.Session(), msg, **{**defaults, **options})  # type: ignore[arg-type]


def test_the_hook_supplies_credentials_and_they_stay_on_their_host(store: AttachmentStore,
                                                                    mock: responses.RequestsMock) -> None:
    mock.get(API, status=307, headers={"Location": "/media/ME1/content"},
             match=[matchers.header_matcher({"Authorization": TOKEN})])
    mock.get(f"{API}/content", status=302, headers={"Location": CDN},
             match=[matchers.header_matcher({"Authorization": TOKEN})])
    mock.get(CDN, body=JPEG, content_type="image/jpeg")
    fetched = fetch(store, message(API), redirect_hosts=("provider-media.example",),
                    prepare=lambda a: MediaRequest(a.location, headers={"Authorization": TOKEN}))
    [attachment] = fetched.attachments
    assert attachment.location.startswith(SCHEME) and store.read(attachment.location) == JPEG
    assert [call.request.url for call in mock.calls] == [API, f"{API}/content", CDN]
    assert "Authorization" not in mock.calls[2].request.headers


def test_basic_auth_is_dropped_when_a_redirect_leaves_the_host(store: AttachmentStore,
                                                               mock: responses.RequestsMock) -> None:
    mock.get(API, status=307, headers={"Location": CDN}, match=[matchers.header_matcher({"Authorization": BASIC})])
    mock.get(CDN, body=JPEG, content_type="image/jpeg")
    fetch(store, message(API), redirect_hosts=("provider-media.example",),
          prepare=lambda a: MediaRequest(a.location, auth=("AC1", "test-secret")))
    assert "Authorization" not in mock.calls[1].request.headers


@pytest.mark.parametrize("target", [
    "https://169.254.169.254/latest/meta-data/",  # not an allowed or redirect host
    "http://cdn.provider-media.example/m/abc",  # a redirect host, but not over https
])
def test_a_redirect_off_the_allowed_hosts_is_refused_and_not_followed(
        store: AttachmentStore, mock: responses.RequestsMock, target: str) -> None:
    mock.get(API, status=302, headers={"Location": target})
    with pytest.raises(MediaRefused, match=r"refusing to follow a redirect from api\.provider\.example to"):
        fetch(store, message(API), redirect_hosts=("provider-media.example",))
    assert [call.request.url for call in mock.calls] == [API]


def test_redirect_hosts_are_only_reached_by_a_redirect(store: AttachmentStore, mock: responses.RequestsMock) -> None:
    """A provider's CDN may answer a redirect, but a URL there is not fetched first (with the credentials)."""
    with pytest.raises(MediaRefused, match=r"cdn\.provider-media\.example"):
        fetch(store, message(CDN), redirect_hosts=("provider-media.example",),
              prepare=lambda a: MediaRequest(a.location, headers={"Authorization": TOKEN}))
    assert not mock.calls


def test_a_url_the_hook_resolves_is_checked_like_any_other(store: AttachmentStore,
                                                           mock: responses.RequestsMock) -> None:
    with pytest.raises(MediaRefused, match=r"evil\.example"):
        fetch(store, message(API), prepare=lambda a: MediaRequest("https://evil.example/x.jpg"))
    assert not mock.calls


def test_redirect_loops_end(store: AttachmentStore, mock: responses.RequestsMock) -> None:
    mock.get(API, status=302, headers={"Location": API})
    with pytest.raises(MediaRefused, match="more than 5 redirects"):
        fetch(store, message(API))
    assert len(mock.calls) == 6


@pytest.mark.parametrize(("declared", "reason"), [
    (True, f"media is {len(JPEG)} bytes, over the 16-byte limit"),  # refused before the body is read
    (False, "media is over the 16-byte limit"),  # no Content-Length: counted while reading
])
def test_the_size_cap_applies_behind_the_hook_and_redirects(store: AttachmentStore, mock: responses.RequestsMock,
                                                            declared: bool, reason: str) -> None:
    mock.get(API, status=307, headers={"Location": CDN})
    mock.get(CDN, body=JPEG, content_type="image/jpeg", auto_calculate_content_length=declared)
    with pytest.raises(AttachmentTooLarge, match=f"^{reason}$"):
        fetch(store, message(API), max_bytes=16, redirect_hosts=("provider-media.example",),
              prepare=lambda a: MediaRequest(a.location, headers={"Authorization": TOKEN}))


def test_the_hook_can_refuse_an_answer_that_is_not_the_file(store: AttachmentStore,
                                                            mock: responses.RequestsMock) -> None:
    def no_html(content_type: str) -> None:
        if content_type == "text/html":
            raise MediaRefused("a sign-in page")

    mock.get(API, body=b"<html>sign in</html>", content_type="text/html; charset=utf-8")
    with pytest.raises(MediaRefused, match="a sign-in page"):
        fetch(store, message(API), prepare=lambda a: MediaRequest(a.location, check=no_html))


def test_a_generic_type_gives_way_to_the_answered_one(store: AttachmentStore, mock: responses.RequestsMock) -> None:
    mock.get(API, body=JPEG, content_type="image/jpeg")
    [generic] = fetch(store, message(API, content_type="application/octet-stream")).attachments
    [given] = fetch(store, message(API, content_type="image/pjpeg")).attachments
    assert (generic.content_type, given.content_type) == ("image/jpeg", "image/pjpeg")


def test_stored_attachments_are_not_fetched_again(store: AttachmentStore, mock: responses.RequestsMock) -> None:
    stored = store.put(JPEG, "a.jpg", "image/jpeg")
    mock.get(API, body=b"other", content_type="image/png")
    msg = message(API)
    msg = msg.model_copy(update={"attachments": (stored, *msg.attachments)})
    fetched = fetch(store, msg)
    assert fetched.attachments[0] == stored and len(mock.calls) == 1
    assert fetch(store, fetched) is fetched
