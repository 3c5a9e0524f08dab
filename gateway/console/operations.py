"""Console pages about the machinery: dead letters (inspect, replay, discard, in bulk, as ``gateway dlq`` does),
channels and CRMs (last message, refused webhooks, errors, rate-limit buckets) and the audit log."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, flash, g, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select

from gateway.console.accounts import audit_rows
from gateway.console.app import audit
from gateway.console.channels import buckets, channel_statuses, crm_statuses
from gateway.console.payloads import body_shown, headers_shown
from gateway.console.reads import READ_ACTIONS, audit_view, target_suffixes
from gateway.storage.queues import STAGE_TABLES

_ACTIONS = {"replay": "replayed", "discard": "discarded"}
MAX_BULK = 500
_AUDIT_FILTERS = {"reads": READ_ACTIONS, "changes": ("replayed", "discarded", "merge", "unmerge",
                                                     "merge_carried_to_crm", "suggestion_rejected", "user_added",
                                                     "password_set", "user_removed"),
                  "logins": ("login", "login_failed", "login_throttled", "logout")}


def _letters(include_resolved: bool) -> list[Any]:
    return g.runtime.queues.list_dead_letters(include_resolved, limit=MAX_BULK)


def _source(letter: Any) -> dict[str, Any] | None:
    table = STAGE_TABLES[letter.stage]
    with g.runtime.engine.connect() as conn:
        row = conn.execute(select(table).where(table.c.id == letter.source_id)).first()
    if row is None:
        return None
    out = dict(row._mapping)
    if "body" in out:
        out["body"] = body_shown(out["body"], out.get("content_type") or "")
    if isinstance(out.get("headers"), dict):
        out["headers"] = headers_shown(out["headers"])
    return out


def _channels() -> tuple[list[Any], list[Any], list[Any]]:
    rt = g.runtime
    with rt.engine.connect() as conn:
        return (channel_statuses(conn, {name: cfg.type for name, cfg in rt.config.channels.items()}),
                crm_statuses(conn, {name: cfg.type for name, cfg in rt.config.crms.items()}), buckets(conn))


def register(bp: Blueprint) -> None:
    @bp.get("/dead-letters")
    def dead_letters_page() -> str:
        every = request.args.get("all") == "1"
        return render_template("console/dead_letters.html", letters=_letters(every), every=every)

    @bp.get("/api/dead-letters")
    def dead_letters_json() -> Response:
        letters = _letters(request.args.get("all") == "1")
        audit_view("api/dead-letters", "dead letters", {"count": len(letters)})
        return jsonify([{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row._mapping.items()}
                        for row in letters])

    @bp.get("/dead-letters/<int:letter_id>")
    def dead_letter_page(letter_id: int) -> str:
        letter = g.runtime.queues.get_dead_letter(letter_id)
        if letter is None:
            abort(404)
        audit_view("dead letter", f"dead letter {letter_id}")
        return render_template("console/dead_letter.html", letter=letter, source=_source(letter))

    @bp.post("/dead-letters/resolve")
    def resolve() -> Response:
        resolution = _ACTIONS.get(request.form.get("action", ""))
        ids = [int(i) for i in request.form.getlist("ids") if i.isdigit()][:MAX_BULK]
        if resolution is None or not ids:
            flash("Choose dead letters and replay or discard.", "error")
            return redirect(url_for("console.dead_letters_page"))
        done = [i for i in ids if g.runtime.queues.resolve_dead_letter(i, resolution)]
        if done:
            audit(resolution, f"dead letters {', '.join(map(str, done))}", {"ids": done})
        missing = sorted(set(ids) - set(done))
        flash(f"{len(done)} dead letter(s) {resolution}." +
              (f" Not open: {', '.join(map(str, missing))}." if missing else ""), "error" if missing else "info")
        return redirect(url_for("console.dead_letters_page"))

    @bp.get("/channels")
    def channels_page() -> str:
        channels, crms, limits = _channels()
        return render_template("console/channels.html", channels=channels, crms=crms, buckets=limits)

    @bp.get("/api/channels")
    def channels_json() -> Response:
        channels, crms, limits = _channels()
        return jsonify(
            channels=[{"name": c.name, "type": c.type, "last_received": _iso(c.last_received), "waiting": c.waiting,
                       "failed": c.failed, "open_dead_letters": c.open_dead_letters, "rejected": c.rejected,
                       "last_sent": _iso(c.last_sent), "send_failures": c.send_failures} for c in channels],
            crms=[{"name": c.name, "type": c.type, "last_delivered": _iso(c.last_delivered), "pending": c.pending,
                   "open_dead_letters": c.open_dead_letters} for c in crms],
            rate_limits=[{"name": b.name, "tokens": b.tokens, "blocked_until": _iso(b.blocked_until)}
                         for b in limits])

    @bp.get("/audit")
    def audit_page() -> str:
        before = request.args.get("before", "")
        action, actor, q = (request.args.get(name, "").strip()[:320] for name in ("action", "actor", "q"))
        with g.runtime.engine.connect() as conn:
            rows = audit_rows(conn, before=int(before) if before.isdigit() else None,
                              actions=_AUDIT_FILTERS.get(action, (action,) if action else None), actor=actor or None,
                              target_suffixes=target_suffixes(q))
        return render_template("console/audit.html", rows=rows, action=action, actor=actor, q=q,
                               filters=_AUDIT_FILTERS)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
