"""Driving a whole two-way exchange in one process: a customer's message in, an agent's reply out, statuses back.

The CRM is the ``jsonl`` trial CRM with a ``reply_secret``, so an agent's reply is a signed post to
``/crm-hooks/trial`` (``gateway.signed_replies``); the stages (pipeline, send, notes) run until nothing is due.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from pydantic import SecretStr
from sqlalchemy import select

from gateway import signed_replies
from gateway.notes import NoteWorker
from gateway.runtime import Runtime
from gateway.sending import SendWorker
from gateway.storage.tables import crm_notes, messages, sends
from gateway.worker import drain_once
from tests.conftest import PUBLIC_URL

REPLY_SECRET = "test-reply-secret"


def reply_config(channel_name: str, settings: dict[str, Any]) -> str:
    """A gateway config (for ``write_config``) with one channel, routed to a jsonl CRM that takes agent replies."""
    return f"""
storage: {{url: "{{storage_url}}"}}
server: {{listen: "127.0.0.1:0", public_url: "{PUBLIC_URL}"}}
workers: {{idle_poll_seconds: 0.05, retry: {{initial_seconds: 0.01, max_seconds: 0.05, jitter_seconds: 0}}}}
channels:
  {channel_name}: {json.dumps(settings)}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl, reply_secret: "{REPLY_SECRET}"}}
routes:
  - {{from: [{channel_name}], to: trial}}
"""


def drain(stage: Any) -> int:
    total = 0
    while processed := drain_once(stage):
        total += processed
    return total


def post_agent_reply(client: FlaskClient, conversation_id: str, text: str) -> None:
    """An agent's reply to the conversation, posted to the CRM's reply hook as the CRM would."""
    request = signed_replies.sample(SecretStr(REPLY_SECRET), conversation_id=conversation_id, text=text,
                                    public_url=f"{PUBLIC_URL}/crm-hooks/trial")
    answer = client.post("/crm-hooks/trial", data=request.body, headers=list(request.headers.items()))
    assert answer.status_code == 200, answer.get_data(as_text=True)


def only_conversation(runtime: Runtime) -> str:
    with runtime.engine.connect() as conn:
        [conversation_id] = set(conn.execute(select(messages.c.conversation_id)).scalars())
    return str(conversation_id)


def run_sends(runtime: Runtime) -> int:
    return drain(SendWorker(runtime, "test-sender"))


def run_notes(runtime: Runtime) -> int:
    return drain(NoteWorker(runtime, "test-notes"))


def send_rows(runtime: Runtime) -> list[Any]:
    with runtime.engine.connect() as conn:
        return list(conn.execute(select(sends).order_by(sends.c.id)))


def note_texts(runtime: Runtime) -> list[str]:
    with runtime.engine.connect() as conn:
        return list(conn.execute(select(crm_notes.c.text).order_by(crm_notes.c.id)).scalars())


def crm_records(path: Path, keep: Callable[[dict[str, Any]], bool] = lambda _: True) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [record for record in map(json.loads, lines) if keep(record)]
