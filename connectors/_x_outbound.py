"""Agent replies on X: a direct message from our account through the v2 endpoint, found again by its text.

``POST {api_base_url}dm_conversations/with/{participant_id}/messages`` with ``{"text": ...}``, signed with OAuth 1.0a
as our account (consumer key and secret, access token and secret: the keys the connector also fetches DM media
with) https://docs.x.com/x-api/direct-messages/manage/introduction. Attachments go as links in the text: X takes
media only as ids from its chunked media upload, a multi-step upload not worth a reply's risk.

A DM carries nothing of ours but its text, so ``reconcile`` reads the conversation's DM events (newest first) back
to a minute before the interrupted attempt and looks for a message from our account with the same text (links
compared loosely: X rewrites them to t.co).
"""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import requests
from requests_oauthlib import OAuth1

from connectors._reply_text import text_with_links
from gateway.errors import OutcomeUnknown, PermanentError, RetryableError, retry_after_seconds
from gateway.model import IdentifierKind
from gateway.plugins import ReplySender, SendRequest, SendResult

if TYPE_CHECKING:
    from connectors.x import XConfig
    from gateway.plugins import ConnectorContext

TIMEOUT_SECONDS = 20.0
MAX_TEXT = 10_000  # characters in one DM
# 200 DM posts per 15 minutes per user, and 15,000 per 24 hours per app: about 10 a minute is safe for both
PER_MINUTE = 10.0
LOOKUP_PAGE_SIZE = 100
LOOKUP_PAGES = 3
LOOKUP_BEFORE = timedelta(minutes=1)  # clocks differ
_DIGITS = re.compile(r"^\d+$")
_URL = re.compile(r"https?://\S+")
_CREDENTIALS = ("consumer_key", "access_token", "access_token_secret")


def _comparable(text: Any) -> str:
    """Text as X gives it back and as we sent it, made comparable: entities unescaped, links and spacing ignored."""
    return " ".join(_URL.sub("<link>", html.unescape(str(text or ""))).split())


def _created(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _problem(response: requests.Response) -> tuple[str, str]:
    """X's problem ``type`` and a short explanation (its ``detail``/``title``, or v1.1-style ``errors``)."""
    try:
        body = response.json()
    except ValueError:
        return "", response.reason or f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return "", f"HTTP {response.status_code}"
    errors = body.get("errors") if isinstance(body.get("errors"), list) else []
    parts = [str(body.get("detail") or body.get("title") or "")]
    parts += [f"{e.get('message') or e.get('detail') or ''} (code {e['code']})" if e.get("code") else
              str(e.get("message") or e.get("detail") or "") for e in errors[:3] if isinstance(e, dict)]
    return str(body.get("type") or ""), "; ".join(p for p in parts if p)[:300] or f"HTTP {response.status_code}"


def _refuses_dms(kind: str, detail: str) -> bool:
    """Whether a 403 is the customer refusing our DMs rather than the app lacking access.

    v1.1 said code 349 ("You cannot send messages to this user") or 150; v2 answers 403 with a problem whose
    wording X's reference does not pin down, so its words are read.
    """
    lowered = detail.lower()
    if kind.endswith(("/client-forbidden", "/unsupported-authentication")) or "code 93" in lowered:
        return False  # the app's own access level or permissions
    if "application" in lowered or "app " in lowered:
        return False
    return any(word in lowered for word in ("code 349", "code 150", "direct message", "send messages", " dm"))


class XReplies(ReplySender):
    """The sending half of the ``x`` channel (mixed into ``XChannel``)."""

    name: str
    config: XConfig
    context: ConnectorContext
    clock: Callable[[], float] = time.time  # seconds since the epoch: X's x-rate-limit-reset is one

    def _auth(self) -> OAuth1:
        missing = [name for name in _CREDENTIALS if getattr(self.config, name) is None]
        if missing:
            raise PermanentError(
                f"the X channel {self.name!r} cannot send direct messages: an admin must set {', '.join(missing)} "
                "(our account's OAuth 1.0a keys, with Direct Message permission) in its settings",
                code="not_configured")
        assert self.config.consumer_key and self.config.access_token and self.config.access_token_secret
        return OAuth1(self.config.consumer_key, self.config.consumer_secret.get_secret_value(),
                      self.config.access_token.get_secret_value(), self.config.access_token_secret.get_secret_value())

    def _conversation_url(self, request: SendRequest) -> str:
        """The one-to-one conversation with the customer who wrote, from the account they wrote to (ours)."""
        wrote_to = request.reply_to.extras.get("for_user_id")
        if wrote_to and str(wrote_to) != self.config.user_id:
            raise PermanentError(f"the customer wrote to X account {wrote_to}, but this channel sends as "
                                 f"{self.config.user_id}", code="other_account")
        participant = next((i.value for i in request.reply_to.sender.identifiers if i.kind is IdentifierKind.X), "")
        if not _DIGITS.match(participant):
            raise PermanentError("the customer's X message carries no X user id to answer", code="no_recipient")
        base = self.config.api_base_url if self.config.api_base_url.endswith("/") else self.config.api_base_url + "/"
        return f"{base}dm_conversations/with/{participant}"

    def send_limit(self, request: SendRequest) -> tuple[str, float]:
        """One bucket per sending account, about ten a minute."""
        return f"send:{self.name}:{self.config.user_id}", PER_MINUTE

    def send(self, request: SendRequest) -> SendResult:
        """Send the reply as a direct message from our account to the customer."""
        auth, url = self._auth(), self._conversation_url(request)
        text = text_with_links(request.message, "X")
        if len(text) > MAX_TEXT:
            raise PermanentError(f"the reply has {len(text):,} characters, more than the {MAX_TEXT:,} an X direct "
                                 "message takes: shorten it or split it into several replies", code="too_long")
        answer = self._call("POST", f"{url}/messages", auth, request, json={"text": text})
        data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
        event_id = data.get("dm_event_id")
        if not event_id:
            raise RetryableError("X accepted the direct message without saying its event id", code="no_id")
        return SendResult(str(event_id), detail=f"conversation {data.get('dm_conversation_id', '')}".strip())

    def reconcile(self, request: SendRequest) -> SendResult | None:
        """Our account's message with the reply's text, sent since a minute before the attempt: its event id."""
        started = request.attempt_started_at
        if started is None:
            return None  # no attempt was made
        try:
            auth, url = self._auth(), self._conversation_url(request)
            want = _comparable(text_with_links(request.message, "X"))
        except PermanentError as exc:
            raise OutcomeUnknown(f"X cannot be asked whether it went out: {exc}.", code=exc.code) from None
        cutoff = started - LOOKUP_BEFORE
        params: dict[str, Any] = {"dm_event.fields": "id,text,created_at,sender_id", "event_types": "MessageCreate",
                                  "max_results": LOOKUP_PAGE_SIZE}
        for _ in range(LOOKUP_PAGES):
            try:
                answer = self._call("GET", f"{url}/dm_events", auth, request, params=params)
            except OutcomeUnknown:
                raise
            except PermanentError as exc:
                raise OutcomeUnknown(f"X cannot be asked whether it went out: {exc}.", code=exc.code) from None
            events = answer.get("data") if isinstance(answer.get("data"), list) else []
            reached_cutoff = False
            for event in events:
                created = _created(event.get("created_at")) if isinstance(event, dict) else None
                if created is None:
                    continue
                if created < cutoff:
                    reached_cutoff = True  # newest first: the rest is older than the attempt
                elif (str(event.get("sender_id")) == self.config.user_id and event.get("id")
                      and _comparable(event.get("text")) == want):
                    return SendResult(str(event["id"]), detail="found in the conversation by its text")
            next_token = (answer.get("meta") or {}).get("next_token")
            if reached_cutoff or not next_token:
                return None
            params["pagination_token"] = next_token
        raise OutcomeUnknown(f"the X conversation had more than {LOOKUP_PAGE_SIZE * LOOKUP_PAGES} direct messages "
                             "since then, too many to look through.", code="lookup_exhausted")

    def _call(self, method: str, url: str, auth: OAuth1, request: SendRequest, **kwargs: Any) -> dict[str, Any]:
        """One signed call; X's answer, or the failure classified (agent-readable for refusals)."""
        try:
            response = self.context.http.request(method, url, auth=auth, timeout=TIMEOUT_SECONDS, **kwargs)
        except requests.RequestException as exc:
            raise RetryableError(f"X did not answer: {type(exc).__name__}", code="network") from None
        status = response.status_code
        if status == 429:
            wait = self._reset_in(response) or retry_after_seconds(response.headers)
            if wait and method == "POST":
                self.context.limiter(*self.send_limit(request)).block(wait)  # every process waits for the reset
            raise RetryableError("X rate limit reached", code="rate_limited", retry_after=wait)
        if status >= 500:
            raise RetryableError(f"X answered HTTP {status}", code=f"http_{status}",
                                 retry_after=retry_after_seconds(response.headers))
        if status >= 400:
            kind, detail = _problem(response)
            raise self._refusal(status, kind, detail)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise RetryableError(f"X answered HTTP {status} without a JSON object", code=f"http_{status}")
        return answer

    def _reset_in(self, response: requests.Response) -> float | None:
        """Seconds until ``x-rate-limit-reset`` (a Unix time), from this connector's clock."""
        try:
            reset = float(response.headers.get("x-rate-limit-reset", ""))
        except ValueError:
            return None
        return max(reset - self.clock(), 0.0) if math.isfinite(reset) else None

    def _refusal(self, status: int, kind: str, detail: str) -> PermanentError:
        if status == 401:
            return PermanentError("X does not accept the channel's keys (HTTP 401): an admin must check consumer_key, "
                                  "consumer_secret, access_token and access_token_secret", code="unauthorized")
        if status == 403 and _refuses_dms(kind, detail):
            return PermanentError("the customer does not accept direct messages from this X account (they limit "
                                  f"who may message them, or blocked it); reach them another way. X says: {detail}",
                                  code="dm_refused")
        if status == 403:
            return PermanentError(f"X does not let this app use direct messages: {detail}. An admin must check the "
                                  "app's access level and its 'Read, write and Direct Messages' permission",
                                  code="forbidden")
        return PermanentError(f"X refused the direct message (HTTP {status}): {detail}", code=f"http_{status}")
