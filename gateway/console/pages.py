"""Console pages about people and their messages: the message trace and customers (identifiers and their
evidence, merges and their undoing, merge suggestions). Merges go through the same functions as
``gateway customers``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, flash, g, jsonify, redirect, render_template, request, url_for

from gateway.cli_customers import (
    _find_ids,
    admin_merge,
    approve_suggestion,
    carry_to_crm,
    describe,
    reject_suggestion,
)
from gateway.console.app import audit
from gateway.console.reads import audit_search, audit_view
from gateway.console.trace import Trace, trace
from gateway.identity.merges import MergeError, open_suggestions, unmerge
from gateway.storage.tables import customers


def _region() -> str:
    return str(g.runtime.config.settings.identity.default_region)


def _trace(page: str) -> Trace:
    query = request.args.get("q", "")[:320]
    with g.runtime.engine.connect() as conn:
        found = trace(conn, query, _region())
    audit_search(page, query, len(found.conversations) + len(found.unprocessed))
    return found


def _after_merge(merge_id: int, survivor: str, absorbed: str) -> None:
    """Once the local merge (and its audit row) has committed: the CRMs' contacts too, where configured."""
    carried = carry_to_crm(g.runtime, survivor, absorbed) \
        if g.runtime.config.settings.identity.carry_merges_to_crm else []
    if carried:
        audit("merge_carried_to_crm", f"merge {merge_id}", {"crm": carried})
    flash(f"Merge {merge_id}: {absorbed} merged into {survivor}." + "".join(f" {c}." for c in carried))


def register(bp: Blueprint) -> None:
    @bp.get("/trace")
    def trace_page() -> str:
        return render_template("console/trace.html", result=_trace("trace"), q=request.args.get("q", ""))

    @bp.get("/api/trace")
    def trace_json() -> Response:
        result = _trace("api/trace")
        return jsonify(query=result.query, conversations=[{
            "id": c.conversation.id, "customer": c.conversation.customer_id, "channel": c.conversation.channel,
            "tickets": c.tickets,
            "messages": [{"id": j.message.id, "direction": j.message.direction, "connector": j.message.connector,
                          "received_at": j.message.received_at.isoformat(),
                          "inbox": j.inbox.status if j.inbox is not None else None,
                          "crm_writes": {w.crm: w.status for w, _log in j.writes},
                          "send": j.send.status if j.send is not None else None,
                          "statuses": [s.status for s in j.statuses], "errors": j.errors}
                         for j in c.journeys]} for c in result.conversations])

    @bp.get("/customers")
    def customers_page() -> str:
        q = request.args.get("q", "").strip()[:320]
        with g.runtime.engine.connect() as conn:
            found = [describe(conn, cid) for cid in _find_ids(conn, q, _region())[:50]] if q else []
            suggestions = open_suggestions(conn)
            names = _names(conn, [cid for row in suggestions for cid in (row.customer_a, row.customer_b)])
        audit_search("customers", q, len(found))
        return render_template("console/customers.html", q=q, found=found, suggestions=suggestions, names=names)

    @bp.get("/customers/<customer_id>")
    def customer_page(customer_id: str) -> str:
        with g.runtime.engine.connect() as conn:
            if conn.execute(customers.select().where(customers.c.id == customer_id)).first() is None:
                abort(404)
            info = describe(conn, customer_id)
        audit_view("customer", f"customer {customer_id}")
        return render_template("console/customer.html", c=info)

    @bp.post("/customers/merge")
    def merge() -> Response:
        survivor, absorbed = request.form.get("survivor", "").strip(), request.form.get("absorbed", "").strip()
        reason = request.form.get("reason", "").strip()
        if not reason:
            flash("Say why they are one person: the reason is kept with the merge.", "error")
            return redirect(url_for("console.customer_page", customer_id=survivor or absorbed))
        try:
            with g.runtime.engine.begin() as conn:
                merge_id, a, b = admin_merge(conn, survivor, absorbed, reason, f"console:{g.account.name}")
                audit("merge", f"merge {merge_id}", {"reason": reason, "survivor": a, "absorbed": b}, conn)
        except MergeError as exc:
            flash(str(exc), "error")
            return redirect(url_for("console.customers_page"))
        _after_merge(merge_id, a, b)
        return redirect(url_for("console.customer_page", customer_id=a))

    @bp.post("/merges/<int:merge_id>/undo")
    def undo_merge(merge_id: int) -> Response:
        reason = request.form.get("reason", "").strip() or None
        try:
            with g.runtime.engine.begin() as conn:
                result = unmerge(conn, merge_id, reason)
                audit("unmerge", f"merge {merge_id}", {"reason": reason, **_plain(result)}, conn)
        except MergeError as exc:
            flash(str(exc), "error")
            return redirect(url_for("console.customers_page"))
        flash(f"Merge {merge_id} undone: {result['restored']} has its {result['identities']} identifier(s) back.")
        return redirect(url_for("console.customer_page", customer_id=result["restored"]))

    @bp.post("/suggestions/<int:suggestion_id>/approve")
    def approve(suggestion_id: int) -> Response:
        try:
            with g.runtime.engine.begin() as conn:
                merge_id, a, b = approve_suggestion(conn, suggestion_id, f"console:{g.account.name}")
                audit("merge", f"merge {merge_id}", {"suggestion": suggestion_id, "survivor": a, "absorbed": b},
                      conn)
        except MergeError as exc:
            flash(str(exc), "error")
            return redirect(url_for("console.customers_page"))
        _after_merge(merge_id, a, b)
        return redirect(url_for("console.customers_page"))

    @bp.post("/suggestions/<int:suggestion_id>/reject")
    def reject(suggestion_id: int) -> Response:
        with g.runtime.engine.begin() as conn:
            if reject_suggestion(conn, suggestion_id):
                audit("suggestion_rejected", f"suggestion {suggestion_id}", {}, conn)
                flash(f"Suggestion {suggestion_id} rejected.")
            else:
                flash(f"No open suggestion {suggestion_id}.", "error")
        return redirect(url_for("console.customers_page"))


def _names(conn: Any, ids: list[str]) -> dict[str, str | None]:
    return dict(conn.execute(customers.select().with_only_columns(customers.c.id, customers.c.display_name)
                             .where(customers.c.id.in_(ids))).all())


def _plain(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if isinstance(v, str | int | float | bool | type(None))}
