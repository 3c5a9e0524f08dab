"""Agent replies on Slack: ``chat.postMessage`` as the app's bot, found again by the message metadata it carries.

Where a reply goes:

- a direct message to the app (channel type ``im``): into the DM itself, or into the customer's thread there if
  they wrote in one;
- any other conversation (a Slack Connect shared channel, a listed channel): in a thread under the customer's
  message, or in the thread they wrote in, so an answer never lands loose in a channel other people read.

The bot token is the one of the workspace the customer's event was delivered for (``workspace_tokens[team_id]``,
else ``bot_token``): a Slack Connect customer from another organisation is answered by our own installation.
Calls go through ``context.http`` with the token as a bearer header; slack_sdk's ``WebClient`` uses urllib, which
would bypass the gateway's session (its deadline, its proxies) and the tests' mocks.

Each reply carries ``metadata: {event_type: gateway_reply, event_payload: {token}}``
(https://docs.slack.dev/messaging/message-metadata); ``reconcile`` reads the conversation's history around the
interrupted attempt with ``include_all_metadata`` and looks for that token.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import requests

from connectors._reply_text import text_with_links
from gateway.errors import OutcomeUnknown, PermanentError, RetryableError, retry_after_seconds
from gateway.model import Message
from gateway.plugins import ReplySender, SendRequest, SendResult

if TYPE_CHECKING:
    from connectors.slack import SlackConfig
    from gateway.plugins import ConnectorContext

EVENT_TYPE = "gateway_reply"
TIMEOUT_SECONDS = 20.0
PER_CHANNEL_PER_MINUTE = 60.0  # chat.postMessage: about one message per second per channel, short bursts allowed
# conversations.history / .replies: apps outside the Slack Marketplace created since 2025-05-29 get at most 15
# messages per call (https://docs.slack.dev/changelog/2025/05/29/rate-limit-changes-for-non-marketplace-apps)
LOOKUP_PAGE_SIZE = 15
LOOKUP_PAGES = 4
LOOKUP_BEFORE = timedelta(minutes=1)  # clocks differ
LOOKUP_AFTER = timedelta(minutes=5)  # an attempt's call ends within its deadline: nothing of it is posted later

# errors Slack answers (HTTP 200, ok: false) that a later try may not meet again
_TRANSIENT = {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
              "request_timeout"}
_CREDENTIALS = ("an admin must check the channel's bot_token (or its workspace_tokens entry for this workspace)")
_REASONS = {
    "channel_not_found": "Slack cannot find the customer's conversation {channel}: it was deleted, or the app can no "
                         "longer see it",
    "not_in_channel": "the Slack app is not a member of channel {channel}: an admin must add the app to the channel",
    "is_archived": "the Slack channel {channel} has been archived, so the customer cannot be answered there",
    "msg_too_long": "the reply is too long for Slack: shorten it or split it into several replies",
    "no_text": "the reply has no text",
    "invalid_auth": "Slack does not accept the app's bot token for workspace {team}: " + _CREDENTIALS,
    "not_authed": "no bot token reached Slack for workspace {team}: " + _CREDENTIALS,
    "account_inactive": "the Slack app's bot user in workspace {team} was deactivated or the workspace deleted: an "
                        "admin must reinstall the app",
    "token_revoked": "the Slack app was uninstalled from workspace {team}: an admin must reinstall it",
    "token_expired": "the Slack app's token for workspace {team} has expired: " + _CREDENTIALS,
    "missing_scope": "the Slack app lacks a permission in workspace {team} (chat:write to send; channels:history, "
                     "groups:history, im:history, mpim:history to check a reply): an admin must add it and "
                     "reinstall the app",
    "restricted_action": "a setting of workspace {team} keeps the app from posting in {channel}",
}


@dataclass(frozen=True)
class SlackTarget:
    """Where a reply goes: the workspace whose token sends it, the conversation, and the thread (None: no thread)."""

    team_id: str
    channel: str
    thread_ts: str | None


def reply_target(reply_to: Message) -> SlackTarget:
    """The workspace, conversation and thread a reply to ``reply_to`` is posted in (the rule is the module's doc)."""
    extras = reply_to.extras
    ref_channel, _, ref_ts = (reply_to.thread.provider_thread_id or "").partition(":")
    team, channel = extras.get("team_id"), extras.get("channel") or ref_channel
    if not isinstance(team, str) or not team or not isinstance(channel, str) or not channel:
        raise PermanentError("the customer's Slack message does not say which workspace and conversation it came "
                             "from, so the reply has nowhere to go", code="no_conversation")
    in_thread = extras.get("thread_ts") or None
    kind = extras.get("channel_type")
    direct = kind == "im" or (kind is None and channel.startswith("D"))  # reactions carry no channel_type
    thread = in_thread if direct else in_thread or ref_ts or extras.get("ts")
    return SlackTarget(team, channel, str(thread) if thread else None)


def slack_text(message: Message) -> str:
    """The reply as Slack message text: ``&``, ``<`` and ``>`` escaped, so the agent's words are never markup
    (https://docs.slack.dev/messaging/formatting-message-text#escaping)."""
    return html.escape(text_with_links(message, "Slack"), quote=False)


def _carries(message: Any, token: str) -> bool:
    metadata = message.get("metadata") if isinstance(message, dict) else None
    if not isinstance(metadata, dict) or metadata.get("event_type") != EVENT_TYPE:
        return False
    payload = metadata.get("event_payload")
    return isinstance(payload, dict) and payload.get("token") == token


class SlackReplies(ReplySender):
    """The sending half of the ``slack`` channel (mixed into ``SlackChannel``)."""

    name: str
    config: SlackConfig
    context: ConnectorContext

    def _bot_token(self, team_id: str) -> str:
        return self.config.workspace_tokens.get(team_id, self.config.bot_token).get_secret_value()

    def _bucket(self, target: SlackTarget) -> str:
        return f"send:{self.name}:{target.team_id}:{target.channel}"

    def send_limit(self, request: SendRequest) -> tuple[str, float]:
        """One bucket per Slack conversation, about one message a second."""
        try:
            return self._bucket(reply_target(request.reply_to)), PER_CHANNEL_PER_MINUTE
        except PermanentError:
            return f"send:{self.name}", PER_CHANNEL_PER_MINUTE  # send() refuses it and says why

    def send(self, request: SendRequest) -> SendResult:
        """Post the reply as the bot, in the customer's conversation and thread, with the token as metadata."""
        target = reply_target(request.reply_to)
        body: dict[str, Any] = {
            "channel": target.channel, "text": slack_text(request.message),
            "metadata": {"event_type": EVENT_TYPE, "event_payload": {"token": request.token}}}
        if target.thread_ts:
            body["thread_ts"] = target.thread_ts
        answer = self._call("POST", "chat.postMessage", target, json=body)
        ts, channel = answer.get("ts"), answer.get("channel") or target.channel
        if not isinstance(ts, str) or not ts:
            raise RetryableError("Slack accepted the reply without saying its ts", code="no_ts")
        return SendResult(f"{channel}:{ts}", detail=f"thread {target.thread_ts}" if target.thread_ts else "")

    def post_notice(self, channel: str, text: str) -> str:
        """Post a notice for the support team (an escalation) in a channel of the ``bot_token``'s workspace; its ts.

        Through ``context.http`` like replies (not slack_sdk's ``WebClient``, whose urllib calls bypass the injected
        session), with the same error classification and per-channel budget.
        """
        target = SlackTarget("", channel, None)
        self.context.limiter(self._bucket(target), PER_CHANNEL_PER_MINUTE).acquire()
        answer = self._call("POST", "chat.postMessage", target,
                            json={"channel": channel, "text": html.escape(text, quote=False)})
        return str(answer.get("ts") or "")

    def reconcile(self, request: SendRequest) -> SendResult | None:
        """Look through the conversation (or its thread) around the earlier attempt for the reply's metadata token."""
        started = request.attempt_started_at
        if started is None:
            return None  # no attempt was made
        target = reply_target(request.reply_to)
        params: dict[str, Any] = {
            "channel": target.channel, "oldest": f"{(started - LOOKUP_BEFORE).timestamp():.6f}",
            "latest": f"{(started + LOOKUP_AFTER).timestamp():.6f}", "inclusive": "true",
            "include_all_metadata": "true", "limit": LOOKUP_PAGE_SIZE}
        method = "conversations.history"  # top-level messages only: a thread's replies need conversations.replies
        if target.thread_ts:
            method, params["ts"] = "conversations.replies", target.thread_ts
        for _ in range(LOOKUP_PAGES):
            try:
                answer = self._call("GET", method, target, params=params)
            except OutcomeUnknown:
                raise
            except PermanentError as exc:
                raise OutcomeUnknown(f"Slack cannot be asked whether it went out: {exc}", code=exc.code) from None
            messages = answer.get("messages")
            for message in messages if isinstance(messages, list) else ():
                if _carries(message, request.token) and isinstance(message.get("ts"), str):
                    return SendResult(f"{target.channel}:{message['ts']}", detail="found by its metadata token")
            cursor = (answer.get("response_metadata") or {}).get("next_cursor")
            if not answer.get("has_more") or not cursor:
                return None
            params["cursor"] = cursor
        raise OutcomeUnknown(f"the Slack conversation had more than {LOOKUP_PAGE_SIZE * LOOKUP_PAGES} messages "
                             "around that time, too many to look through.", code="lookup_exhausted")

    def _call(self, method: str, api_method: str, target: SlackTarget, **kwargs: Any) -> dict[str, Any]:
        """One Web API call with the workspace's bot token; Slack's answer, or the failure classified."""
        base = self.config.api_base_url if self.config.api_base_url.endswith("/") else self.config.api_base_url + "/"
        headers = {"Authorization": f"Bearer {self._bot_token(target.team_id)}"}
        try:
            response = self.context.http.request(method, base + api_method, headers=headers, timeout=TIMEOUT_SECONDS,
                                                 **kwargs)
        except requests.RequestException as exc:
            raise RetryableError(f"Slack {api_method} did not answer: {type(exc).__name__}", code="network") from None
        wait = retry_after_seconds(response.headers)
        if response.status_code == 429 or response.status_code >= 500:
            if response.status_code == 429 and wait and api_method == "chat.postMessage":
                # the whole conversation's budget pauses, in every process
                self.context.limiter(self._bucket(target), PER_CHANNEL_PER_MINUTE).block(wait)
            code = "ratelimited" if response.status_code == 429 else f"http_{response.status_code}"
            raise RetryableError(f"Slack {api_method} answered HTTP {response.status_code}", code=code,
                                 retry_after=wait)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            failure = RetryableError if response.status_code < 400 else PermanentError
            raise failure(f"Slack {api_method} answered HTTP {response.status_code} without a JSON object",
                          code=f"http_{response.status_code}")
        if answer.get("ok") is True:
            return answer
        error = str(answer.get("error") or "unknown_error")[:100]
        if error in _TRANSIENT:
            raise RetryableError(f"Slack {api_method} failed for now ({error})", code=error, retry_after=wait)
        reason = _REASONS.get(error, "no reason given").format(channel=target.channel, team=target.team_id)
        if isinstance(answer.get("needed"), str):
            reason += f"; Slack says it needs {answer['needed'][:100]}"
        what = "the reply" if api_method == "chat.postMessage" else "to show the conversation's messages"
        raise PermanentError(f"Slack refused {what}: {reason} (Slack error {error}).", code=error)
