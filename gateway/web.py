"""The Flask app: webhook ingress, health, readiness and metrics. Flask stays in this module.

Ingress only verifies, stores the raw request in the inbox and answers: 2xx after the commit, 503 when storage
failed (so the provider retries), 4xx with a short reason for bad input, never a 500 for anything a client sent.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from gateway import metrics
from gateway.errors import HookRejected, PayloadTooLarge
from gateway.ingest import InboxBatcher
from gateway.plugins import AgentReplies, WebhookChannel
from gateway.runtime import Runtime
from gateway.storage.db import NotReady, check_ready
from gateway.webhooks import Headers, HookRequest, HookResponse

log = logging.getLogger("gateway.ingress")
_STORED_HEADERS = 64
CRM_HOOK_MAX_BYTES = 256 * 1024
_NEVER_STORED = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


def _reply(response: HookResponse) -> Response:
    return Response(response.body, status=response.status, content_type=response.content_type,
                    headers=response.headers)


def _reject(channel: str, status: int, reason_code: str, reason: str) -> Response:
    metrics.REJECTED.labels(channel, reason_code).inc()
    return Response(f"{reason}\n", status=status, content_type="text/plain; charset=utf-8")


def create_app(runtime: Runtime) -> Flask:
    app = Flask("gateway")
    batcher = InboxBatcher(runtime.queues)
    public_url = runtime.config.settings.server.public_url
    app.config["MAX_CONTENT_LENGTH"] = runtime.config.settings.server.max_body_bytes

    def hook_request(name: str, body: bytes) -> HookRequest:
        query = request.query_string.decode("latin-1")
        url = f"{public_url}/hooks/{name}" + (f"?{query}" if query else "")
        return HookRequest(method=request.method, path=request.path, query_string=query,
                           headers=Headers(list(request.headers.items())), body=body, public_url=url,
                           remote_addr=request.remote_addr)

    @app.route("/hooks/<name>", methods=["GET", "POST"])
    def hook(name: str) -> Response:
        connector = runtime.channels.get(name)
        if connector is None:
            return _reject("unknown", 404, "unknown_channel", f"no channel named {name!r}")
        if not isinstance(connector, WebhookChannel):
            return _reject(name, 404, "unknown_channel", f"channel {name!r} is polled and takes no webhooks")
        try:
            length = request.content_length
            if length is not None and length > connector.max_body_bytes:
                raise PayloadTooLarge(f"body over {connector.max_body_bytes} bytes")
            body = request.get_data(cache=False)
            if len(body) > connector.max_body_bytes:
                raise PayloadTooLarge(f"body over {connector.max_body_bytes} bytes")
            hook_req = hook_request(name, body)
            handshake = connector.handshake(hook_req)
            if handshake is not None:
                return _reply(handshake)
            if request.method != "POST":
                return _reject(name, 405, "method", "POST only")
            connector.verify(hook_req)
            items = connector.split(hook_req)
        except RequestEntityTooLarge:
            return _reject(name, 413, "too_large", "body too large")
        except HookRejected as exc:
            if exc.status == 401:
                log.warning("%s: rejected %s: %s", name, exc.reason_code, exc.reason)
            return _reject(name, exc.status, exc.reason_code, exc.reason)
        # stored with the raw body for replays and audits: never credentials, never the query (it may hold a token)
        headers = {key: value for key, value in list(hook_req.headers.items())[:_STORED_HEADERS]
                   if key.lower() not in _NEVER_STORED}
        try:
            counted = batcher.store(name, items, headers, f"{public_url}/hooks/{name}")
        except Exception:
            log.exception("%s: could not store %d item(s); answering 503 so the provider retries", name, len(items))
            metrics.REJECTED.labels(name, "storage").inc()
            return Response("storage unavailable, retry later\n", status=503, headers={"Retry-After": "5"})
        if counted.stored:
            metrics.RECEIVED.labels(name).inc(counted.stored)
        if counted.duplicates:
            metrics.DUPLICATES.labels(name).inc(counted.duplicates)
        return _reply(connector.acknowledge(hook_req, items))

    @app.post("/crm-hooks/<name>")
    def crm_hook(name: str) -> Response:
        """A CRM's reply events (an agent answered): verified, stored under ``crm:NAME``, then answered 2xx."""
        crm = runtime.crms.get(name)
        label = f"crm:{name}"
        if not isinstance(crm, AgentReplies):
            return _reject("unknown", 404, "unknown_crm", f"no crm named {name!r} takes agent replies")
        try:
            length = request.content_length
            if length is not None and length > CRM_HOOK_MAX_BYTES:
                raise PayloadTooLarge(f"body over {CRM_HOOK_MAX_BYTES} bytes")
            body = request.get_data(cache=False)
            if len(body) > CRM_HOOK_MAX_BYTES:
                raise PayloadTooLarge(f"body over {CRM_HOOK_MAX_BYTES} bytes")
            query = request.query_string.decode("latin-1")
            hook_req = HookRequest(
                method=request.method, path=request.path, query_string=query,
                headers=Headers(list(request.headers.items())), body=body,
                public_url=f"{public_url}/crm-hooks/{name}" + (f"?{query}" if query else ""),
                remote_addr=request.remote_addr)
            crm.verify_reply_hook(hook_req)
            items = crm.split_reply_hook(hook_req)
        except RequestEntityTooLarge:
            return _reject(label, 413, "too_large", "body too large")
        except HookRejected as exc:
            if exc.status == 401:
                log.warning("%s: rejected %s: %s", label, exc.reason_code, exc.reason)
            return _reject(label, exc.status, exc.reason_code, exc.reason)
        headers = {key: value for key, value in list(hook_req.headers.items())[:_STORED_HEADERS]
                   if key.lower() not in _NEVER_STORED}
        try:
            counted = batcher.store(label, items, headers, f"{public_url}/crm-hooks/{name}")
        except Exception:
            log.exception("%s: could not store %d event(s); answering 503 so the CRM retries", label, len(items))
            metrics.REJECTED.labels(label, "storage").inc()
            return Response("storage unavailable, retry later\n", status=503, headers={"Retry-After": "5"})
        if counted.stored:
            metrics.RECEIVED.labels(label).inc(counted.stored)
        if counted.duplicates:
            metrics.DUPLICATES.labels(label).inc(counted.duplicates)
        return Response("", status=200)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", content_type="text/plain")

    @app.get("/readyz")
    def readyz() -> Response:
        """200 only when a write can commit now (and, on SQLite, there is room for two of the largest requests)."""
        try:
            check_ready(runtime.engine, min_free_bytes=2 * runtime.config.settings.server.max_body_bytes)
        except NotReady as exc:
            cause = getattr(exc.__cause__, "orig", None) or exc.__cause__  # the driver's own words, without the SQL
            detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})" if cause else ""
            log.warning("not ready: %s%s", exc, detail)
            return Response(f"{exc}\n", status=503, content_type="text/plain")
        return Response("ready\n", content_type="text/plain")

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        body, content_type = metrics.render(runtime.queues.depths)
        return Response(body, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return Response(f"{exc.description}\n", status=exc.code or 400, content_type="text/plain; charset=utf-8")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.path)
        return Response("internal error, retry later\n", status=503, headers={"Retry-After": "5"})

    return app
