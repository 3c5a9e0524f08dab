"""The console in a real Chromium (Debian's package, driven by Playwright; no browser is ever downloaded): log in,
trace a message, approve a merge suggestion, replay a dead letter, and a viewer refused a change. A screenshot of
every page is saved under ``artifacts/console/`` (``GATEWAY_ARTIFACTS``) for CI to keep.

Missing Chromium is a failure, never a skip: ``scripts/test-services.sh`` installs it.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select
from werkzeug.serving import make_server

from gateway.config import load_config
from gateway.runtime import Runtime, build_runtime
from gateway.storage.tables import dead_letters, inbox, merge_suggestions
from gateway.web import create_app
from tests.conftest import BASE_CONFIG, ROOT
from tests.console_helpers import ADMIN, OTHER_PHONE, PASSWORD, PHONE, TEXT, VIEWER, Story, add_accounts, tell_story

expect.set_options(timeout=20_000)  # a busy 2-core machine: waits end as soon as the page is right
CHROMIUM = os.environ.get("GATEWAY_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("GATEWAY_ARTIFACTS", ROOT / "artifacts")) / "console"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium is required at {CHROMIUM} for the console's browser tests; "
                    "scripts/test-services.sh installs Debian's chromium package")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[str, Runtime, Story]]:
    """The gateway's Flask app served on a loopback port by a thread of this process, stopped at the end."""
    server = make_server("127.0.0.1", 0, None, threaded=True)  # type: ignore[arg-type]
    base = f"http://127.0.0.1:{server.server_port}"
    path = tmp_path / "config.yaml"
    path.write_text(BASE_CONFIG.replace("{storage_url}", f"sqlite:///{tmp_path / 'gateway.db'}")
                    .replace("https://gw.example.com", base), encoding="utf-8")
    runtime = build_runtime(load_config(path), http=requests.Session())
    add_accounts(runtime)
    story = tell_story(runtime)
    server.app = create_app(runtime)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, runtime, story
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        runtime.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def new_page(browser: Browser) -> Page:
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(20_000)
    return page


def log_in(page: Page, base: str, name: str) -> None:
    page.goto(f"{base}/admin/channels")
    expect(page).to_have_url(f"{base}/admin/login?next=/admin/channels")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base}/admin/channels")


def test_an_admin_traces_approves_and_replays(browser: Browser, console: tuple[str, Runtime, Story]) -> None:
    base, runtime, story = console
    page = new_page(browser)
    page.goto(f"{base}/admin/login")
    page.get_by_label("User name").fill(ADMIN)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    shot(page, "01-login-refused")

    log_in(page, base, ADMIN)
    expect(page.get_by_role("cell", name="sms-main", exact=True)).to_be_visible()
    shot(page, "02-channels")

    page.get_by_role("link", name="Overview").click()
    expect(page).to_have_url(f"{base}/admin/")
    day = page.get_by_role("region", name="Last 24 hours")
    expect(day.get_by_role("row").filter(has_text="sms-main (sms)").get_by_role("cell").nth(1)).to_have_text("2")
    expect(page.get_by_role("img", name="sms-main: conversations per day")).to_be_visible()
    shot(page, "02-overview")

    page.get_by_role("link", name="Message trace").click()
    page.get_by_placeholder("phone, email").fill("(401) 712-2661")
    page.get_by_role("button", name="Trace").click()
    expect(page.get_by_role("heading", name=f"Conversation {story.conversation_id}")).to_be_visible()
    expect(page.locator("blockquote")).to_have_text(TEXT)
    expect(page.get_by_text("CRM write to trial: done")).to_be_visible()
    shot(page, "03-trace")

    page.get_by_role("link", name="Customers").click()
    expect(page.get_by_role("cell", name="same name, same order number")).to_be_visible()
    shot(page, "04-suggestions")
    page.get_by_role("button", name="Approve (merge)").click()
    expect(page.get_by_role("status")).to_contain_text(f"merged into {story.customer_a}")
    expect(page.get_by_text("No open suggestions.")).to_be_visible()
    page.goto(f"{base}/admin/customers/{story.customer_a}")
    expect(page.get_by_role("cell", name=PHONE, exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name=OTHER_PHONE, exact=True)).to_be_visible()
    shot(page, "05-customer-merged")

    page.get_by_role("link", name="Dead letters").click()
    page.get_by_label(f"select {story.dead_letter_id}").check()
    shot(page, "06-dead-letters")
    page.get_by_role("button", name="Replay selected").click()
    expect(page.get_by_role("status")).to_have_text("1 dead letter(s) replayed.")
    expect(page.get_by_text("No dead letters.")).to_be_visible()
    with runtime.engine.connect() as conn:
        assert conn.execute(select(dead_letters.c.resolution)).scalar_one() == "replayed"
        assert conn.execute(select(inbox.c.status).where(inbox.c.id == story.dead_inbox_id)).scalar_one() == "pending"
        assert conn.execute(select(merge_suggestions.c.status)).scalar_one() == "merged"

    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("cell", name="replayed", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name="merge", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name="login_failed", exact=True)).to_be_visible()
    shot(page, "07-audit")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{base}/admin/login")


def test_a_viewer_is_refused_a_change(browser: Browser, console: tuple[str, Runtime, Story]) -> None:
    base, runtime, story = console
    page = new_page(browser)
    log_in(page, base, VIEWER)
    page.goto(f"{base}/admin/dead-letters/{story.dead_letter_id}")
    expect(page.get_by_role("heading", name=f"Dead letter {story.dead_letter_id}")).to_be_visible()
    expect(page.get_by_role("button", name="Replay")).to_have_count(0)
    shot(page, "08-viewer-dead-letter")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = page.request.post(f"{base}/admin/dead-letters/resolve", max_redirects=0,
                               form={"csrf_token": token or "", "ids": str(story.dead_letter_id), "action": "replay"},
                               headers={"Referer": f"{base}/admin/dead-letters"})
    assert answer.status == 403
    assert "viewers cannot change anything" in answer.text()
    with runtime.engine.connect() as conn:
        assert conn.execute(select(dead_letters.c.resolution)).scalar_one() is None
