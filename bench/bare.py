"""The baseline for the ingest benchmark: a bare Flask endpoint doing the same single SQLite insert.

It is served by the gateway's own gunicorn setup (``GatewayServer.load_config``: the config's server section gives
the same bind, worker class, processes, threads and timeouts); only the WSGI app differs. The endpoint reads the
form's MessageSid and inserts the raw request into a table shaped like the gateway's inbox (same columns, unique
key and index) over a connection with the same PRAGMAs (WAL, synchronous, busy_timeout), in one
``BEGIN IMMEDIATE`` ... ``COMMIT``. It checks no signature, counts no metrics and builds no objects.

    python -m bench.bare -c CONFIG
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from gateway.config import GatewayConfig, load_config
from gateway.runtime import storage_url
from gateway.server import GatewayServer

EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    connector VARCHAR(64) NOT NULL,
    provider_id VARCHAR(255) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    content_type VARCHAR(255) NOT NULL,
    headers JSON NOT NULL,
    body BLOB NOT NULL,
    public_url TEXT NOT NULL,
    received_at DATETIME NOT NULL,
    status VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    available_at DATETIME NOT NULL,
    lease_owner VARCHAR(64),
    lease_until DATETIME,
    last_error TEXT,
    processed_at DATETIME,
    CONSTRAINT uq_inbox_connector_provider_id UNIQUE (connector, provider_id)
);
CREATE INDEX IF NOT EXISTS ix_inbox_claim ON inbox (status, available_at);
"""
INSERT = """INSERT INTO inbox (connector, provider_id, kind, content_type, headers, body, public_url, received_at,
    status, attempts, available_at) VALUES (?, ?, 'message', ?, ?, ?, ?, ?, 'pending', 0, ?)
    ON CONFLICT (connector, provider_id) DO NOTHING"""


def database_path(config: GatewayConfig) -> str:
    """The SQLite file of the config's storage URL (the bare app uses the same kind of file)."""
    url = storage_url(config)
    assert url.startswith("sqlite:///"), "the bare baseline is SQLite only"
    return url[len("sqlite:///"):]


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def create_schema(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, "full")
    conn.executescript(SCHEMA)
    conn.close()


def create_bare_app(path: str, synchronous: str, public_url: str) -> Flask:
    app = Flask("bare")
    local = threading.local()

    def db() -> sqlite3.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = connect(path, synchronous)
        return conn

    @app.post("/hooks/<name>")
    def hook(name: str) -> Response:
        body = request.get_data(cache=True)
        sid = request.form.get("MessageSid")
        if not sid:
            return Response("MessageSid is missing\n", status=400)
        now = datetime.now(UTC).isoformat()
        conn = db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(INSERT, (name, sid, request.mimetype, json.dumps(dict(request.headers)), body,
                                  f"{public_url}/hooks/{name}", now, now))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return Response(EMPTY_TWIML, content_type="text/xml; charset=utf-8")

    return app


class BareServer(GatewayServer):
    """The gateway's gunicorn settings serving the bare app."""

    def load(self) -> Any:
        config = self.gateway_config
        return create_bare_app(database_path(config), config.settings.storage.sqlite_synchronous,
                               config.settings.server.public_url)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the bare baseline app with the gateway's server settings.")
    parser.add_argument("-c", "--config", required=True)
    args = parser.parse_args()
    config = load_config(args.config)
    create_schema(database_path(config))
    BareServer(config, "text").run()


if __name__ == "__main__":
    main()
