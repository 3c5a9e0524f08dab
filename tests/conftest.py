"""Shared fixtures: configs written to a temp folder, runtimes on SQLite or on the local PostgreSQL."""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import requests
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from gateway.config import GatewayConfig, load_config
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import make_engine, migrate

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TWILIO_SID = "AC" + "F" * 31 + "1"
TWILIO_TOKEN = "test-twilio-token"
PUBLIC_URL = "https://gw.example.com"

BASE_CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{listen: "127.0.0.1:0", public_url: "{PUBLIC_URL}"}}
workers: {{idle_poll_seconds: 0.05, retry: {{initial_seconds: 0.01, max_seconds: 0.05, jitter_seconds: 0}}}}
channels:
  sms-main: {{type: twilio, account_sid: "{TWILIO_SID}", auth_token: "{TWILIO_TOKEN}"}}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl}}
routes:
  - {{from: [sms-main], to: trial}}
"""


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config file into tmp_path: the base config above, or the YAML text given."""

    def write(text: str | None = None, *, storage_url: str | None = None, name: str = "config.yaml") -> Path:
        body = textwrap.dedent(text) if text is not None else BASE_CONFIG
        url = storage_url or f"sqlite:///{tmp_path / 'gateway.db'}"
        path = tmp_path / name
        path.write_text(body.replace("{storage_url}", url), encoding="utf-8")
        return path

    return write


@pytest.fixture
def config(write_config: Callable[..., Path]) -> GatewayConfig:
    return load_config(write_config())


@pytest.fixture
def runtime(config: GatewayConfig) -> Iterator[Runtime]:
    rt = build_runtime(config, http=requests.Session())
    yield rt
    rt.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; fails (never skips) when the server is missing."""
    url = make_url(POSTGRES_URL)
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {POSTGRES_URL} ({exc}); .ci/run starts it")
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["postgresql", "sqlite"])
def migrated_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database of each kind: a fresh PostgreSQL one, then SQLite in ``tmp_path``."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/g.db"
    engine = make_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()
