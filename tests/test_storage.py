"""Storage: migrations match the table definitions, cursors, cross-process locks, attachments, used tokens."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import responses
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import TypeDecorator, select

from gateway.attachments import AttachmentStore, AttachmentTooLarge, download
from gateway.replay import DbUsedTokens
from gateway.storage.cursors import Cursors, exclusive
from gateway.storage.db import bookkeeping, dumps_json, loads_json, make_engine, migrate
from gateway.storage.tables import Time, metadata, used_tokens


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_declared_schema(backend: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    migrate(engine)  # a second run is a no-op
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_cursors_round_trip(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    store = Cursors(engine)
    assert store.get("imap:support") is None
    store.put("imap:support", {"uidvalidity": 7, "last_uid": 41})
    store.put("imap:support", {"uidvalidity": 7, "last_uid": 42})
    assert store.get("imap:support") == {"uidvalidity": 7, "last_uid": 42}


def test_exclusive_lock_admits_one_holder_on_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'l.db'}")
    with exclusive(engine, "poll:a", tmp_path) as first:
        with exclusive(engine, "poll:a", tmp_path) as second:
            assert (first, second) == (True, False)
        with exclusive(engine, "poll:b", tmp_path) as other:
            assert other is True
    with exclusive(engine, "poll:a", tmp_path) as again:
        assert again is True


def test_exclusive_lock_admits_one_holder_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    engine = make_engine(postgres_url)
    with exclusive(engine, "poll:a", tmp_path) as first, exclusive(engine, "poll:a", tmp_path) as second:
        assert (first, second) == (True, False)
    with exclusive(engine, "poll:a", tmp_path) as again:
        assert again is True
    engine.dispose()


def test_attachment_store_is_content_addressed_with_limits(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path / "att", max_bytes=10)
    first = store.put(b"0123456789", "a.txt", "text/plain")
    second = store.put(b"0123456789", "b.txt", "text/plain")
    assert first.sha256 == second.sha256 == hashlib.sha256(b"0123456789").hexdigest()
    assert first.size == 10 and store.read(first.location) == b"0123456789"
    assert len(list((tmp_path / "att").rglob("*"))) == 3  # two folders and one file
    with pytest.raises(AttachmentTooLarge):
        store.put(b"x" * 11, "big.bin", "application/octet-stream")


@responses.activate
def test_download_refuses_other_hosts_and_oversized_bodies() -> None:
    session = requests.Session()
    url = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"
    responses.get(url, body=b"\x89PNG....", content_type="image/png")
    data, content_type = download(session, url, allowed_hosts=("twilio.com",), max_bytes=100)
    assert (data, content_type) == (b"\x89PNG....", "image/png")
    with pytest.raises(ValueError, match="refusing"):
        download(session, "https://evil.example/x.png", allowed_hosts=("twilio.com",), max_bytes=100)
    with pytest.raises(ValueError, match="refusing"):
        download(session, "http://api.twilio.com/x", allowed_hosts=("twilio.com",), max_bytes=100)
    with pytest.raises(AttachmentTooLarge):
        download(session, url, allowed_hosts=("twilio.com",), max_bytes=4)



def test_retry_after_reads_delay_seconds() -> None:
    from gateway.errors import retry_after_seconds

    assert retry_after_seconds({"Retry-After": "93"}) == 93.0
    assert retry_after_seconds({"Retry-After": "1.5"}) == 1.5
    assert retry_after_seconds({}) is None and retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({"Retry-After": "inf"}) is None and retry_after_seconds({"Retry-After": "nan"}) is None
    assert retry_after_seconds({"Retry-After": "-5"}) == 0.0


def test_a_memory_bucket_a_rounding_error_short_of_a_token_does_not_spin() -> None:
    from gateway.ratelimit import MemoryRateLimiter

    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds
        assert len(slept) < 100, "the limiter keeps waiting for a token it already has"

    limiter = MemoryRateLimiter(10, sleep=sleep, clock=lambda: now[0])
    limiter.tokens = 1 - 1e-12  # what a long run of small float refills leaves
    limiter.acquire()
    assert slept == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_token_is_taken_once_by_one_request_until_its_window_ends(backend: str, tmp_path: Path,
                                                                     request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    store = DbUsedTokens(engine, clock=lambda: now[0], purge_every_seconds=0)
    until = now[0] + timedelta(seconds=300)
    assert store.use("mailgun", "t1", "post-a", until)
    assert store.use("mailgun", "t1", "post-a", until)  # the same request again: a retry
    assert not store.use("mailgun", "t1", "post-b", until)  # another request under the same token: a replay
    assert store.use("elsewhere", "t1", "post-b", until)
    with ThreadPoolExecutor(8) as pool:  # many web processes at once: the insert decides, one wins
        taken = list(pool.map(lambda n: DbUsedTokens(engine).use("mailgun", "t2", f"post-{n}", until), range(24)))
    assert taken.count(True) == 1
    now[0] = until + timedelta(seconds=1)
    assert store.use("mailgun", "t3", "post-c", now[0] + timedelta(seconds=300))  # purges what has expired
    with engine.connect() as conn:
        assert conn.execute(select(used_tokens.c.token)).scalars().all() == ["t3"]
    engine.dispose()


@pytest.mark.parametrize("value", [
    {"text": "plain", "numbers": [1, 2.5, None, True], "nested": {"é": "ü", "emoji": "🙂"}},
    {"mail": "undecodable bytes \udc80\udcff kept"},  # surrogateescape: orjson refuses it, json.dumps writes it
    {"big": 2 ** 70},  # over 64 bits
])
def test_json_columns_round_trip_whatever_orjson_refuses(tmp_path: Path, value: dict[str, object]) -> None:
    from sqlalchemy import JSON, Column, Integer, MetaData, Table, insert

    engine = make_engine(f"sqlite:///{tmp_path / 'j.db'}")
    table = Table("docs", MetaData(), Column("id", Integer, primary_key=True), Column("doc", JSON))
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(insert(table).values(id=1, doc=value))
        assert conn.execute(select(table.c.doc)).scalar_one() == value
    engine.dispose()


def test_json_keys_that_are_not_strings_become_strings_as_json_dumps_makes_them() -> None:
    assert json.loads(dumps_json({1: "a", None: "b"})) == json.loads(json.dumps({1: "a", None: "b"}))
    assert loads_json('{"ratio": NaN}')["ratio"] != 0  # NaN, which orjson does not read, read by json.loads


def test_a_bookkeeping_transaction_skips_its_own_fsync_and_leaves_the_connection_as_configured(
        tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}", sqlite_synchronous="full", pool_size=1)
    migrate(engine)
    levels = {}  # PRAGMA synchronous: 1 NORMAL, 2 FULL
    with bookkeeping(engine) as conn:
        levels["inside"] = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        conn.execute(used_tokens.insert().values(scope="t", token="claim", used_for="x", expires_at=datetime.now(UTC)))
    with pytest.raises(RuntimeError), bookkeeping(engine) as conn:
        conn.execute(used_tokens.insert().values(scope="t", token="undone", used_for="x", expires_at=datetime.now(UTC)))
        raise RuntimeError("a claim that fails")
    with engine.begin() as conn:
        levels["after"] = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        tokens = set(conn.execute(select(used_tokens.c.token)).scalars())
    engine.dispose()

    assert levels == {"inside": 1, "after": 2}
    assert tokens == {"claim"}


def test_bookkeeping_is_an_ordinary_transaction_where_every_commit_is_normal_already(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'n.db'}", sqlite_synchronous="normal", pool_size=1)
    with bookkeeping(engine) as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("value", [
    datetime(2026, 1, 31, 9, 5, tzinfo=UTC),
    datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),  # the day changes in UTC
    datetime(9999, 12, 31, 12, tzinfo=timezone(timedelta(hours=5))),
])
def test_a_utc_column_writes_the_text_sqlalchemys_sqlite_datetime_writes(tmp_path: Path, value: datetime) -> None:
    dialect = make_engine(f"sqlite:///{tmp_path / 'gw.db'}").dialect
    column_type = Time.dialect_impl(dialect)
    assert column_type.bind_processor(dialect)(value) == TypeDecorator.bind_processor(column_type, dialect)(value)
    assert column_type.bind_processor(dialect)(None) is None
    with pytest.raises(ValueError, match="naive"):
        column_type.bind_processor(dialect)(value.replace(tzinfo=None))
