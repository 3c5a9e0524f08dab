"""The Flask ingress: status codes and reasons, metrics, readiness, and 2xx only after the inbox commit."""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from connectors.twilio import SIGNATURE_HEADER
from gateway.config import load_config
from gateway.plugins import largest_body
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import inbox
from gateway.web import create_app
from gateway.webhooks import HookRequest
from tests.conformance.channel import send
from tests.conftest import BASE_CONFIG, POSTGRES_URL, PUBLIC_URL

CHANNEL = "sms-main"
HOOK = f"/hooks/{CHANNEL}"


@pytest.fixture
def client(runtime: Runtime) -> FlaskClient:
    """The Flask test client of the app on the SQLite ``runtime``."""
    return create_app(runtime).test_client()


def signed(runtime: Runtime, text: str = "Where is my parcel?", sender: str = "+14017122661") -> HookRequest:
    """A correctly signed inbound SMS with a fresh MessageSid, made by the connector as Twilio would send it."""
    return runtime.channels[CHANNEL].sample_request(
        sender=sender, text=text, recipient=None, public_url=f"{PUBLIC_URL}{HOOK}")


def metric(client: FlaskClient, name: str, **labels: str) -> float:
    """A sample's value as exposed at /metrics (0 when the labelled series does not exist yet)."""
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def inbox_rows(runtime: Runtime) -> int:
    """How many inbox rows are committed."""
    with runtime.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(inbox)).scalar_one()


def rejected(client: FlaskClient, connector: str, reason: str) -> float:
    """The ``gateway_rejected_total`` count for one connector and reason."""
    return metric(client, "gateway_rejected_total", connector=connector, reason=reason)


def test_unknown_channel_is_answered_like_a_known_one_with_a_bad_signature(client: FlaskClient,
                                                                          runtime: Runtime) -> None:
    """A guessed name learns nothing: an unknown channel answers what a known one answers a forged request (401,
    the same body) and a GET (405), so names cannot be enumerated by their answers."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    known = client.post(HOOK, data=b"Body=hi", headers={**form, SIGNATURE_HEADER: "Zm9yZ2Vk"})
    before = rejected(client, "unknown", "unknown_channel")
    unknown = client.post("/hooks/nope", data=b"Body=hi", headers={**form, SIGNATURE_HEADER: "Zm9yZ2Vk"})
    assert known.status_code == 401
    assert (unknown.status_code, unknown.get_data(), unknown.content_type) == (
        known.status_code, known.get_data(), known.content_type)
    assert b"nope" not in unknown.get_data()
    assert rejected(client, "unknown", "unknown_channel") == before + 1
    known_get, unknown_get = client.get(HOOK), client.get("/hooks/nope")
    assert (unknown_get.status_code, unknown_get.get_data()) == (known_get.status_code, known_get.get_data())
    assert known_get.status_code == 405
    assert inbox_rows(runtime) == 0


def test_a_polled_channel_is_answered_like_an_unknown_name(write_config: Callable[..., Path]) -> None:
    rt = build_runtime(load_config(write_config(BASE_CONFIG.replace(
        "channels:\n", "channels:\n  mail: {type: imap, host: imap.example.com, username: u, password: p}\n"))))
    try:
        client = create_app(rt).test_client()
        polled, unknown = client.post("/hooks/mail", data=b"x"), client.post("/hooks/nope", data=b"x")
        assert (polled.status_code, polled.get_data()) == (unknown.status_code, unknown.get_data()) == (
            401, b"signature missing or invalid\n")
    finally:
        rt.close()


def test_get_without_handshake_is_405(client: FlaskClient, runtime: Runtime) -> None:
    before = rejected(client, CHANNEL, "method")
    response = client.get(HOOK)
    assert response.status_code == 405
    assert response.get_data(as_text=True) == "POST only\n"
    assert rejected(client, CHANNEL, "method") == before + 1


def test_body_over_the_connector_limit_is_413(client: FlaskClient, runtime: Runtime) -> None:
    limit = runtime.channels[CHANNEL].max_body_bytes
    request = signed(runtime, text="x" * limit)
    assert len(request.body) > limit
    before = rejected(client, CHANNEL, "too_large")
    response = send(client, request, CHANNEL)
    assert response.status_code == 413
    assert response.get_data(as_text=True) == f"body over {limit} bytes\n"
    assert rejected(client, CHANNEL, "too_large") == before + 1
    assert inbox_rows(runtime) == 0


def test_body_just_under_the_limit_is_taken(client: FlaskClient, runtime: Runtime) -> None:
    limit = runtime.channels[CHANNEL].max_body_bytes
    request = signed(runtime, text="x")
    padding = limit - len(request.body) - 10
    request = signed(runtime, text="x" * padding)
    assert len(request.body) <= limit
    assert send(client, request, CHANNEL).status_code == 200
    assert inbox_rows(runtime) == 1


@pytest.mark.parametrize(("content_type", "body", "reason"), [
    ("application/json", b'{"MessageSid": "SM1"}', "expected application/x-www-form-urlencoded, got application/json"),
    ("application/x-www-form-urlencoded", b"MessageSid=SM1&Body", "body is not a valid urlencoded form"),
    ("application/x-www-form-urlencoded", b"Body=\xff\xfe", "body is not a valid urlencoded form"),
])
def test_malformed_body_is_400(client: FlaskClient, runtime: Runtime, content_type: str, body: bytes,
                               reason: str) -> None:
    before = rejected(client, CHANNEL, "malformed")
    response = client.post(HOOK, data=body, headers={"Content-Type": content_type, SIGNATURE_HEADER: "x"})
    assert response.status_code == 400
    assert response.get_data(as_text=True).startswith(reason)
    assert rejected(client, CHANNEL, "malformed") == before + 1
    assert inbox_rows(runtime) == 0


def test_bad_signature_is_401(client: FlaskClient, runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    request = signed(runtime)
    forged = HookRequest(request.method, request.path, request.query_string,
                         type(request.headers)({**dict(request.headers.items()), SIGNATURE_HEADER: "Zm9yZ2Vk"}),
                         request.body, request.public_url)
    before = rejected(client, CHANNEL, "signature")
    with caplog.at_level(logging.WARNING, logger="gateway.ingress"):
        response = send(client, forged, CHANNEL)
    assert response.status_code == 401
    assert response.get_data(as_text=True) == "signature missing or invalid\n"  # the same for every endpoint
    assert f"{SIGNATURE_HEADER} over {PUBLIC_URL}{HOOK} does not match" in caplog.text  # why: for the operator
    assert rejected(client, CHANNEL, "signature") == before + 1
    assert inbox_rows(runtime) == 0


def test_storage_failure_is_503_and_never_2xx(client: FlaskClient, runtime: Runtime,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OperationalError("INSERT INTO inbox", {}, Exception("disk I/O error"))

    monkeypatch.setattr(runtime.queues, "store_inbox_batch", broken)
    before = rejected(client, CHANNEL, "storage")
    request = signed(runtime)
    for _ in range(2):  # the provider's retry meets the same outage
        response = send(client, request, CHANNEL)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "retry" in response.get_data(as_text=True)
    assert rejected(client, CHANNEL, "storage") == before + 2
    monkeypatch.undo()
    assert send(client, request, CHANNEL).status_code == 200  # once storage is back, the retry is taken
    assert inbox_rows(runtime) == 1


def test_2xx_only_after_commit_and_duplicates_stored_once(client: FlaskClient, runtime: Runtime) -> None:
    request = signed(runtime)
    sid = dict(request.form())["MessageSid"]
    received = metric(client, "gateway_received_total", connector=CHANNEL)
    duplicates = metric(client, "gateway_duplicates_total", connector=CHANNEL)
    first = send(client, request, CHANNEL)
    assert first.status_code == 200
    # a fresh engine: what another process would see, so the row is committed, not just written
    other = create_engine(runtime.engine.url)
    try:
        with other.connect() as conn:
            rows = conn.execute(select(inbox.c.provider_id, inbox.c.body, inbox.c.status)).all()
    finally:
        other.dispose()
    assert rows == [(sid, request.body, "pending")]
    second = send(client, request, CHANNEL)
    assert (second.status_code, second.get_data()) == (200, first.get_data())
    assert inbox_rows(runtime) == 1
    assert metric(client, "gateway_received_total", connector=CHANNEL) == received + 1
    assert metric(client, "gateway_duplicates_total", connector=CHANNEL) == duplicates + 1


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.get_data(as_text=True)) == (200, "ok\n")


def test_readyz_follows_the_database(client: FlaskClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.get("/readyz").status_code == 200
    unreachable = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/gateway",
                                connect_args={"connect_timeout": 2})
    monkeypatch.setattr(runtime, "engine", unreachable)
    response = client.get("/readyz")
    assert (response.status_code, response.get_data(as_text=True)) == (503, "storage unreachable\n")
    monkeypatch.undo()
    assert client.get("/readyz").status_code == 200


def test_readyz_503_when_the_database_is_read_only(client: FlaskClient, runtime: Runtime,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that can be read but not written (a read-only file or mount) is not ready: a write must commit.

    The tests run as root, whom file permissions do not stop, so the file is opened read-only (``mode=ro``)."""
    assert client.get("/readyz").status_code == 200
    read_only = create_engine(f"sqlite:///file:{runtime.engine.url.database}?mode=ro&uri=true")
    monkeypatch.setattr(runtime, "engine", read_only)
    response = client.get("/readyz")
    assert (response.status_code, response.get_data(as_text=True)) == (503, "storage cannot commit a write\n")
    read_only.dispose()


def test_readyz_503_when_the_disk_is_nearly_full(client: FlaskClient, runtime: Runtime,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Less room beside the SQLite database than two of the largest requests: not ready, before writes fail.

    (A commit alone does not tell: SQLite reuses the space of its write-ahead log, so a small write can still
    commit on a full disk while the next webhook's cannot.)"""
    usage = shutil.disk_usage(Path(runtime.engine.url.database).parent)
    needed = 2 * largest_body(type(channel) for channel in runtime.channels.values())
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=needed - 2**10))
    response = client.get("/readyz")
    assert (response.status_code, response.get_data(as_text=True)) == (
        503, f"disk full: {needed // 2**10 - 1} KiB free beside the database, {needed // 2**10} KiB needed\n")
    monkeypatch.undo()
    assert client.get("/readyz").status_code == 200


@pytest.fixture
def pg_runtime(write_config: Callable[..., Path], postgres_url: str) -> Iterator[Runtime]:
    """The base config's runtime on a fresh PostgreSQL database."""
    rt = build_runtime(load_config(write_config(BASE_CONFIG, storage_url=postgres_url)))
    yield rt
    rt.close()


def test_readyz_503_when_the_postgres_database_goes_away(pg_runtime: Runtime, postgres_url: str) -> None:
    client = create_app(pg_runtime).test_client()
    assert client.get("/readyz").status_code == 200
    url = make_url(postgres_url)
    admin = make_url(POSTGRES_URL)
    with psycopg.connect(f"host={url.host} port={url.port or 5432} user={url.username} dbname={admin.database}",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{url.database}" WITH (FORCE)')
    assert client.get("/readyz").status_code == 503
    assert send(client, signed(pg_runtime), CHANNEL).status_code == 503  # and nothing is answered 2xx


def test_readyz_and_webhooks_503_while_the_postgres_database_is_read_only(pg_runtime: Runtime,
                                                                          postgres_url: str) -> None:
    """A PostgreSQL that answers but refuses writes (a standby after a failover, a read-only database)."""
    client = create_app(pg_runtime).test_client()
    assert client.get("/readyz").status_code == 200
    url = make_url(postgres_url)
    with psycopg.connect(f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}",
                         autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{url.database}" SET default_transaction_read_only = on')
        pg_runtime.engine.dispose()  # new sessions take the setting
        response = client.get("/readyz")
        assert (response.status_code, response.get_data(as_text=True)) == (503, "storage cannot commit a write\n")
        assert send(client, signed(pg_runtime), CHANNEL).status_code == 503
        conn.execute(f'ALTER DATABASE "{url.database}" SET default_transaction_read_only = off')
    pg_runtime.engine.dispose()
    assert client.get("/readyz").status_code == 200


def test_metrics_expose_queue_depth(client: FlaskClient, runtime: Runtime) -> None:
    assert metric(client, "gateway_queue_depth", queue="inbox") == 0
    for n in range(3):
        assert send(client, signed(runtime, text=f"message {n}"), CHANNEL).status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "# TYPE gateway_queue_depth gauge" in response.get_data(as_text=True)
    assert metric(client, "gateway_queue_depth", queue="inbox") == 3
    assert metric(client, "gateway_queue_depth", queue="outbox") == 0
    assert metric(client, "gateway_queue_depth", queue="dead_letters") == 0


def test_credentials_and_query_tokens_are_never_stored(client: FlaskClient, runtime: Runtime) -> None:
    request = signed(runtime)
    headers = {**dict(request.headers), "Authorization": "Basic dGVzdDp0ZXN0LXNlY3JldA==",
               "Cookie": "session=test-cookie"}
    response = client.post(HOOK, data=request.body, headers=headers)
    assert response.status_code == 200
    with runtime.engine.connect() as conn:
        row = conn.execute(select(inbox.c.headers, inbox.c.public_url)).one()
    assert {k.lower() for k in row.headers} & {"authorization", "cookie"} == set()
    assert "?" not in row.public_url


def test_a_chunked_body_over_the_connector_limit_is_413(client: FlaskClient, runtime: Runtime) -> None:
    """Without a Content-Length the channel's limit still holds: reading stops there, nothing is stored."""
    limit = runtime.channels[CHANNEL].max_body_bytes
    request = signed(runtime, text="x" * limit)
    response = client.post(HOOK, input_stream=io.BytesIO(request.body),
                           headers={**dict(request.headers.items()), "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert (response.status_code, response.get_data(as_text=True)) == (413, f"body over {limit} bytes\n")
    assert inbox_rows(runtime) == 0


def test_the_old_server_body_limit_loads_and_limits_nothing(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(BASE_CONFIG.replace('public_url:', 'max_body_bytes: 5242880, public_url:')))
    assert config.settings.server.max_body_bytes == 5 * 1024 * 1024


@pytest.mark.parametrize("header", ["é", "Zm9y\u00b2", "\u00ff" * 28])
def test_a_signature_no_provider_could_send_is_4xx_not_503(client: FlaskClient, runtime: Runtime,
                                                            header: str) -> None:
    """A non-ASCII signature made the constant-time comparison raise TypeError, answered 503 (retry forever)."""
    request = signed(runtime)
    response = client.post(HOOK, data=request.body, headers={**dict(request.headers.items()), SIGNATURE_HEADER: header})
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert "Retry-After" not in response.headers
    assert inbox_rows(runtime) == 0


def test_an_authentic_request_its_connector_cannot_split_is_kept_and_quarantined(
        client: FlaskClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signed request that makes the connector fail unforeseen (here a bug) is answered 2xx and kept whole: the
    pipeline quarantines it with the reason, and once the code is fixed a replay delivers it."""
    from gateway.pipeline import PipelineWorker
    from gateway.storage.tables import dead_letters, messages
    from gateway.worker import drain_once

    connector = runtime.channels[CHANNEL]
    real_split = connector.split

    def broken(request: HookRequest) -> list[Any]:
        raise KeyError("a field the code expected")

    monkeypatch.setattr(connector, "split", broken)
    request = signed(runtime, text="Kept despite the bug")
    response = send(client, request, CHANNEL)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert drain_once(PipelineWorker(runtime, "t")) == 1
    with runtime.engine.connect() as conn:
        row = conn.execute(select(inbox.c.kind, inbox.c.body, inbox.c.status)).one()
        letter = conn.execute(select(dead_letters)).one()
    assert (row.kind, row.body, row.status) == ("request", request.body, "dead")
    assert (letter.error_class, letter.error_code) == ("quarantined", "split_failed")
    assert "a field the code expected" in letter.reason
    monkeypatch.setattr(connector, "split", real_split)  # the fix
    assert runtime.queues.resolve_dead_letter(letter.id, "replayed")
    assert drain_once(PipelineWorker(runtime, "t")) == 1
    with runtime.engine.connect() as conn:
        [data] = conn.execute(select(messages.c.data)).scalars().all()
    assert data["text"] == "Kept despite the bug"


def test_metrics_need_the_bearer_token_when_one_is_set(write_config: Callable[..., Path]) -> None:
    token = "test-metrics-token-0123456789"
    rt = build_runtime(load_config(write_config(BASE_CONFIG.replace(
        'public_url:', f'metrics_token: "{token}", public_url:'))))
    try:
        client = create_app(rt).test_client()
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {token}"},
                        {"Authorization": "Bearer é"}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert b"gateway_" not in refused.get_data() and b"sms-main" not in refused.get_data()
        allowed = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status_code == 200 and b"gateway_queue_depth" in allowed.get_data()
    finally:
        rt.close()


def test_a_short_metrics_token_is_a_config_error(write_config: Callable[..., Path]) -> None:
    from gateway.yamlsource import ConfigError

    with pytest.raises(ConfigError, match=r"server\.metrics_token"):
        load_config(write_config(BASE_CONFIG.replace('public_url:', 'metrics_token: "short", public_url:')))
