"""Fixtures shared by this folder's tests: the loopback SMTP server (and its TLS variants) and the hung or closed
ports of a server that does not answer."""

from tests.smtp_server import closed_port, silent_port, smtp_server, smtp_ssl, smtp_starttls  # noqa: F401
