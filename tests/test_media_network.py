"""Media downloads on real sockets: every hop's resolved address is checked and connected to as checked, and one
deadline covers the whole download.

A fake resolver maps test names (``media.test``...) to the addresses a hostile or broken DNS might answer; the media
host itself listens on 127.0.0.1, so it can only be reached when the policy allows loopback explicitly.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.attachments import AttachmentStore, MediaRefused, MediaTimeout, download
from gateway.model import Attachment, ChannelType, Identifier, IdentifierKind, Message, Party, RawRef
from gateway.safehttp import MediaPolicy
from gateway.yamlsource import ConfigError
from tests.conftest import BASE_CONFIG
from tests.media_server import JPEG, MediaServer

LOOPBACK = MediaPolicy(allow_networks=("127.0.0.1/32",))
NAMES = {"media.test": "127.0.0.1", "cdn.media.test": "127.0.0.1"}


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Names the tests make up, answered with the address in this mapping (edit it to change the answer)."""
    names = dict(NAMES)
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in names:
            return real(names[host], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


@pytest.fixture
def tls_host(tmp_path: Path) -> Iterator[MediaServer]:
    server = MediaServer(tmp_path, tls=True, names=("media.test", "cdn.media.test")).start()
    yield server
    server.stop()


@pytest.fixture
def http_host(tmp_path: Path) -> Iterator[MediaServer]:
    server = MediaServer(tmp_path).start()
    yield server
    server.stop()


def session_trusting(server: MediaServer) -> requests.Session:
    session = requests.Session()
    session.verify = str(server.ca_file)
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, when set, wins over session.verify
    return session


def message(url: str) -> Message:
    at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    return Message(
        channel=ChannelType.MMS, connector="sms-main", connector_type="twilio", provider_message_id="MM1",
        sender=Party(identifiers=(Identifier(kind=IdentifierKind.PHONE, value="+14155550100"),)),
        attachments=(Attachment(filename="photo.jpg", content_type="image/jpeg", location=url),),
        sent_at=at, received_at=at, raw=RawRef(inbox_id=1, connector="sms-main"))


def test_an_allowed_host_that_resolves_to_loopback_is_refused(resolver: dict[str, str], tls_host: MediaServer,
                                                              tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path / "att")  # the default policy: public addresses only
    with pytest.raises(MediaRefused, match=r"media\.test.*127\.0\.0\.1.*loopback"):
        store.fetch_into(session_trusting(tls_host), message(tls_host.url("/file/photo.jpg")),
                         allowed_hosts=("media.test",), max_bytes=1000)
    assert tls_host.requests == []


def test_an_allowed_network_is_reached_over_tls_on_the_address_that_was_checked(
        resolver: dict[str, str], tls_host: MediaServer, tmp_path: Path) -> None:
    """The connection goes to the checked address while TLS still verifies the certificate for the host name."""
    store = AttachmentStore(tmp_path / "att", policy=LOOPBACK)
    fetched = store.fetch_into(session_trusting(tls_host), message(tls_host.url("/file/photo.jpg")),
                               allowed_hosts=("media.test",), max_bytes=1000)
    assert store.read(fetched.attachments[0].location) == JPEG
    assert tls_host.requests == ["/file/photo.jpg"]


@pytest.mark.parametrize(("address", "kind"), [
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("10.0.0.5", "private"),
    ("127.0.0.2", "loopback"),  # loopback, but outside the one address allowed
    ("::1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),  # an IPv4 address dressed as IPv6 is judged as the IPv4 one
    ("224.0.0.1", "multicast"),
])
def test_every_redirect_hop_is_resolved_and_checked_before_connecting(
        resolver: dict[str, str], tls_host: MediaServer, address: str, kind: str) -> None:
    resolver["cdn.media.test"] = address
    target = tls_host.url("/file/photo.jpg", host="cdn.media.test")
    started = time.monotonic()
    shown = address.removeprefix("::ffff:").replace(".", "[.]")
    with pytest.raises(MediaRefused, match=rf"cdn\.media\.test.*{shown}.*{kind}"):
        download(session_trusting(tls_host), tls_host.url(f"/redirect?to={target}"), allowed_hosts=("media.test",),
                 redirect_hosts=("media.test",), max_bytes=1000, policy=LOOPBACK)
    assert time.monotonic() - started < 10  # refused, not a connection attempt left to time out
    assert tls_host.requests == [f"/redirect?to={target}"]


def test_plain_http_only_when_allowed_and_only_to_allowed_networks(resolver: dict[str, str],
                                                                   http_host: MediaServer) -> None:
    url = http_host.url("/file/photo.jpg")
    with pytest.raises(MediaRefused, match="not https"):
        download(requests.Session(), url, allowed_hosts=("media.test",), max_bytes=1000, policy=LOOPBACK)
    test_server = MediaPolicy(allow_networks=("127.0.0.1/32",), allow_http=True)
    data, content_type = download(requests.Session(), url, allowed_hosts=("media.test",), max_bytes=1000,
                                  policy=test_server)
    assert (data, content_type) == (JPEG, "image/jpeg")
    resolver["media.test"] = "93.184.216.34"  # public: https is fine there, plain http is not
    with pytest.raises(MediaRefused, match=r"plain http.*93\.184\.216\.34"):
        download(requests.Session(), url, allowed_hosts=("media.test",), max_bytes=1000, policy=test_server)
    assert http_host.requests == ["/file/photo.jpg"]


@pytest.mark.parametrize("path", [
    "/dribble?bytes=200&every=0.05",  # a byte every 50 ms: no read ever times out, the whole takes 10 s
    "/silent",  # connected, never answers
])
def test_one_deadline_covers_the_whole_download(resolver: dict[str, str], tls_host: MediaServer,
                                                path: str) -> None:
    policy = MediaPolicy(allow_networks=("127.0.0.1/32",), deadline_seconds=1.0, read_timeout_seconds=30.0)
    started = time.monotonic()
    with pytest.raises(MediaTimeout, match=r"media\.test.*1 s"):
        download(session_trusting(tls_host), tls_host.url(path), allowed_hosts=("media.test",), max_bytes=1000,
                 policy=policy)
    assert time.monotonic() - started < 8  # well before the dribble ends or a read times out


def test_the_deadline_counts_from_the_first_hop(resolver: dict[str, str], tls_host: MediaServer) -> None:
    """Redirects do not restart the clock: the dribble behind one is cut at the same deadline."""
    policy = MediaPolicy(allow_networks=("127.0.0.1/32",), deadline_seconds=1.0)
    target = tls_host.url("/dribble?bytes=200&every=0.05", host="cdn.media.test")
    with pytest.raises(MediaTimeout):
        download(session_trusting(tls_host), tls_host.url(f"/redirect?to={target}"), allowed_hosts=("media.test",),
                 redirect_hosts=("media.test",), max_bytes=1000, policy=policy)
    assert tls_host.dribbling.is_set()


def test_the_media_settings_reach_every_connector_download(write_config: Callable[..., Path], tmp_path: Path) -> None:
    from gateway.config import load_config
    from gateway.runtime import connector_context

    path = write_config(BASE_CONFIG + 'media: {deadline_seconds: 5, allow_networks: ["127.0.0.0/8"], '
                                      'allow_http: true}\n')
    policy = connector_context(load_config(path), requests.Session(), None).attachments.policy
    assert (policy.deadline_seconds, policy.allow_http) == (5, True)
    policy.check("media.test", "127.0.0.2", "http")  # allowed: no exception
    with pytest.raises(MediaRefused):
        policy.check("media.test", "10.0.0.1", "https")
    with pytest.raises(ConfigError, match=r"media\.allow_networks\[0\]: 'intranet' is not a network"):
        load_config(write_config(BASE_CONFIG + "media: {allow_networks: [intranet]}\n"))
