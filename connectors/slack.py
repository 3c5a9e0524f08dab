"""Slack Events API: messages from customers in DMs to the app, Slack Connect (shared) channels and listed channels.

Requests are checked with slack_sdk's ``SignatureVerifier`` (``v0:{timestamp}:{body}``, 5-minute replay window)
https://docs.slack.dev/authentication/verifying-requests-from-slack/ . Slack retries an unanswered event up to three
times with the same ``event_id`` (``X-Slack-Retry-Num``): the inbox key is the event_id, so a retry is stored once.
Sender profiles come from ``users.info`` (cached); files are fetched with the bot token into the attachment store.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from connectors._slack_outbound import SlackReplies
from gateway.attachments import MediaRefused, MediaRequest
from gateway.errors import MalformedRequest, OnlineCheckFailed, SignatureInvalid
from gateway.identity.normalize import AS_WRITTEN, InvalidIdentifier, email_identifier, scoped_identifier
from gateway.model import (
    Attachment,
    ChannelType,
    IdentifierKind,
    Message,
    MessageKind,
    Party,
    ThreadRef,
)
from gateway.plugins import ConnectorConfig, WebhookChannel, online_check
from gateway.records import InboxItem, RawRecord
from gateway.signing import current_or_previous
from gateway.webhooks import Headers, HookRequest, HookResponse

log = logging.getLogger(__name__)
API_BASE = "https://slack.com/api/"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
SIGNATURE_HEADER = "X-Slack-Signature"
REPLAY_WINDOW_SECONDS = 300
FILE_HOSTS = ("files.slack.com",)
LOGIN_HOSTS = ("slack.com",)  # a token without files:read may be sent on to the workspace's sign-in page
# message subtypes that are a person writing; everything else (joins, topic changes, bots, ...) is not a message
_PERSON_SUBTYPES = {None, "file_share", "thread_broadcast", "me_message"}


class SlackConfig(ConnectorConfig):
    """Settings of a ``slack`` channel (one Slack app, installed in one or more workspaces)."""

    type: Literal["slack"] = "slack"
    signing_secret: SecretStr = Field(description="The app's signing secret (Basic Information page).")
    previous_signing_secret: SecretStr | None = Field(
        None, description="The former signing secret, accepted too while a rotation is under way.")
    bot_token: SecretStr = Field(
        description="Bot token (xoxb-...) for users.info, file downloads and agent replies (scope chat:write).")
    workspace_tokens: dict[str, SecretStr] = Field(
        default_factory=dict, description="Bot tokens of further workspaces by team_id (T...); others use bot_token.")
    team_ids: list[str] = Field(
        default_factory=list, description="Workspaces whose events are accepted; empty accepts any.")
    bot_user_ids: list[str] = Field(
        default_factory=list, description="Our own bot users (U...): their posts are never customer messages.")
    direct_messages: bool = Field(True, description="Direct messages to the app are customer messages.")
    shared_channels: bool = Field(True, description="Messages in Slack Connect (externally shared) channels count.")
    channel_ids: list[str] = Field(default_factory=list, description="Further channels (C...) whose messages count.")
    api_base_url: str = Field(API_BASE, description="Slack Web API base URL (for proxies and local test servers).")
    profile_cache_seconds: int = Field(3600, ge=0, description="How long a users.info answer is reused.")
    max_file_bytes: int = Field(25 * 1024 * 1024, gt=0, description="Larger files are refused.")


def _ts_time(ts: str) -> datetime:
    return datetime.fromtimestamp(float(ts), UTC)


def _workspace(data: dict[str, Any]) -> str | None:
    """The workspace an event happened in. Enterprise Grid sends organisation-level events (``team_access_granted``,
    org-wide installs) with ``team_id`` null or absent; ``context_team_id`` then names the workspace when there is one
    (https://api.slack.com/events/team_access_granted). ``authorizations[].team_id`` is the
    installation the event is visible to, not where it happened, so it is not used."""
    for key in ("team_id", "context_team_id"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


class SlackChannel(SlackReplies, WebhookChannel):
    """Slack messages from the Events API; agent replies go back through ``SlackReplies``."""

    type_name = "slack"
    Config = SlackConfig
    summary = "Slack Events API (slack_sdk SignatureVerifier); DMs, shared and listed channels, edits, files"
    channel_types = (ChannelType.SLACK,)
    config: SlackConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._profiles: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    # -- ingress -------------------------------------------------------------------------------------------------
    def _check_signature(self, request: HookRequest) -> None:
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not signature or not timestamp:
            raise SignatureInvalid(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
        if not timestamp.isdigit():
            raise SignatureInvalid(f"{TIMESTAMP_HEADER} is not a number")
        if abs(time.time() - int(timestamp)) > REPLAY_WINDOW_SECONDS:
            raise SignatureInvalid(f"{TIMESTAMP_HEADER} is outside the {REPLAY_WINDOW_SECONDS}-second window")
        try:
            request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRequest("body is not UTF-8") from None
        secrets = current_or_previous(self.config.signing_secret, self.config.previous_signing_secret)
        if not any(SignatureVerifier(secret).is_valid(request.body, timestamp, signature) for secret in secrets):
            raise SignatureInvalid(f"{SIGNATURE_HEADER} does not match the signing secret")

    def handshake(self, request: HookRequest) -> HookResponse | None:
        """Slack's ``url_verification`` POST (signed like any event): answered with its challenge."""
        if request.method != "POST" or b"url_verification" not in request.body:
            return None
        self._check_signature(request)
        data = request.json_object()
        if data.get("type") != "url_verification":
            return None
        challenge = data.get("challenge")
        if not isinstance(challenge, str):
            raise MalformedRequest("url_verification without a challenge")
        return HookResponse(200, challenge, "text/plain; charset=utf-8")

    def verify(self, request: HookRequest) -> None:
        self._check_signature(request)

    def split(self, request: HookRequest) -> list[InboxItem]:
        data = request.json_object()
        kind = data.get("type")
        if not isinstance(kind, str):
            raise MalformedRequest("type is missing")
        if kind != "event_callback":
            return []  # app_rate_limited and other notices: nothing to store
        event_id, event, team_id = data.get("event_id"), data.get("event"), _workspace(data)
        if not isinstance(event_id, str) or not event_id:
            raise MalformedRequest("event_id is missing")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise MalformedRequest("event is not an object with a type")
        if team_id is None:
            log.info("%s: organisation-level %s event %s (enterprise %s) acknowledged, not stored: no workspace",
                     self.name, event["type"], event_id, data.get("enterprise_id") or data.get("context_enterprise_id"))
            return []
        if self.config.team_ids and team_id not in self.config.team_ids:
            raise SignatureInvalid(f"workspace {team_id} is not one of this channel's team_ids")
        return [InboxItem(event_id, request.body, "application/json", "message")]

    # -- normalising ---------------------------------------------------------------------------------------------
    def _is_customer_channel(self, data: dict[str, Any], event: dict[str, Any], channel: str) -> bool:
        if event.get("channel_type") == "im":
            return self.config.direct_messages
        if channel in self.config.channel_ids:
            return True
        return self.config.shared_channels and bool(data.get("is_ext_shared_channel"))

    def _own_users(self, data: dict[str, Any]) -> set[str]:
        users = set(self.config.bot_user_ids)
        for auth in data.get("authorizations") or ():
            if isinstance(auth, dict) and auth.get("is_bot") and auth.get("user_id"):
                users.add(auth["user_id"])
        return users

    def _from_person(self, message: dict[str, Any], own: set[str]) -> bool:
        return (message.get("subtype") in _PERSON_SUBTYPES and not message.get("bot_id")
                and isinstance(message.get("user"), str) and message["user"] not in own)

    def normalize(self, record: RawRecord) -> list[Message]:
        data = json.loads(record.body)
        event: dict[str, Any] = data["event"]
        team_id = _workspace(data) or ""
        own = self._own_users(data)
        etype = event.get("type")
        if etype in ("reaction_added", "reaction_removed"):
            item = event.get("item") or {}
            channel = item.get("channel", "")
            if item.get("type") != "message" or event.get("user") in own or not isinstance(event.get("user"), str):
                return []
            if not item.get("ts"):
                return self._ignored(record, "a reaction that names no message (item.ts)")
            if not self._is_customer_channel(data, {"channel_type": _guess_type(channel)}, channel):
                return []
            target = f"{channel}:{item['ts']}"
            removed = etype == "reaction_removed"
            # event_ts in the id: the same reaction added again after a removal is a new event
            return [self._message(record, data, event, event["user"], event.get("user_team") or team_id, channel,
                                  f"{target}:reaction:{event['user']}:{event['reaction']}:{event['event_ts']}",
                                  event["event_ts"], kind=MessageKind.REACTION, target=target,
                                  text=f":{event['reaction']}:", thread_ts=item["ts"],
                                  extras={"action": "unreact"} if removed else None)]
        if etype != "message":
            return []
        channel = event.get("channel", "")
        if not self._is_customer_channel(data, event, channel):
            return []
        subtype = event.get("subtype")
        if subtype == "message_changed":
            new, old = event.get("message") or {}, event.get("previous_message") or {}
            if not self._from_person(new, own) or new.get("text") == old.get("text"):
                return []  # bots, or a link unfurl / metadata change that left the text as it was
            edited_ts = new.get("ts") or old.get("ts")
            if not edited_ts or not event.get("ts"):
                return self._ignored(record, "message_changed names no edited message (message.ts)")
            target = f"{channel}:{edited_ts}"
            return [self._message(record, data, new, new["user"], new.get("user_team") or new.get("team") or team_id,
                                  channel, f"{target}:edit:{event['ts']}", event["ts"], kind=MessageKind.EDIT,
                                  target=target, thread_ts=new.get("thread_ts") or edited_ts)]
        if subtype == "message_deleted":
            old = event.get("previous_message") or {}
            if not self._from_person(old, own):
                return []
            deleted_ts = event.get("deleted_ts") or old.get("ts")
            if not deleted_ts or not event.get("ts"):
                return self._ignored(record, "message_deleted names no deleted message (deleted_ts)")
            target = f"{channel}:{deleted_ts}"
            return [self._message(record, data, old, old["user"], old.get("user_team") or old.get("team") or team_id,
                                  channel, f"{target}:delete", event["ts"], kind=MessageKind.DELETE, target=target,
                                  text="", thread_ts=old.get("thread_ts") or deleted_ts, files=False)]
        if not self._from_person(event, own):
            return []
        return [self._message(record, data, event, event["user"],
                              event.get("user_team") or event.get("team") or team_id, channel,
                              f"{channel}:{event['ts']}", event["ts"], thread_ts=event.get("thread_ts") or event["ts"])]

    def _ignored(self, record: RawRecord, reason: str) -> list[Message]:
        log.info("%s: inbox row %s (Slack event %s) ignored: %s", record.connector, record.inbox_id,
                 record.provider_id, reason)
        return []

    def _message(self, record: RawRecord, data: dict[str, Any], event: dict[str, Any], user: str, user_team: str,
                 channel: str, provider_id: str, ts: str, *, kind: MessageKind = MessageKind.MESSAGE,
                 target: str | None = None, text: str | None = None, thread_ts: str, files: bool = True,
                 extras: dict[str, Any] | None = None) -> Message:
        body = html.unescape(event.get("text") or "") if text is None else text
        attachments = tuple(
            Attachment(filename=f.get("name") or f.get("id", "file"),
                       content_type=f.get("mimetype") or "application/octet-stream",
                       size=f.get("size") if isinstance(f.get("size"), int) else None,
                       location=f.get("url_private_download") or f["url_private"])
            for f in (event.get("files") or []) if files and isinstance(f, dict) and f.get("url_private"))
        extras = {"team_id": _workspace(data), "channel": channel, "ts": event.get("ts", ts),
                  "event_id": data.get("event_id"), **(extras or {})}
        for key in ("channel_type", "thread_ts", "parent_user_id", "subtype"):
            if event.get(key):
                extras[key] = event[key]
        if data.get("is_ext_shared_channel"):
            extras["is_ext_shared_channel"] = True
        return self.message(
            record, channel=ChannelType.SLACK, kind=kind, provider_message_id=provider_id,
            target_provider_message_id=target,
            thread=ThreadRef(provider_thread_id=f"{channel}:{thread_ts}"),
            sender=Party(identifiers=(scoped_identifier(IdentifierKind.SLACK, user_team, user),)),
            text=body, full_text=body, attachments=attachments, sent_at=_ts_time(ts), extras=extras)

    # -- network: profiles and files -----------------------------------------------------------------------------
    def _token(self, team_id: str) -> str:
        token = self.config.workspace_tokens.get(team_id, self.config.bot_token)
        return token.get_secret_value()

    def client(self, team_id: str) -> WebClient:
        """A Web API client for one workspace, on the configured base URL."""
        base = self.config.api_base_url if self.config.api_base_url.endswith("/") else self.config.api_base_url + "/"
        return WebClient(token=self._token(team_id), base_url=base, timeout=10)

    def profile(self, team_id: str, user_id: str) -> dict[str, Any] | None:
        """users.info for a user, cached for ``profile_cache_seconds``; None for an unknown user."""
        key = (team_id, user_id)
        now = time.monotonic()
        with self._lock:
            cached = self._profiles.get(key)
        if cached is not None and now - cached[0] < self.config.profile_cache_seconds:
            return cached[1]
        try:
            user: dict[str, Any] | None = self.client(team_id).users_info(user=user_id)["user"]
        except SlackApiError as exc:
            if exc.response.get("error") not in ("user_not_found", "user_not_visible"):
                raise
            user = None
        with self._lock:
            self._profiles[key] = (now, user)
        return user

    def enrich(self, message: Message) -> Message:
        team_id = str(message.extras.get("team_id"))
        updates: dict[str, Any] = {}
        user_id = message.sender.identifiers[0].value.split(":", 1)[1]
        user = self.profile(team_id, user_id)
        if user is not None:
            profile = user.get("profile") or {}
            name = profile.get("display_name") or profile.get("real_name") or user.get("real_name") or user.get("name")
            identifiers = list(message.sender.identifiers)
            email = profile.get("email")
            if email and not user.get("is_bot"):
                with contextlib.suppress(InvalidIdentifier):
                    identifiers.append(email_identifier(email, AS_WRITTEN))
            updates["sender"] = Party(identifiers=tuple(identifiers), display_name=name or None)
        enriched = message.model_copy(update=updates) if updates else message
        return self.context.attachments.fetch_into(
            self.context.http, enriched, allowed_hosts=FILE_HOSTS, redirect_hosts=LOGIN_HOSTS,
            max_bytes=self.config.max_file_bytes, prepare=lambda attachment: self.file_request(team_id, attachment))

    def file_request(self, team_id: str, attachment: Attachment) -> MediaRequest:
        """A file download with the workspace's bot token; an HTML answer is Slack's login page, not the file."""

        def not_a_login_page(content_type: str) -> None:
            if content_type.startswith("text/html"):
                raise MediaRefused(f"Slack answered {attachment.filename} with a login page: check files:read")

        return MediaRequest(attachment.location, headers={"Authorization": f"Bearer {self._token(team_id)}"},
                            check=not_a_login_page)

    @online_check
    def check_online(self) -> str:
        """``auth.test`` with the bot token (tests the token and reachability)."""
        try:
            answer = self.client("").auth_test()
        except SlackApiError as exc:
            raise OnlineCheckFailed(f"Slack refused the bot_token: {exc.response.get('error') or 'no reason given'}"
                                    ) from None
        return f"bot {answer.get('user')} in workspace {answer.get('team')}"

    def sample_request(self, *, sender: str, text: str, recipient: str | None, public_url: str) -> HookRequest:
        team, _, user = sender.rpartition(":")
        ts = f"{time.time():.6f}"
        channel = recipient or "D0SIMULATED"
        body = json.dumps({
            "token": "simulated", "team_id": team or "T0SIMULATED", "api_app_id": "A0SIMULATED",
            "event": {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
                      "event_ts": ts, "channel_type": "im"},
            "type": "event_callback", "event_id": "Ev" + uuid.uuid4().hex[:12].upper(), "event_time": int(time.time()),
        }).encode()
        return signed_request(self.config.signing_secret.get_secret_value(), body, public_url)


def _guess_type(channel: str) -> str:
    """A channel id's kind from its prefix (reaction events carry no channel_type): D is a direct message."""
    return "im" if channel.startswith("D") else "channel"


def signed_request(secret: str, body: bytes, public_url: str, *, timestamp: int | None = None,
                   headers: dict[str, str] | None = None) -> HookRequest:
    """A request signed as Slack signs it (also used by ``gateway simulate`` and the tests)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body) or ""
    all_headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature,
                   **(headers or {})}
    return HookRequest("POST", "", "", Headers(all_headers), body, public_url)
