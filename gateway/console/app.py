"""The console on the gateway's Flask app: sessions, CSRF, logins, and the guard in front of every ``/admin`` URL.

- Every URL under ``/admin`` except the login page and the stylesheet needs a session: pages redirect to the login
  page (302), ``/admin/api/...`` answers 401 in JSON, unknown URLs too (no list of pages to probe for). Nothing else
  is said before a login.
- Anything but GET needs the ``admin`` role (403 for a viewer) and a CSRF token (400 without one).
- The session is a signed cookie (``gateway_console``, path ``/admin``, HttpOnly, SameSite=Lax, Secure when
  ``server.public_url`` is https or the request came over https) holding a random session token whose server-side
  row (``console_sessions``) a logout, a new password or a removed account deletes; it lasts
  ``console.session_hours`` from the login.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, abort, g, jsonify, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import Forbidden

from gateway.console.accounts import LoginLimits, end_session, log_in, purge_sessions, record, session_account
from gateway.privacy import install_key
from gateway.redact import redact
from gateway.runtime import Runtime

SESSION_KEY_FILE = Path("secrets") / "console-session.key"
COOKIE = "gateway_console"
_OPEN_ENDPOINTS = frozenset({"console.login", "console.static"})
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class _SessionInterface(SecureCookieSessionInterface):
    """Secure cookies behind an https public URL, and for any request that itself came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def install_console(app: Flask, runtime: Runtime) -> None:
    """Serve the console at ``/admin`` unless ``console.enabled`` is false (then ``/admin`` is a 404)."""
    settings = runtime.config.settings
    console = settings.console
    if not console.enabled:
        return
    secret = console.session_secret
    lifetime = timedelta(hours=console.session_hours)  # from the login, however active the session
    app.secret_key = install_key(runtime.data_dir, secret.get_secret_value() if secret else None, SESSION_KEY_FILE)
    app.session_interface = _SessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE, SESSION_COOKIE_PATH="/admin", SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=settings.server.public_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=lifetime,
        WTF_CSRF_CHECK_DEFAULT=False,  # webhooks are not forms: only the console's views are checked
        WTF_CSRF_TIME_LIMIT=None,  # a token lasts as long as its session
    )
    csrf = CSRFProtect(app)
    limits = LoginLimits(console.max_failures_per_account, console.max_failures_per_address,
                         timedelta(minutes=console.failure_window_minutes))
    blueprint = Blueprint("console", __name__, url_prefix="/admin", template_folder="templates",
                          static_folder="static", static_url_path="/static")

    @blueprint.before_request
    def guard() -> Response | None:
        g.runtime = runtime
        g.account = None
        if "sid" in session or "uid" in session:
            if "sid" in session and time.time() - float(session.get("at", 0)) < lifetime.total_seconds():
                with runtime.engine.connect() as conn:
                    g.account = session_account(conn, str(session["sid"]), lifetime)
            if g.account is None:
                session.clear()
        if request.endpoint in _OPEN_ENDPOINTS:
            if request.method == "POST":
                csrf.protect()
            return None
        if g.account is None:
            if request.path.startswith("/admin/api/"):
                return Response('{"error": "login required"}\n', status=401, content_type="application/json")
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        if request.method not in ("GET", "HEAD"):
            if not g.account.is_admin and request.endpoint != "console.logout":
                raise Forbidden("viewers cannot change anything")
            csrf.protect()
        return None

    @blueprint.after_request
    def headers(response: Response) -> Response:
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @blueprint.app_template_filter("masked")
    def masked(text: Any) -> str:
        return redact(str(text)) if text else ""

    @blueprint.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        error = None
        status = 200
        if request.method == "POST":
            result = log_in(runtime.engine, request.form.get("name", ""), request.form.get("password", ""),
                            request.remote_addr or "-", limits, runtime.config.privacy_key)
            if result.account is not None:
                with runtime.engine.begin() as conn:
                    purge_sessions(conn, lifetime)
                session.clear()  # a new session: nothing from before the login carries over
                session.permanent = True
                session.update(sid=result.session, at=time.time())
                return redirect(_safe_next(request.args.get("next")))
            status = 429 if result.throttled else 401
            error = ("Too many failed logins: wait a few minutes and try again." if result.throttled
                     else "Wrong user name or password.")
        return render_template("console/login.html", error=error), status

    @blueprint.post("/logout")
    def logout() -> Response:
        with runtime.engine.begin() as conn:
            end_session(conn, str(session["sid"]))
            record(conn, g.account.name, "logout", None, {}, request.remote_addr)
        session.clear()
        return redirect(url_for("console.login"))

    @blueprint.get("/api/me")
    def me() -> Response:
        return jsonify(name=g.account.name, role=g.account.role)

    @blueprint.route("/<path:unknown>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def unknown(unknown: str) -> NoReturn:
        """Reached only after the guard: without a session an unknown URL is answered like a known one."""
        abort(404)

    from gateway.console import operations, overview, pages

    overview.register(blueprint)  # the landing page, /admin/
    pages.register(blueprint)
    operations.register(blueprint)
    app.register_blueprint(blueprint)


def _safe_next(target: str | None) -> str:
    """Only a path inside the console: never another site (an open redirect)."""
    if target and target.startswith("/admin") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and "\\" not in target:
            return target
    return url_for("console.overview_page")


def audit(action: str, target: str | None, detail: dict[str, Any] | None = None, conn: Any = None) -> None:
    """Record an admin action by the logged-in account (in ``conn``'s transaction when given)."""
    if conn is not None:
        record(conn, g.account.name, action, target, detail or {}, request.remote_addr)
        return
    with g.runtime.engine.begin() as own:
        record(own, g.account.name, action, target, detail or {}, request.remote_addr)
