"""A small local stand-in for Slack's Web API, for the ``slack`` connector's profile lookups.

It serves ``users.info`` and ``auth.test`` on 127.0.0.1 with bodies shaped like Slack's documented ones
(https://docs.slack.dev/reference/methods/users.info): ``{"ok": true, "user": {...}}``, or ``{"ok": false,
"error": "user_not_found" | "invalid_auth"}``. Tokens are checked per workspace, and every call is recorded, so
tests can see which token was used and that profiles are cached.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Call:
    method: str
    params: dict[str, str]
    token: str | None


@dataclass
class FakeSlackState:
    """Users by (team_id, user_id), accepted bot tokens by team_id, and every call seen."""

    users: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_user(self, team_id: str, user_id: str, real_name: str, *, display_name: str = "",
                 email: str | None = None, is_bot: bool = False) -> None:
        profile: dict[str, Any] = {"real_name": real_name, "display_name": display_name, "team": team_id,
                                   "real_name_normalized": real_name, "display_name_normalized": display_name}
        if email:
            profile["email"] = email
        self.users[(team_id, user_id)] = {
            "id": user_id, "team_id": team_id, "name": real_name.split()[0].lower(), "deleted": False,
            "real_name": real_name, "tz": "Europe/Berlin", "tz_offset": 3600, "is_bot": is_bot,
            "is_admin": False, "is_restricted": False, "updated": 1700000000, "profile": profile}

    def count(self, method: str) -> int:
        with self.lock:
            return sum(1 for call in self.calls if call.method == method)


class FakeSlack:
    """The fake server; ``base_url`` ends with ``/api/`` as slack_sdk's ``base_url`` does."""

    def __init__(self) -> None:
        self.state = FakeSlackState()
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                url = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    raw = self.rfile.read(length).decode()
                    if self.headers.get("Content-Type", "").startswith("application/json"):
                        params.update(json.loads(raw))
                    else:
                        params.update({k: v[0] for k, v in parse_qs(raw).items()})
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
                method = url.path.rsplit("/", 1)[-1]
                with state.lock:
                    state.calls.append(Call(method, params, token))
                    team = next((t for t, tok in state.tokens.items() if tok == token), None)
                    body = self._method(method, params, team)
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _method(self, method: str, params: dict[str, str], team: str | None) -> dict[str, Any]:
                if team is None:
                    return {"ok": False, "error": "invalid_auth"}
                if method == "auth.test":
                    return {"ok": True, "url": "https://gw-support.slack.com/", "team": "GW Support",
                            "user": "support", "team_id": team, "user_id": "U0GWBOT0001", "bot_id": "B0GWBOT0001"}
                if method == "users.info":
                    user = next((u for (t, uid), u in state.users.items() if uid == params.get("user")), None)
                    if user is None:
                        return {"ok": False, "error": "user_not_found"}
                    return {"ok": True, "user": user}
                return {"ok": False, "error": "unknown_method"}

            do_GET = _answer
            do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/api/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
