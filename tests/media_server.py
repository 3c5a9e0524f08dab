"""A media host on loopback for download tests: files, redirects, and hosts that are slow on purpose.

Paths:

- ``/file/NAME``: ``MediaServer.files[NAME]`` as ``image/jpeg``;
- ``/redirect?to=URL``: a 302 to URL;
- ``/dribble?bytes=N&every=S``: declares N bytes, then sends one every S seconds (until the client goes or the
  server stops);
- ``/silent``: accepts the request and never answers;
- ``/status/CODE``: an empty answer with that HTTP status (404, 500, ...);
- ``/graph/ID``: ``{"url": MediaServer.graph[ID]}``, as Meta's Graph API resolves a WhatsApp media id.

With ``tls=True`` it serves HTTPS with a certificate for ``names`` signed by a throwaway CA (``ca_file``), so a
client that verifies certificates reaches it under those names through a resolver that maps them to 127.0.0.1.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.dovecot import write_ca

JPEG = b"\xff\xd8\xff\xe0" + b"jpeg" * 10


class MediaServer:
    """One media host; ``requests`` lists the paths asked for, ``dribbling`` is set once a dribble has begun."""

    def __init__(self, folder: Path, *, tls: bool = False, names: Iterable[str] = ("media.test",),
                 host: str = "127.0.0.1") -> None:
        self.files: dict[str, bytes] = {"photo.jpg": JPEG}
        self.graph: dict[str, str] = {}
        self.requests: list[str] = []
        self.stop_event = threading.Event()
        self.dribbling = threading.Event()
        self.ca_file: Path | None = None
        self._server = ThreadingHTTPServer((host, 0), _handler_for(self))
        self._server.daemon_threads = True
        if tls:
            self.ca_file, cert_file, key_file = _certificate(folder, list(names))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_file, key_file)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="media-server", daemon=True)

    def url(self, path: str, host: str = "media.test") -> str:
        scheme = "https" if self.ca_file is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def start(self) -> MediaServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._server.shutdown()
        self._server.server_close()


def _handler_for(server: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            server.requests.append(self.path)
            parts = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(parts.query).items()}
            if parts.path.startswith("/file/") and parts.path[6:] in server.files:
                body = server.files[parts.path[6:]]
                self._head(200, len(body), {"Content-Type": "image/jpeg"})
                self.wfile.write(body)
            elif parts.path == "/redirect":
                self._head(302, 0, {"Location": query["to"]})
            elif parts.path == "/dribble":
                self._dribble(int(query.get("bytes", "100")), float(query.get("every", "0.1")))
            elif parts.path == "/silent":
                server.stop_event.wait()
            elif parts.path.startswith("/status/") and parts.path[8:].isdigit():
                self._head(int(parts.path[8:]), 0, {})
            elif parts.path.startswith("/graph/") and parts.path[7:] in server.graph:
                body = json.dumps({"url": server.graph[parts.path[7:]]}).encode()
                self._head(200, len(body), {"Content-Type": "application/json"})
                self.wfile.write(body)
            else:
                self._head(404, 0, {})

        def _head(self, status: int, length: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def _dribble(self, length: int, every: float) -> None:
            self._head(200, length, {"Content-Type": "image/jpeg"})
            self.wfile.flush()
            server.dribbling.set()
            try:
                for _ in range(length):
                    if server.stop_event.wait(every):
                        self.close_connection = True  # the client learns the body ended short
                        return
                    self.wfile.write(b"x")
                    self.wfile.flush()
            except OSError:  # the client gave up
                self.close_connection = True

    return Handler


def _certificate(folder: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for ``names``: (CA file, cert file, key file)."""
    ca_file, ca_key, ca_cert = write_ca(folder, "media-test-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = folder / "media.pem", folder / "media.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file
