"""Media downloads at the socket: only addresses the policy allows, connected to as checked, within one deadline.

A provider's media URL, and every redirect after it, names a host; a hostile or broken DNS can answer that name
with a loopback, private or cloud-metadata address. So the host is resolved here, every address it resolves to is
checked, and the connection is made to a checked address (the certificate is still verified for the host name).
Checking first and letting the HTTP library resolve again would leave a window for DNS rebinding.

One deadline covers the whole download (connections, TLS handshakes, every read, every redirect): a host that sends
one byte just before each read would time out never passes it. When the deadline passes, a watchdog shuts the
download's sockets down, which ends any read that is waiting.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class MediaRefused(ValueError):
    """A media download the rules do not allow: another host, plain http, an address that is not public."""


class MediaTimeout(MediaRefused):
    """A media download that took longer than its deadline."""


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may be downloaded from and how long a download may take.

    ``allow_networks`` are networks reached although they are not public (loopback, private, link-local...): a test
    server, an internal media proxy. ``allow_http`` permits plain http, and only to addresses in ``allow_networks``.
    """

    deadline_seconds: float = 60.0
    read_timeout_seconds: float = 20.0
    allow_networks: Sequence[str | Network] = ()
    allow_http: bool = False
    networks: tuple[Network, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "networks", tuple(
            ipaddress.ip_network(net, strict=False) for net in self.allow_networks))

    def allows_scheme(self, scheme: str) -> bool:
        return scheme == "https" or (scheme == "http" and self.allow_http)

    def check(self, host: str, address: str, scheme: str) -> None:
        """Raise ``MediaRefused`` unless ``host``'s resolved ``address`` may be connected to over ``scheme``."""
        ip = _address(address)
        if any(ip in net for net in self.networks if net.version == ip.version):
            return
        if scheme == "http":
            raise MediaRefused(f"refusing plain http to {host} ({ip}): only to an address in media.allow_networks")
        kind = _not_public(ip)
        if kind is not None:
            raise MediaRefused(f"refusing to fetch media from {host}: it resolves to {ip}, a {kind} address")


def _address(text: str) -> Address:
    ip = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0) is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _not_public(ip: Address) -> str | None:
    """What kind of address ``ip`` is when it is not a public unicast one; None when it is."""
    for kind, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                       ("multicast", ip.is_multicast), ("unspecified", ip.is_unspecified),
                       ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return kind
    return None if ip.is_global else "non-public"


class Download:
    """One download's connections: each address checked before connecting, all of them cut at the deadline."""

    def __init__(self, policy: MediaPolicy) -> None:
        self.policy = policy
        self.deadline = time.monotonic() + policy.deadline_seconds
        self.expired = False
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._timer = threading.Timer(policy.deadline_seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timed_out(self, host: str) -> MediaTimeout:
        return MediaTimeout(f"media download from {host} took longer than its {self.policy.deadline_seconds:g} s "
                            f"deadline")

    def connect(self, host: str, port: int, scheme: str, timeout: float | None,
                options: Sequence[tuple[int, int, Any]] | None) -> socket.socket:
        """A socket connected to one of ``host``'s addresses, every one of which the policy allows."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for info in infos:
            self.policy.check(host, str(info[4][0]), scheme)
        error: OSError = OSError(f"{host} has no address")
        for family, kind, proto, _, address in infos:
            remaining = self.remaining()
            if remaining <= 0:
                raise self.timed_out(host)
            sock = socket.socket(family, kind, proto)
            try:
                for option in options or ():
                    sock.setsockopt(*option)
                sock.settimeout(min(timeout, remaining) if timeout is not None else remaining)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self._watch(sock, host)
            return sock
        raise error

    def _watch(self, sock: socket.socket, host: str) -> None:
        # a duplicate of the descriptor survives the TLS wrapper taking the socket over; shutting it down ends
        # whatever read is waiting on the connection
        with self._lock:
            if self.expired:
                sock.close()
                raise self.timed_out(host)
            self._watched.append(sock.dup())

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._watched:
                with contextlib.suppress(OSError):  # already closed by the other side
                    sock.shutdown(socket.SHUT_RDWR)

    def start(self) -> None:
        self._timer.start()

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._watched:
                sock.close()
            self._watched.clear()


class _Checked:
    """The connection part: ``_new_conn`` connects through the download's ``connect`` (checked, watched)."""

    download: Download
    scheme = "http"

    def _new_conn(self) -> socket.socket:
        conn: Any = self
        return self.download.connect(conn._dns_host, conn.port, self.scheme, conn.timeout, conn.socket_options)


class MediaAdapter(HTTPAdapter):
    """An adapter whose connections belong to one ``Download``; not reused across downloads."""

    def __init__(self, download: Download) -> None:
        http = type("CheckedHTTPConnection", (_Checked, HTTPConnection), {"download": download, "scheme": "http"})
        https = type("CheckedHTTPSConnection", (_Checked, HTTPSConnection), {"download": download, "scheme": "https"})
        self._pools = {
            "http": type("CheckedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("CheckedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools


class MediaTransport:
    """GETs of one download: the session's headers, auth and certificate settings, sent through a ``MediaAdapter``.

    The session's own adapters and proxies are not used: a proxy would hide the address being checked.
    """

    def __init__(self, session: requests.Session, download: Download) -> None:
        self.session = session
        self.download = download
        self.adapter = MediaAdapter(download)

    def get(self, url: str, headers: Any, auth: Any) -> requests.Response:
        remaining = self.download.remaining()
        if remaining <= 0:
            raise self.download.timed_out(_host(url))
        prepared = self.session.prepare_request(requests.Request("GET", url, headers=headers, auth=auth))
        timeout = (min(10.0, remaining), min(self.download.policy.read_timeout_seconds, remaining))
        with self.deadline(_host(url)):
            return self.adapter.send(prepared, stream=True, timeout=timeout, verify=self.session.verify,
                                     cert=self.session.cert, proxies={})

    @contextmanager
    def deadline(self, host: str) -> Iterator[None]:
        """Whatever fails because the deadline cut the connection fails as ``MediaTimeout``; and what seemed to
        succeed after the deadline too, since a cut connection can look like the end of a body."""
        try:
            yield
        except MediaRefused:
            raise
        except Exception:
            if self.download.expired:
                raise self.download.timed_out(host) from None
            raise
        if self.download.expired or self.download.remaining() <= 0:
            raise self.download.timed_out(host)


@contextmanager
def media_transport(session: requests.Session, policy: MediaPolicy) -> Iterator[MediaTransport]:
    """A transport for one download, its deadline running from here."""
    download = Download(policy)
    transport = MediaTransport(session, download)
    download.start()
    try:
        yield transport
    finally:
        transport.adapter.close()
        download.close()


def _host(url: str) -> str:
    return urlparse(url).hostname or url
