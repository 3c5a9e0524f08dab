"""Helpers for tests that run the gateway as real processes: free ports, process handling, polling, signed requests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

import requests
from twilio.request_validator import RequestValidator

from gateway.records import InboxItem

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
        except Exception as exc:  # a server still starting, a file not yet written
            last_error = exc
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


class GatewayProcess:
    """``python -m gateway ARGS`` as a child process in its own session, with its output kept in a log file."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "gateway", *args]
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(self.args[2:])} did not exit within {timeout:.0f}s:\n"
                                 f"{self.output()[-3000:]}") from None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then wait; SIGKILL this process's own group if it does not go. Returns the exit code."""
        try:
            if self.alive():
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
            return self.proc.returncode
        finally:
            self._log.close()


def wait_ready(base_url: str, proc: GatewayProcess, timeout: float = 30.0) -> None:
    """Wait until ``/readyz`` answers 200; fail early (with the process output) if the process dies."""

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"gateway exited with {proc.proc.returncode}:\n{proc.output()[-3000:]}")
        try:
            return requests.get(f"{base_url}/readyz", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # starting, or a commit slow on a busy machine
            return False

    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway not ready after {timeout:.0f}s:\n{proc.output()[-3000:]}")
        time.sleep(0.1)


def twilio_params(sid: str, sender: str, text: str, account_sid: str, to: str = "+15005550006") -> dict[str, str]:
    """The form fields of an inbound SMS webhook, as Twilio documents them."""
    return {
        "ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "", "FromZip": "",
        "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "", "Body": text, "FromCountry": "US",
        "To": to, "ToZip": "", "NumSegments": "1", "MessageSid": sid, "AccountSid": account_sid, "From": sender,
        "ApiVersion": "2010-04-01",
    }


def send_twilio(base_url: str, public_url: str, channel: str, token: str, params: dict[str, str]) -> requests.Response:
    """POST a webhook signed as Twilio signs it: over the public URL the provider was given."""
    signature = RequestValidator(token).compute_signature(f"{public_url}/hooks/{channel}", params)
    return requests.post(f"{base_url}/hooks/{channel}", data=params, timeout=10,
                         headers={"X-Twilio-Signature": signature})


def twilio_inbox_item(params: dict[str, str]) -> InboxItem:
    """The inbox item the Twilio connector stores for these form fields (for queueing without the web server)."""
    return InboxItem(params["MessageSid"], urlencode(params).encode(), "application/x-www-form-urlencoded", "message")


def message_sid(n: int) -> str:
    """A well-formed, distinct Twilio message SID."""
    return f"SM{n:032x}"


TWILIO_SID = "AC" + "F" * 31 + "1"
TWILIO_TOKEN = "test-twilio-token"


def write_gateway_config(directory: Path, *, storage_url: str, port: int, crms: str, routes: str,
                         workers: str = "", server: str = "", threads: int = 4, name: str = "config.yaml") -> Path:
    """A config for a gateway running as processes: listening on ``port``, with ``public_url`` to match.

    ``crms`` and ``routes`` are YAML flow-style bodies of those sections; ``workers`` and ``server`` extra keys of
    those sections (``", lease_seconds: 5"``); ``threads`` the web server's threads.
    """
    text = f"""\
storage: {{url: "{storage_url}"}}
server: {{listen: "127.0.0.1:{port}", public_url: "http://127.0.0.1:{port}", processes: 1, threads: {threads}{server}}}
workers: {{idle_poll_seconds: 0.05, retry: {{initial_seconds: 0.05, max_seconds: 0.5, jitter_seconds: 0}}{workers}}}
logging: {{level: WARNING}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}"}}
crms: {crms}
routes: {routes}
"""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def zendesk_crm(base_url: str) -> str:
    """The ``crms`` section for a zendesk CRM named ``desk`` at ``base_url`` (a fake Zendesk)."""
    return (f'{{desk: {{type: zendesk, subdomain: acme, base_url: "{base_url}", email: agent@example.com, '
            f'api_token: test-zendesk-token, timeout_seconds: 10}}}}')
