"""X profile names for senders a delivery did not name: ``GET /2/users/:id`` (X API v2 user lookup).

https://docs.x.com/x-api/users/user-lookup-by-id answers ``{"data": {"id", "name", "username"}}``, or 200 with
``{"errors": [{"title": "Not Found Error", ...}]}`` for an unknown or suspended user. Looked up on the pipeline's
enrichment threads, like Slack's ``users.info``, with a short deadline: a name is welcome, never worth delaying or
failing a message, so any failure gives no name. Answers are cached; a 429, or a window whose
``x-rate-limit-remaining`` is 0, pauses lookups until ``x-rate-limit-reset`` (epoch seconds).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

log = logging.getLogger(__name__)
DEFAULT_PAUSE_SECONDS = 900.0  # X's rate-limit window, when a 429 does not say when it ends


class XProfiles:
    """Cached, rate-limit aware lookups of X users' display names."""

    def __init__(self, http: requests.Session, base_url: str, auth: Callable[[], dict[str, Any]] | None, *,
                 cache_seconds: float, timeout_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.http = http
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.auth = auth
        self.cache_seconds = cache_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self.paused_until = 0.0
        self._names: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def name(self, user_id: str) -> str | None:
        """The user's display name; None when unknown, unreachable, rate-limited or not configured."""
        if self.auth is None or not user_id.isdigit():
            return None
        now = self.clock()
        with self._lock:
            cached = self._names.get(user_id)
            if cached is not None and now - cached[0] < self.cache_seconds:
                return cached[1]
            if now < self.paused_until:
                return None
        try:
            response = self.http.get(f"{self.base_url}users/{user_id}", timeout=self.timeout_seconds,
                                     **self.auth())
        except requests.RequestException as exc:
            log.info("X user lookup failed (%s); the sender stays unnamed for now", type(exc).__name__)
            return None
        self._note_limits(response, now)
        if response.status_code != 200:
            log.info("X user lookup answered %s; the sender stays unnamed for now", response.status_code)
            return None
        try:
            data = response.json().get("data")
        except (ValueError, AttributeError):
            return None
        name = data.get("name") if isinstance(data, dict) and isinstance(data.get("name"), str) else None
        with self._lock:
            self._names[user_id] = (now, name or None)
        return name or None

    def _note_limits(self, response: requests.Response, now: float) -> None:
        remaining = response.headers.get("x-rate-limit-remaining")
        if response.status_code != 429 and remaining != "0":
            return
        try:
            until = float(response.headers.get("x-rate-limit-reset", ""))
        except ValueError:
            until = now + DEFAULT_PAUSE_SECONDS
        with self._lock:
            self.paused_until = max(self.paused_until, until)
        log.info("X user lookups paused for %.0f s (rate limit)", max(0.0, until - now))
