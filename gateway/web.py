"""The Flask app: webhook ingress, health, readiness and metrics. Flask stays in this module.

Ingress only verifies, stores the raw request in the inbox and answers: 2xx after the commit, 503 only when
storage failed (so the provider retries), 4xx for anything a client sent that cannot be taken:

- Each endpoint's own body limit applies (a channel's ``max_body_bytes``, ``CRM_HOOK_MAX_BYTES``), with a length
  or sent chunked: 413 past it.
- Until a request is authenticated, an exception its content can cause (``INPUT_ERRORS``) is a 400. A 401 says
  only that the signature did not check out; why goes to the log, so a guessed name learns nothing from it.
- Once it is authenticated, a body its connector refuses (``HookRejected``) is answered as the connector says; a
  body that makes the connector fail in a way it did not foresee is stored whole as a ``request`` item and answered
  2xx: the pipeline splits it again, and quarantines it with the reason if it still fails. Nothing signed is lost.
- A name that is not a webhook channel (or a CRM taking replies) is answered as a known one is answered without a
  valid signature: 401 for a POST, 405 for a GET.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from gateway import metrics
from gateway.console.app import install_console
from gateway.errors import HookRejected, TooManyRequests, one_line
from gateway.ingest import InboxBatcher
from gateway.kpi_metrics import KpiCollector
from gateway.plugins import CRM_HOOK_MAX_BYTES, AgentReplies, WebhookChannel, largest_body
from gateway.records import REQUEST_KIND, InboxItem
from gateway.runtime import Runtime
from gateway.signing import equal
from gateway.storage.db import NotReady, check_ready
from gateway.wakeup import INBOX, Wakeup
from gateway.webhooks import Headers, HookRequest, HookResponse

log = logging.getLogger("gateway.ingress")
_STORED_HEADERS = 64
OTHER_MAX_BODY_BYTES = 64 * 1024  # any route without a limit of its own
_NEVER_STORED = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
NOT_AUTHENTICATED = "signature missing or invalid"
INPUT_ERRORS = (ValueError, TypeError, LookupError, RecursionError, OverflowError)
STORAGE_ERRORS = (SQLAlchemyError, OSError)


@dataclass(frozen=True)
class _Endpoint:
    """One webhook receiver: a channel's ``/hooks/NAME`` or a CRM's ``/crm-hooks/NAME``."""

    label: str  # the inbox connector name, and the metrics label
    url: str  # the public URL without its query
    max_bytes: int
    verify: Callable[[HookRequest], None]
    split: Callable[[HookRequest], list[InboxItem]]
    handshake: Callable[[HookRequest], HookResponse | None] = lambda _request: None
    acknowledge: Callable[[HookRequest, list[InboxItem]], HookResponse] = lambda _r, _i: HookResponse(200, b"")


def _reply(response: HookResponse) -> Response:
    return Response(response.body, status=response.status, content_type=response.content_type,
                    headers=response.headers)


def _reject(label: str, status: int, reason_code: str, reason: str) -> Response:
    metrics.REJECTED.labels(label, reason_code).inc()
    return Response(f"{reason}\n", status=status, content_type="text/plain; charset=utf-8")


def _refused(label: str, exc: HookRejected) -> Response:
    if exc.status == 401:
        log.warning("%s: rejected %s: %s", label, exc.reason_code, exc.reason)
        return _reject(label, 401, exc.reason_code, NOT_AUTHENTICATED)
    response = _reject(label, exc.status, exc.reason_code, exc.reason)
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


def _unknown(reason_code: str) -> Response:
    """What a known endpoint answers a request without a valid signature (a GET without a handshake: 405)."""
    if request.method != "POST":
        return _reject("unknown", 405, reason_code, "POST only")
    return _reject("unknown", 401, reason_code, NOT_AUTHENTICATED)


def _unavailable(label: str, what: str) -> Response:
    log.exception("%s: could not %s; answering 503 so the sender retries", label, what)
    metrics.REJECTED.labels(label, "storage").inc()
    return Response("storage unavailable, retry later\n", status=503, headers={"Retry-After": "5"})


def create_app(runtime: Runtime) -> Flask:
    app = Flask("gateway")
    batcher = InboxBatcher(runtime.queues, on_stored=Wakeup(runtime.data_dir / "locks", INBOX).notify)
    server = runtime.config.settings.server
    public_url = server.public_url
    app.config["MAX_CONTENT_LENGTH"] = OTHER_MAX_BODY_BYTES  # each webhook endpoint sets its own
    if server.max_body_bytes is not None:
        log.warning("server.max_body_bytes is no longer used: each channel's own body limit applies (README)")

    def ingest(endpoint: _Endpoint) -> Response:
        label = endpoint.label
        # one byte over the limit is read: a chunked body is cut at the reading limit without an error
        request.max_content_length = endpoint.max_bytes + 1
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            body = None
        if body is None or len(body) > endpoint.max_bytes:
            return _reject(label, 413, "too_large", f"body over {endpoint.max_bytes} bytes")
        query = request.query_string.decode("latin-1")
        hook_req = HookRequest(method=request.method, path=request.path, query_string=query,
                               headers=Headers(list(request.headers.items())), body=body,
                               public_url=endpoint.url + (f"?{query}" if query else ""),
                               remote_addr=request.remote_addr)
        try:
            handshake = endpoint.handshake(hook_req)
            if handshake is not None:
                return _reply(handshake)
            if request.method != "POST":
                return _reject(label, 405, "method", "POST only")
            endpoint.verify(hook_req)
        except HookRejected as exc:
            return _refused(label, exc)
        except STORAGE_ERRORS:
            return _unavailable(label, "check the request against storage")
        except INPUT_ERRORS as exc:
            log.warning("%s: refused a request it could not read: %s", label, one_line(f"{type(exc).__name__}: {exc}"))
            return _reject(label, 400, "malformed", f"request could not be read ({type(exc).__name__})")
        quarantined = False
        try:
            items = endpoint.split(hook_req)
        except HookRejected as exc:
            return _refused(label, exc)
        except STORAGE_ERRORS:
            return _unavailable(label, "split the request")
        except Exception as exc:
            log.warning("%s: an authentic request could not be split (%s); stored whole for the pipeline", label,
                        one_line(f"{type(exc).__name__}: {exc}"), exc_info=True)
            items = [InboxItem(f"{REQUEST_KIND}:sha256:{hashlib.sha256(body).hexdigest()}", body,
                               hook_req.headers.get("Content-Type", "")[:255], REQUEST_KIND)]
            quarantined = True
        # stored with the raw body for replays and audits: never credentials, never the query (it may hold a token)
        headers = {key: value for key, value in list(hook_req.headers.items())[:_STORED_HEADERS]
                   if key.lower() not in _NEVER_STORED}
        try:
            counted = batcher.store(label, items, headers, endpoint.url)
        except Exception:
            return _unavailable(label, f"store {len(items)} item(s)")
        if counted.stored:
            metrics.RECEIVED.labels(label).inc(counted.stored)
        if counted.duplicates:
            metrics.DUPLICATES.labels(label).inc(counted.duplicates)
        try:
            return _reply(endpoint.acknowledge(hook_req, items))
        except Exception:
            if not quarantined:
                raise
            return Response("", status=200)  # stored: the answer must not make the provider send it again

    @app.route("/hooks/<name>", methods=["GET", "POST"])
    def hook(name: str) -> Response:
        connector = runtime.channels.get(name)
        if not isinstance(connector, WebhookChannel):  # unknown, or polled (IMAP)
            return _unknown("unknown_channel")
        return ingest(_Endpoint(name, f"{public_url}/hooks/{name}", connector.max_body_bytes, connector.verify,
                                connector.split, connector.handshake, connector.acknowledge))

    @app.post("/crm-hooks/<name>")
    def crm_hook(name: str) -> Response:
        """A CRM's reply events (an agent answered): verified, stored under ``crm:NAME``, then answered 2xx."""
        crm = runtime.crms.get(name)
        if not isinstance(crm, AgentReplies):
            return _unknown("unknown_crm")
        return ingest(_Endpoint(f"crm:{name}", f"{public_url}/crm-hooks/{name}", CRM_HOOK_MAX_BYTES,
                                crm.verify_reply_hook, crm.split_reply_hook))

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", content_type="text/plain")

    @app.get("/readyz")
    def readyz() -> Response:
        """200 only when a write can commit now (and, on SQLite, there is room for two of the largest requests)."""
        try:
            check_ready(runtime.engine, min_free_bytes=2 * largest_body(type(c) for c in runtime.channels.values()))
        except NotReady as exc:
            cause = getattr(exc.__cause__, "orig", None) or exc.__cause__  # the driver's own words, without the SQL
            detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})" if cause else ""
            log.warning("not ready: %s%s", exc, detail)
            return Response(f"{exc}\n", status=503, content_type="text/plain")
        return Response("ready\n", content_type="text/plain")

    kpi_collector = KpiCollector.for_settings(runtime.engine, runtime.config.settings)

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        if server.metrics_token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not equal(given.strip(), server.metrics_token.get_secret_value()):
                return Response("bearer token required\n", status=401, content_type="text/plain; charset=utf-8",
                                headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        body, content_type = metrics.render(runtime.queues.depths, kpi_collector)
        return Response(body, content_type=content_type)

    install_console(app, runtime)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return Response(f"{exc.description}\n", status=exc.code or 400, content_type="text/plain; charset=utf-8")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.path)
        return Response("internal error, retry later\n", status=503, headers={"Retry-After": "5"})

    return app
