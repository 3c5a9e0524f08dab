"""The console's security review (issue 14): reads of personal data are audited without the searched value, the
login limit holds under parallel guesses, a mistyped name is not stored, logout revokes a copied cookie, and an
unknown ``/admin`` URL looks like a known one to a visitor without a session."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from flask import Flask
from sqlalchemy import Engine, select, text

from gateway.config import load_config
from gateway.console import accounts
from gateway.console.accounts import LoginLimits, set_password
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import admin_audit, console_sessions, login_failures
from gateway.web import create_app
from tests.conftest import BASE_CONFIG
from tests.console_helpers import (
    ADMIN,
    PASSWORD,
    PHONE,
    VIEWER,
    Story,
    add_accounts,
    csrf_token,
    log_in,
    tell_story,
)

KEY = b"fake-privacy-key-for-tests"


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    add_accounts(runtime)
    return create_app(runtime)


@pytest.fixture
def story(runtime: Runtime) -> Story:
    return tell_story(runtime)


def audit_rows(runtime: Runtime) -> list[tuple[str, str, str | None, dict]]:
    with runtime.engine.connect() as conn:
        return [(r.actor, r.action, r.target, r.detail)
                for r in conn.execute(select(admin_audit).order_by(admin_audit.c.id))]


def everything_stored(engine: Engine) -> str:
    """Every row of the console's tables as text: what a database dump would show."""
    with engine.connect() as conn:
        return "\n".join(str(tuple(row)) for table in ("admin_audit", "login_failures", "console_sessions")
                         for row in conn.execute(text(f"SELECT * FROM {table}")))


def test_reads_of_personal_data_are_audited_without_the_searched_number(
        app: Flask, runtime: Runtime, story: Story) -> None:
    client = app.test_client()
    assert log_in(client, VIEWER) == 302
    client.get("/admin/trace", query_string={"q": "(401) 712-2661"})
    client.get("/admin/api/trace", query_string={"q": PHONE})
    client.get("/admin/customers", query_string={"q": "someone@example.com"})
    client.get(f"/admin/customers/{story.customer_a}")
    client.get(f"/admin/dead-letters/{story.dead_letter_id}")
    client.get("/admin/api/dead-letters")
    client.get("/admin/trace", query_string={"q": story.conversation_id})
    client.get("/admin/trace")  # no search, nothing read
    reads = [(actor, action, target, detail) for actor, action, target, detail in audit_rows(runtime)
             if action in ("view", "search")]
    assert [(actor, action, detail["page"], detail.get("kind")) for actor, action, _t, detail in reads] == [
        (VIEWER, "search", "trace", "phone"), (VIEWER, "search", "api/trace", "phone"),
        (VIEWER, "search", "customers", "email"), (VIEWER, "view", "customer", None),
        (VIEWER, "view", "dead letter", None), (VIEWER, "view", "api/dead-letters", None),
        (VIEWER, "search", "trace", "id")]
    phone_targets = {target for _a, _b, target, _d in reads[:2]}
    assert len(phone_targets) == 1, "one number in two spellings is one keyed hash"
    assert reads[3][2] == f"customer {story.customer_a}"
    assert reads[4][2] == f"dead letter {story.dead_letter_id}"
    assert reads[6][2] == f"id {story.conversation_id}", "an id the gateway minted is kept as it is"
    stored = everything_stored(runtime.engine)
    for raw in (PHONE, "7122661", "712-2661", "someone@example.com", "someone"):
        assert raw not in stored, raw
    assert "+1401…2661" in stored and "s…@example.com" in stored, "the masked form tells the auditor which one"


def test_the_audit_page_filters_reads_by_kind_actor_and_searched_value(
        app: Flask, runtime: Runtime, story: Story) -> None:
    viewer, admin = app.test_client(), app.test_client()
    assert log_in(viewer, VIEWER) == 302 and log_in(admin, ADMIN) == 302
    viewer.get("/admin/trace", query_string={"q": PHONE})
    admin.get(f"/admin/customers/{story.customer_b}")
    everything = admin.get("/admin/audit").get_data(as_text=True)
    assert "search" in everything and "view" in everything and "login" in everything
    reads = admin.get("/admin/audit", query_string={"action": "reads"}).get_data(as_text=True)
    assert f"customer {story.customer_b}" in reads and ">login<" not in reads
    by_viewer = admin.get("/admin/audit", query_string={"action": "reads", "actor": VIEWER}).get_data(as_text=True)
    assert "+1401…2661" in by_viewer and f"customer {story.customer_b}" not in by_viewer
    for spelling in ("(401) 712-2661", "+1 401 712 2661"):
        found = admin.get("/admin/audit", query_string={"q": spelling}).get_data(as_text=True)
        assert "+1401…2661" in found and f"customer {story.customer_b}" not in found, spelling
    found = admin.get("/admin/audit", query_string={"q": story.customer_b}).get_data(as_text=True)
    assert f"customer {story.customer_b}" in found and "+1401…2661" not in found
    assert PHONE not in admin.get("/admin/audit").get_data(as_text=True)


def _parallel_guesses(engine: Engine, name: str, guesses: int, limits: LoginLimits) -> list[accounts.LoginResult]:
    barrier = threading.Barrier(guesses)
    results: list[accounts.LoginResult] = []
    lock = threading.Lock()

    def guess(n: int) -> None:
        barrier.wait()
        result = accounts.log_in(engine, name, f"wrong password {n}", f"10.0.0.{n}", limits, KEY)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(guesses)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _check_parallel_limit(runtime: Runtime) -> None:
    limits = LoginLimits(per_account=3, per_address=100, window=timedelta(minutes=15))
    results = _parallel_guesses(runtime.engine, ADMIN, 8, limits)
    assert len(results) == 8 and all(r.account is None for r in results)
    assert sum(not r.throttled for r in results) == 3, "exactly the limit's guesses had their password checked"
    with runtime.engine.connect() as conn:
        assert len(list(conn.execute(select(login_failures.c.id)))) == 3
    actions = [action for _actor, action, _target, _detail in audit_rows(runtime)]
    assert actions.count("login_failed") == 3 and actions.count("login_throttled") == 5
    assert accounts.log_in(runtime.engine, ADMIN, PASSWORD, "10.0.0.99", limits, KEY).throttled


def test_parallel_guesses_cannot_exceed_the_login_limit(runtime: Runtime) -> None:
    add_accounts(runtime)
    _check_parallel_limit(runtime)


@pytest.mark.postgres
def test_parallel_guesses_cannot_exceed_the_login_limit_on_postgresql(
        write_config: Callable[..., Path], postgres_url: str) -> None:
    runtime = build_runtime(load_config(write_config(BASE_CONFIG, storage_url=postgres_url)), http=requests.Session())
    try:
        add_accounts(runtime)
        _check_parallel_limit(runtime)
    finally:
        runtime.close()


def test_a_failed_login_keeps_an_unknown_name_only_as_a_keyed_hash(runtime: Runtime) -> None:
    add_accounts(runtime)
    limits = LoginLimits(per_account=2, per_address=100, window=timedelta(minutes=15))
    typed = "my secret passphrase"  # a password typed into the name field
    assert accounts.log_in(runtime.engine, typed, "x", "10.0.0.1", limits, KEY).throttled is False
    assert accounts.log_in(runtime.engine, typed, "x", "10.0.0.2", limits, KEY).throttled is False
    assert accounts.log_in(runtime.engine, typed, "x", "10.0.0.3", limits, KEY).throttled, \
        "the per-name limit still counts an unknown name"
    assert accounts.log_in(runtime.engine, "another mistake", "x", "10.0.0.4", limits, KEY).throttled is False
    assert accounts.log_in(runtime.engine, VIEWER, "wrong password!", "10.0.0.5", limits, KEY).throttled is False
    stored = everything_stored(runtime.engine)
    assert typed not in stored and "another mistake" not in stored
    with runtime.engine.connect() as conn:
        names = list(conn.execute(select(login_failures.c.account).order_by(login_failures.c.id)).scalars())
        actors = list(conn.execute(select(admin_audit.c.actor).order_by(admin_audit.c.id)).scalars())
    assert names[0] == names[1] != names[2] and names[3] == VIEWER, "an existing account is named as it is"
    assert actors == [names[0]] * 3 + [names[2], VIEWER]


def test_logout_revokes_a_copied_session_cookie(app: Flask, runtime: Runtime) -> None:
    client = app.test_client()
    assert log_in(client, ADMIN) == 302
    cookie = client.get_cookie("gateway_console", path="/admin")
    assert cookie is not None
    copy = app.test_client()
    copy.set_cookie("gateway_console", cookie.value, path="/admin")
    assert copy.get("/admin/audit").status_code == 200
    with runtime.engine.connect() as conn:
        assert len(list(conn.execute(select(console_sessions.c.id)))) == 1
    assert cookie.value not in everything_stored(runtime.engine)
    token = csrf_token(client.get("/admin/audit").get_data(as_text=True))
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert copy.get("/admin/audit").status_code == 302, "the copied cookie ended with the logout"
    assert copy.get("/admin/api/me").status_code == 401
    with runtime.engine.connect() as conn:
        assert list(conn.execute(select(console_sessions.c.id))) == []


def test_a_new_password_ends_every_server_side_session(app: Flask, runtime: Runtime) -> None:
    first, second = app.test_client(), app.test_client()
    assert log_in(first, ADMIN) == 302 and log_in(second, ADMIN) == 302 and log_in(first, VIEWER) == 302
    with runtime.engine.begin() as conn:
        set_password(conn, ADMIN, "another long password")
        assert len(list(conn.execute(select(console_sessions.c.id)))) == 1, "only the viewer's session is left"
    assert second.get("/admin/audit").status_code == 302
    assert first.get("/admin/audit").status_code == 200


def test_an_unknown_console_url_answers_like_a_known_one_without_a_session(app: Flask) -> None:
    client = app.test_client()
    for method, url in [("GET", "/admin/xyz"), ("GET", "/admin/no/such/page"), ("POST", "/admin/xyz"),
                        ("GET", "/admin/trace/xyz"), ("DELETE", "/admin/customers")]:
        answer = client.open(url, method=method)
        assert answer.status_code == 302, (method, url)
        assert answer.headers["Location"].startswith("/admin/login"), (method, url)
    unknown_api = client.get("/admin/api/xyz")
    assert unknown_api.status_code == 401 and unknown_api.get_json() == {"error": "login required"}
    assert log_in(client, VIEWER) == 302
    assert client.get("/admin/xyz").status_code == 404
    assert client.get("/admin/api/xyz").status_code == 404
