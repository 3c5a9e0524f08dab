"""The console over HTTP: nothing without a login, CSRF on every change, viewers read only, login limits, the audit
log, cookies, accounts from the CLI, the pages' content, and the console turned off."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select, update

from gateway.cli import main
from gateway.config import load_config
from gateway.console.accounts import set_password
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import (
    admin_audit,
    admin_users,
    crm_links,
    dead_letters,
    identities,
    inbox,
    login_failures,
    merge_suggestions,
    messages,
    provider_statuses,
    send_log,
    sends,
)
from gateway.web import create_app
from tests.conftest import BASE_CONFIG, PUBLIC_URL, TWILIO_TOKEN
from tests.console_helpers import (
    ADMIN,
    OTHER_PHONE,
    PASSWORD,
    PHONE,
    SLACK_TOKEN,
    TEXT,
    VIEWER,
    Story,
    add_accounts,
    csrf_token,
    log_in,
    tell_story,
)


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    add_accounts(runtime)
    return create_app(runtime)


@pytest.fixture
def story(runtime: Runtime) -> Story:
    return tell_story(runtime)


def audit(runtime: Runtime) -> list[tuple[str, str, str | None]]:
    with runtime.engine.connect() as conn:
        return [(r.actor, r.action, r.target) for r in conn.execute(select(admin_audit).order_by(admin_audit.c.id))]


def _sample_args(rule: str) -> str:
    return re.sub(r"<(?:int:)?([a-z_]+)>", lambda m: "1" if m.group(0).startswith("<int:") else "x", rule)


def test_every_console_url_needs_a_login_and_leaks_nothing(app: Flask, runtime: Runtime, story: Story) -> None:
    client = app.test_client()
    rules = [rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/admin")
             and rule.endpoint not in ("console.login", "console.static")]
    assert len(rules) >= 14, [r.rule for r in rules]
    secrets_and_data = [PHONE, OTHER_PHONE, "4417", story.customer_a, story.conversation_id, SLACK_TOKEN]
    for rule in rules:
        url = _sample_args(rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            answer = client.open(url, method=method, data={"ids": str(story.dead_letter_id), "action": "replay"})
            body = answer.get_data(as_text=True)
            if rule.rule.startswith("/admin/api/"):
                assert answer.status_code == 401, (method, url)
                assert answer.get_json() == {"error": "login required"}
            else:
                assert answer.status_code == 302, (method, url, answer.status_code)
                assert answer.headers["Location"].startswith("/admin/login"), (method, url)
            assert not any(value in body for value in secrets_and_data), (method, url, body)
    with runtime.engine.connect() as conn:  # the posts above changed nothing
        assert conn.execute(select(dead_letters.c.resolution)).scalar_one() is None
        assert conn.execute(select(merge_suggestions.c.status)).scalar_one() == "open"


def test_posts_without_a_csrf_token_are_refused(app: Flask, runtime: Runtime, story: Story) -> None:
    client = app.test_client()
    assert client.post("/admin/login", data={"name": ADMIN, "password": PASSWORD}).status_code == 400
    assert log_in(client, ADMIN) == 302
    for url, data in [("/admin/dead-letters/resolve", {"ids": str(story.dead_letter_id), "action": "replay"}),
                      (f"/admin/suggestions/{story.suggestion_id}/approve", {}),
                      ("/admin/dead-letters/resolve", {"ids": str(story.dead_letter_id), "action": "replay",
                                                       "csrf_token": "forged"})]:
        answer = client.post(url, data=data)
        assert answer.status_code == 400, url
        assert "CSRF" in answer.get_data(as_text=True)
    with runtime.engine.connect() as conn:
        assert conn.execute(select(dead_letters.c.resolution)).scalar_one() is None
        assert conn.execute(select(merge_suggestions.c.status)).scalar_one() == "open"


def test_a_viewer_reads_but_cannot_change_anything(app: Flask, runtime: Runtime, story: Story) -> None:
    client = app.test_client()
    assert log_in(client, VIEWER) == 302
    page = client.get("/admin/dead-letters").get_data(as_text=True)
    assert "could not read the event" in page and "Replay selected" not in page
    assert "Approve" not in client.get("/admin/customers").get_data(as_text=True)
    token = csrf_token(page)
    for url, data in [("/admin/dead-letters/resolve", {"ids": str(story.dead_letter_id), "action": "discard"}),
                      (f"/admin/suggestions/{story.suggestion_id}/approve", {}),
                      (f"/admin/suggestions/{story.suggestion_id}/reject", {}),
                      ("/admin/customers/merge", {"survivor": story.customer_a, "absorbed": story.customer_b,
                                                  "reason": "same"}),
                      ("/admin/merges/1/undo", {})]:
        assert client.post(url, data={**data, "csrf_token": token}).status_code == 403, url
    with runtime.engine.connect() as conn:
        assert conn.execute(select(dead_letters.c.resolution)).scalar_one() is None
        assert conn.execute(select(merge_suggestions.c.status)).scalar_one() == "open"
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin/trace").status_code == 302


def test_admin_actions_work_and_are_audited(app: Flask, runtime: Runtime, story: Story) -> None:
    client = app.test_client()
    assert log_in(client, ADMIN) == 302
    token = csrf_token(client.get("/admin/dead-letters").get_data(as_text=True))
    answer = client.post("/admin/dead-letters/resolve",
                         data={"ids": [str(story.dead_letter_id), "999"], "action": "replay", "csrf_token": token})
    assert answer.status_code == 302
    assert "1 dead letter(s) replayed. Not open: 999." in client.get("/admin/dead-letters").get_data(as_text=True)
    with runtime.engine.connect() as conn:
        assert conn.execute(select(dead_letters.c.resolution)).scalar_one() == "replayed"
        assert conn.execute(select(inbox.c.status).where(inbox.c.id == story.dead_inbox_id)).scalar_one() == "pending"
    client.post(f"/admin/suggestions/{story.suggestion_id}/approve", data={"csrf_token": token})
    page = client.get(f"/admin/customers/{story.customer_a}").get_data(as_text=True)
    assert OTHER_PHONE in page and PHONE in page and "console:ann" in page
    undo_forms = re.findall(r"/admin/merges/(\d+)/undo", page)
    assert len(undo_forms) == 1, "the merge is listed once, though it names two customers of the family"
    merge_id = int(undo_forms[0])
    client.post(f"/admin/merges/{merge_id}/undo", data={"csrf_token": token, "reason": "two people after all"})
    page = client.get(f"/admin/customers/{story.customer_a}").get_data(as_text=True)
    assert page.split("<h2>Merges")[0].count("<td>phone</td>") == 1, "the other customer has its number back"
    assert [(actor, action) for actor, action, _target in audit(runtime)] == [
        (ADMIN, "login"), (ADMIN, "replayed"), (ADMIN, "merge"), (ADMIN, "view"), (ADMIN, "unmerge"),
        (ADMIN, "view")]  # the customer page, read twice
    assert audit(runtime)[1][2] == f"dead letters {story.dead_letter_id}"
    audit_page = client.get("/admin/audit").get_data(as_text=True)
    assert "unmerge" in audit_page and "replayed" in audit_page


def test_failed_logins_are_limited_per_account_and_per_address_across_processes(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    text = BASE_CONFIG + "console: {max_failures_per_account: 3, max_failures_per_address: 5}\n"
    path = write_config(text)
    first, second = (build_runtime(load_config(path), http=requests.Session()) for _ in range(2))
    try:
        add_accounts(first)
        one, two = create_app(first).test_client(), create_app(second).test_client()
        for client in (one, two, one):
            assert log_in(client, ADMIN, "wrong password!") == 401
        assert log_in(two, ADMIN) == 429, "three failures in two processes: the right password is refused too"
        assert log_in(one, VIEWER, "wrong password!") == 401
        assert log_in(one, "nobody", "wrong password!") == 401
        assert log_in(two, VIEWER) == 429, "five failures from this address"
        with first.engine.begin() as conn:  # the window passes
            conn.execute(update(login_failures).values(at=utcnow() - timedelta(minutes=16)))
        assert log_in(two, ADMIN) == 302
        actions = [action for _actor, action, _target in audit(first)]
        assert actions.count("login_failed") == 5 and actions.count("login_throttled") == 2
        assert actions[-1] == "login"
    finally:
        first.close()
        second.close()


def test_cookie_flags_and_security_headers(app: Flask, write_config: Callable[..., Path], tmp_path: Path) -> None:
    client = app.test_client()
    login = client.get("/admin/login")
    assert login.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in \
        login.headers["Content-Security-Policy"]
    token = csrf_token(login.get_data(as_text=True))
    answer = client.post("/admin/login", data={"name": ADMIN, "password": PASSWORD, "csrf_token": token})
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("gateway_console=")
    assert {"Secure", "HttpOnly", "Path=/admin", "SameSite=Lax"} <= {p.strip() for p in cookie.split(";")}
    plain_config = write_config(BASE_CONFIG.replace(PUBLIC_URL, "http://127.0.0.1:8080"), name="plain.yaml",
                                storage_url=f"sqlite:///{tmp_path / 'plain.db'}")
    plain = build_runtime(load_config(plain_config), http=requests.Session())
    try:
        add_accounts(plain)
        over_http = create_app(plain).test_client()
        token = csrf_token(over_http.get("/admin/login").get_data(as_text=True))
        answer = over_http.post("/admin/login", data={"name": ADMIN, "password": PASSWORD, "csrf_token": token})
        assert answer.status_code == 302 and "Secure" not in answer.headers["Set-Cookie"]
        over_https = create_app(plain).test_client()
        token = csrf_token(over_https.get("/admin/login", base_url="https://localhost").get_data(as_text=True))
        secure = over_https.post("/admin/login", base_url="https://localhost",
                                 headers={"Referer": "https://localhost/admin/login"},
                                 data={"name": ADMIN, "password": PASSWORD, "csrf_token": token})
        assert "Secure" in secure.headers["Set-Cookie"]
    finally:
        plain.close()
    assert "Set-Cookie" not in app.test_client().get("/healthz").headers


def test_a_session_ends_when_the_password_changes(app: Flask, runtime: Runtime) -> None:
    client = app.test_client()
    assert log_in(client, ADMIN) == 302
    assert client.get("/admin/audit").status_code == 200
    with runtime.engine.begin() as conn:
        set_password(conn, ADMIN, "another long password")
    assert client.get("/admin/audit").status_code == 302
    assert client.get("/admin/api/me").status_code == 401


def test_login_never_redirects_off_the_console(app: Flask) -> None:
    client = app.test_client()
    for target in ("//evil.example/x", "https://evil.example/", "/admin\\@evil.example"):
        token = csrf_token(client.get("/admin/login").get_data(as_text=True))
        answer = client.post(f"/admin/login?next={target}",
                             data={"name": ADMIN, "password": PASSWORD, "csrf_token": token})
        assert answer.headers["Location"] == "/admin/", target


def test_add_user_from_the_cli_stores_an_argon2_hash(write_config: Callable[..., Path]) -> None:
    path = write_config()
    runner = CliRunner()
    result = runner.invoke(main, ["admin", "add-user", "lead", "--role", "viewer", "--password-stdin", "-c", str(path)],
                           input="a long enough password\n")
    assert result.exit_code == 0, result.output
    short = runner.invoke(main, ["admin", "add-user", "x", "--role", "admin", "--password-stdin", "-c", str(path)],
                          input="short\n")
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    again = runner.invoke(main, ["admin", "add-user", "lead", "--role", "admin", "--password-stdin", "-c", str(path)],
                          input="a long enough password\n")
    assert again.exit_code == 1 and "exists" in again.output
    listed = runner.invoke(main, ["admin", "users", "-c", str(path)])
    assert "lead" in listed.output and "viewer" in listed.output
    runtime = build_runtime(load_config(path), http=requests.Session())
    try:
        with runtime.engine.connect() as conn:
            stored = conn.execute(select(admin_users.c.password_hash)).scalar_one()
        assert stored.startswith("$argon2id$") and "a long enough password" not in stored
        client = create_app(runtime).test_client()
        assert log_in(client, "lead", "a long enough password") == 302
        assert [action for _actor, action, _target in audit(runtime)] == ["user_added", "login"]
        changed = runner.invoke(main, ["admin", "set-password", "lead", "--password-stdin", "-c", str(path)],
                                input="a different long password\n")
        assert changed.exit_code == 0, changed.output
        assert client.get("/admin/trace").status_code == 302, "a new password ends the sessions"
        assert log_in(client, "lead", "a different long password") == 302
        removed = runner.invoke(main, ["admin", "remove-user", "lead", "-c", str(path)])
        assert removed.exit_code == 0, removed.output
        assert client.get("/admin/trace").status_code == 302, "a removed account's session ends"
        assert [action for _actor, action, _target in audit(runtime)][2:] == [
            "password_set", "login", "user_removed"]
    finally:
        runtime.close()


def test_trace_follows_a_message_from_the_inbox_to_the_crm(app: Flask, story: Story) -> None:
    client = app.test_client()
    log_in(client, VIEWER)
    for query in ("(401) 712-2661", PHONE, story.conversation_id, story.message_id, "SM" + "a" * 32):
        page = client.get("/admin/trace", query_string={"q": query}).get_data(as_text=True)
        assert f"Conversation {story.conversation_id}" in page, query
        assert TEXT in page and "inbox row" in page and f"message {story.message_id}" in page
        assert "CRM write to trial: done" in page and "attempt 1: delivered" in page
    answer = client.get("/admin/api/trace", query_string={"q": PHONE}).get_json()
    assert answer["conversations"][0]["messages"][0]["crm_writes"] == {"trial": "done"}
    assert "Nothing matches" in client.get("/admin/trace?q=%2B19998887777").get_data(as_text=True)


def test_the_overview_is_the_landing_page_with_the_kpis(app: Flask, story: Story) -> None:
    client = app.test_client()
    token = csrf_token(client.get("/admin/login").get_data(as_text=True))
    answer = client.post("/admin/login", data={"name": VIEWER, "password": PASSWORD, "csrf_token": token})
    assert answer.headers["Location"] == "/admin/"
    page = client.get("/admin/").get_data(as_text=True)
    assert 'aria-current="page">Overview</a>' in page and 'href="/admin/trace"' in page
    day = page.split('aria-label="Last 24 hours"')[1].split("</section>")[0]
    assert re.search(r"<td>sms-main <small>\(sms\)</small></td>\s*<td class=\"n\">2</td>", day), day
    assert "<svg" in page and "sms-main: conversations per day" in page and "<script" not in page
    periods = client.get("/admin/api/kpis").get_json()["periods"]
    week = periods["Last 7 days"]
    assert [(c["channel"], c["connector"], c["conversations"], c["messages_in"]) for c in week["channels"]] == [
        ("sms", "sms-main", 2, 2)]
    assert week["dead_letters"] == {"new": {"sms-main": 1}, "open": {"sms-main": 1}}
    assert {row["language"] for row in week["languages"]} <= {"en", "und"}


def test_pages_show_no_secret(app: Flask, story: Story) -> None:
    client = app.test_client()
    log_in(client, ADMIN)
    pages = ["/admin/channels", "/admin/api/channels", f"/admin/dead-letters/{story.dead_letter_id}",
             "/admin/dead-letters", "/admin/audit", f"/admin/trace?q={PHONE}"]
    for url in pages:
        body = client.get(url).get_data(as_text=True)
        assert TWILIO_TOKEN not in body and SLACK_TOKEN not in body and PASSWORD not in body, url
    letter = client.get(f"/admin/dead-letters/{story.dead_letter_id}").get_data(as_text=True)
    assert "event_callback" in letter and "could not read the event" in letter
    channels = client.get("/admin/channels").get_data(as_text=True)
    assert "sms-main" in channels and "twilio" in channels and "trial" in channels


def test_console_turned_off_answers_404_and_webhooks_still_work(write_config: Callable[..., Path]) -> None:
    runtime = build_runtime(load_config(write_config(BASE_CONFIG + "console: {enabled: false}\n")),
                            http=requests.Session())
    try:
        add_accounts(runtime)
        client = create_app(runtime).test_client()
        for url in ("/admin", "/admin/", "/admin/login", "/admin/trace", "/admin/api/me"):
            assert client.get(url).status_code == 404, url
        assert client.post("/admin/login", data={"name": ADMIN, "password": PASSWORD}).status_code == 404
        request = runtime.channels["sms-main"].sample_request(
            sender=PHONE, text="still here", recipient=None, public_url=f"{PUBLIC_URL}/hooks/sms-main")
        answer = client.post("/hooks/sms-main", data=request.body, headers=list(request.headers.items()))
        assert answer.status_code == 200
        with runtime.engine.connect() as conn:
            assert conn.execute(select(inbox.c.id)).first() is not None
    finally:
        runtime.close()


def test_trace_shows_a_reply_its_send_and_the_providers_statuses(app: Flask, runtime: Runtime, story: Story) -> None:
    """An agent's reply as the send queue leaves it: sent, then reported delivered and later failed by Twilio."""
    now = utcnow()
    with runtime.engine.begin() as conn:
        reply_inbox = conn.execute(inbox.insert().values(
            connector="crm:trial", provider_id="reply-1", kind="message", content_type="application/json",
            headers={}, body=b"{}", public_url=f"{PUBLIC_URL}/crm-hooks/trial", received_at=now, status="done",
            attempts=1, available_at=now)).inserted_primary_key[0]
        customer = conn.execute(select(messages.c.customer_id).where(messages.c.id == story.message_id)).scalar_one()
        conn.execute(messages.insert().values(
            id="r" * 32, inbox_id=reply_inbox, connector="sms-main", provider_message_id="reply-1",
            customer_id=customer, conversation_id=story.conversation_id, thread_rule="reply", direction="outbound",
            data={"channel": "sms", "text": "It ships today.", "sender": {"display_name": "Agent Smith",
                                                                          "identifiers": []}},
            received_at=now + timedelta(minutes=1), created_at=now))
        send_id = conn.execute(sends.insert().values(
            message_id="r" * 32, channel="sms-main", conversation_id=story.conversation_id, crm="trial",
            status="sent", attempts=1, available_at=now, provider_message_id="SM" + "c" * 32, created_at=now,
            sent_at=now)).inserted_primary_key[0]
        conn.execute(send_log.insert().values(send_id=send_id, channel="sms-main", attempt=1, outcome="sent",
                                              provider_message_id="SM" + "c" * 32, duration_ms=12.0, created_at=now))
        for status, code in (("delivered", None), ("undelivered", "30003")):
            conn.execute(provider_statuses.insert().values(
                connector="sms-main", provider_message_id="SM" + "c" * 32, status=status, error_code=code,
                occurred_at=now, extras={}, inbox_id=reply_inbox))
    client = app.test_client()
    log_in(client, VIEWER)
    page = client.get("/admin/trace", query_string={"q": PHONE}).get_data(as_text=True)
    assert page.index(TEXT) < page.index("It ships today.")
    assert "Reply by\n        Agent Smith" in page
    assert f"Send on sms-main: sent, provider id SM{'c' * 32}" in page
    assert "Provider status: delivered" in page and "Provider status: undelivered" in page
    assert "status undelivered: error 30003" in page  # among the errors


@pytest.mark.postgres
def test_accounts_limits_and_audit_on_postgresql(write_config: Callable[..., Path], postgres_url: str) -> None:
    path = write_config(BASE_CONFIG + "console: {max_failures_per_account: 2}\n", storage_url=postgres_url)
    first, second = (build_runtime(load_config(path), http=requests.Session()) for _ in range(2))
    try:
        add_accounts(first)
        one, two = create_app(first).test_client(), create_app(second).test_client()
        assert log_in(one, ADMIN, "wrong password!") == 401
        assert log_in(two, ADMIN, "wrong password!") == 401
        assert log_in(one, ADMIN) == 429
        assert log_in(two, VIEWER) == 302
        assert two.get("/admin/audit").status_code == 200
        assert [action for _actor, action, _target in audit(second)] == [
            "login_failed", "login_failed", "login_throttled", "login"]
    finally:
        first.close()
        second.close()


def test_a_session_lasts_session_hours_from_the_login(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.console.app as console_app

    client = app.test_client()
    assert log_in(client, ADMIN) == 302
    logged_in = console_app.time.time()

    class Clock:
        now = logged_in + 12 * 3600 - 5

        def time(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr(console_app, "time", clock)
    assert client.get("/admin/audit").status_code == 200, "still within the 12 hours, however active"
    clock.now = logged_in + 12 * 3600 + 1
    assert client.get("/admin/audit").status_code == 302


def test_trace_finds_a_conversation_by_slack_id_and_by_ticket(app: Flask, runtime: Runtime, story: Story) -> None:
    with runtime.engine.begin() as conn:
        customer = conn.execute(select(messages.c.customer_id).where(messages.c.id == story.message_id)).scalar_one()
        conn.execute(identities.insert().values(kind="slack", value="T0TEAM:U0ASHA42", customer_id=customer,
                                                evidence="same_identifier", created_at=utcnow()))
        conn.execute(crm_links.insert().values(crm="zendesk-main", entity="conversation",
                                               local_id=story.conversation_id, remote_id="4711", data={},
                                               updated_at=utcnow()))
    client = app.test_client()
    log_in(client, VIEWER)
    for query in ("U0ASHA42", "slack:T0TEAM:U0ASHA42", "4711"):
        page = client.get("/admin/trace", query_string={"q": query}).get_data(as_text=True)
        assert f"Conversation {story.conversation_id}" in page, query
        assert "zendesk-main ticket <strong>4711</strong>" in page
