"""``gateway customers``: see why identifiers are joined, merge, unmerge, review suggestions."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Connection, or_, select, update

from gateway import erasure
from gateway.attachments import AttachmentStore
from gateway.cli_support import config_option, load
from gateway.identity.merges import (
    MergeError,
    customer_family,
    live_customer_id,
    merge_customers,
    merges_of,
    open_suggestions,
    unmerge,
)
from gateway.identity.normalize import InvalidIdentifier, normalize_email, normalize_phone
from gateway.plugins import ContactErasure, ContactMerge
from gateway.redact import describe_error
from gateway.storage.tables import (
    conversations,
    crm_links,
    customers,
    identities,
    merge_suggestions,
    messages,
    sends,
)


def _runtime(config_path: Path) -> Any:
    from gateway.runtime import build_runtime

    return build_runtime(load(config_path))


def _customer_by_id(conn: Connection, given: str) -> str:
    """The customer whose id is ``given`` or starts with it (as ``find`` and names like ``Customer 8c249776``
    show it); an ambiguous or unknown prefix is an error that says what to do."""
    if conn.execute(select(customers.c.id).where(customers.c.id == given)).first() is not None:
        return given
    if len(given) < 4:
        raise click.ClickException(f"{given!r}: give at least 4 characters of a customer id "
                                   "(see 'gateway customers find')")
    found = list(conn.execute(select(customers.c.id).where(customers.c.id.startswith(given, autoescape=True))
                              .order_by(customers.c.id).limit(6)).scalars())
    if not found:
        raise click.ClickException(f"no customer {given} (use 'gateway customers find' for ids)")
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise click.ClickException(f"{given} is the start of several customer ids ({shown}): give more of it")
    return str(found[0])


def _find_ids(conn: Connection, query: str, region: str) -> list[str]:
    """Customer ids for an id, an identifier (email, phone in any form, kind:value) or a name fragment."""
    candidates: list[tuple[str, str]] = []
    if ":" in query and not query.startswith("+"):
        kind, _, value = query.partition(":")
        candidates.append((kind, value))
    if "@" in query:
        with contextlib.suppress(InvalidIdentifier):
            candidates.append(("email", normalize_email(query)))
    with contextlib.suppress(InvalidIdentifier):
        candidates.append(("phone", normalize_phone(query, region)))
    found = [live_customer_id(conn, cid) for cid in conn.execute(select(identities.c.customer_id).where(
        or_(*[(identities.c.kind == k) & (identities.c.value == v) for k, v in candidates]) if candidates
        else identities.c.id < 0)).scalars()]
    if conn.execute(select(customers.c.id).where(customers.c.id == query)).first():
        found.append(query)
    if not found and len(query) >= 3:
        found = list(conn.execute(select(customers.c.id).where(
            customers.c.display_name.ilike(f"%{query}%"), customers.c.merged_into.is_(None)).limit(50)).scalars())
    return list(dict.fromkeys(found))


def describe(conn: Connection, customer_id: str) -> dict[str, Any]:
    live = live_customer_id(conn, customer_id)
    row = conn.execute(select(customers).where(customers.c.id == live)).one()
    family = customer_family(conn, live)
    return {
        "id": live,
        "display_name": row.display_name,
        "merged_customers": [cid for cid in family if cid != live],
        "identifiers": [
            {"kind": r.kind, "value": r.value, "evidence": r.evidence, "first_message": r.source_message_id,
             "since": r.created_at.isoformat()}
            for r in conn.execute(select(identities).where(identities.c.customer_id == live).order_by(identities.c.id))
        ],
        "merges": [
            {"merge": m.id, "survivor": m.survivor_id, "absorbed": m.absorbed_id, "evidence": m.evidence,
             "detail": {k: v for k, v in m.detail.items() if not k.startswith("moved_")},
             "message": m.message_id, "actor": m.actor, "at": m.created_at.isoformat(),
             "undone_at": m.undone_at.isoformat() if m.undone_at else None}
            for m in {m.id: m for cid in family for m in merges_of(conn, cid)}.values()  # each merge names two
        ],
        "crm_records": {r.crm: r.remote_id for r in conn.execute(select(crm_links).where(
            crm_links.c.entity == "customer", crm_links.c.local_id == live))},
        "conversations": [
            {"id": c.id, "channel": c.channel, "status": c.status, "last_activity": c.last_activity_at.isoformat()}
            for c in conn.execute(select(conversations).where(conversations.c.customer_id.in_(family))
                                  .order_by(conversations.c.last_activity_at.desc()).limit(20))
        ],
        "messages": recent_messages(conn, family),
    }


def recent_messages(conn: Connection, family: list[str], limit: int = 50) -> list[dict[str, Any]]:
    """The customer's latest messages both ways, oldest first; a reply shows what became of its send."""
    rows = conn.execute(
        select(messages.c.id, messages.c.direction, messages.c.connector, messages.c.conversation_id,
               messages.c.received_at, messages.c.data, sends.c.status, sends.c.provider_message_id,
               sends.c.attempts, sends.c.last_error)
        .outerjoin(sends, sends.c.message_id == messages.c.id)
        .where(messages.c.customer_id.in_(family))
        .order_by(messages.c.received_at.desc(), messages.c.created_at.desc()).limit(limit)).all()
    out = []
    for row in reversed(rows):
        entry: dict[str, Any] = {
            "id": row.id, "at": row.received_at.isoformat(), "direction": row.direction, "channel": row.connector,
            "conversation": row.conversation_id, "text": (row.data.get("text") or "")[:500]}
        if row.direction == "outbound":
            entry["author"] = row.data.get("sender", {}).get("display_name")
            entry["send"] = {"status": row.status, "provider_message_id": row.provider_message_id,
                             "attempts": row.attempts, "last_error": row.last_error}
        out.append(entry)
    return out


@click.group()
def customers_group() -> None:
    """Customers: why identifiers are joined; merge, unmerge, review suggestions; export and erase a person."""


_config = config_option


@customers_group.command("show")
@_config
@click.argument("query")
def show(config_path: Path, query: str) -> None:
    """The customers matching QUERY (an id, an identifier in any written form, or a name), as a JSON array: each
    with every identifier and its evidence, every merge, CRM records, conversations and recent messages."""
    rt = _runtime(config_path)
    with rt.engine.connect() as conn:
        ids = _find_ids(conn, query, rt.config.settings.identity.default_region)
        if not ids:
            raise click.ClickException(f"no customer matches {query!r}")
        out = [describe(conn, cid) for cid in ids]
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


@customers_group.command("find")
@_config
@click.argument("query")
def find(config_path: Path, query: str) -> None:
    """List customers matching an identifier (any written form) or a name fragment."""
    rt = _runtime(config_path)
    with rt.engine.connect() as conn:
        ids = _find_ids(conn, query, rt.config.settings.identity.default_region)
        for cid in ids:
            info = describe(conn, cid)
            idents = ", ".join(f"{i['kind']}:{i['value']}" for i in info["identifiers"])
            click.echo(f"{cid}  {info['display_name'] or '-'}  {idents}")
    if not ids:
        click.echo("no match")


@customers_group.command("merge")
@_config
@click.argument("survivor")
@click.argument("absorbed")
@click.option("--reason", required=True, help="Why: kept with the merge.")
@click.option("--actor", default="admin", show_default=True)
def merge(config_path: Path, survivor: str, absorbed: str, reason: str, actor: str) -> None:
    """Merge ABSORBED into SURVIVOR (an admin's merge: strong evidence by definition). Each is a customer id or
    its first characters, as long as only one id starts with them."""
    rt = _runtime(config_path)
    try:
        with rt.engine.begin() as conn:
            survivor, absorbed = _customer_by_id(conn, survivor), _customer_by_id(conn, absorbed)
            merge_id, a, b = admin_merge(conn, survivor, absorbed, reason, actor)
    except MergeError as exc:
        raise click.ClickException(str(exc)) from None
    # after the local merge has committed
    carried = carry_to_crm(rt, a, b) if rt.config.settings.identity.carry_merges_to_crm else []
    click.echo(f"merge {merge_id}: {b} merged into {a}" + "".join(f"; {c}" for c in carried))


def admin_merge(conn: Connection, survivor: str, absorbed: str, reason: str, actor: str) -> tuple[int, str, str]:
    """An admin's merge of ABSORBED into SURVIVOR (each followed to the customer it stands for now): the merge id
    and the two customers merged; suggestions naming both are closed as merged."""
    for customer in (survivor, absorbed):
        if conn.execute(select(customers.c.id).where(customers.c.id == customer)).first() is None:
            raise MergeError(f"no customer {customer} (use 'gateway customers find' for ids)")
    a, b = live_customer_id(conn, survivor), live_customer_id(conn, absorbed)
    if a == b:
        raise MergeError("they are already one customer")
    merge_id = merge_customers(conn, a, b, evidence="admin", detail={"reason": reason}, actor=actor)
    conn.execute(update(merge_suggestions).where(
        merge_suggestions.c.customer_a.in_([a, b]), merge_suggestions.c.customer_b.in_([a, b])
    ).values(status="merged"))
    return merge_id, a, b


def approve_suggestion(conn: Connection, suggestion_id: int, actor: str) -> tuple[int, str, str]:
    """Merge an open suggestion's second customer into its first, as an admin's merge."""
    row = conn.execute(select(merge_suggestions).where(merge_suggestions.c.id == suggestion_id)).first()
    if row is None or row.status != "open":
        raise MergeError(f"no open suggestion {suggestion_id}")
    return admin_merge(conn, row.customer_a, row.customer_b, f"suggestion {suggestion_id} approved: {row.reason}",
                       actor)


def reject_suggestion(conn: Connection, suggestion_id: int) -> bool:
    """Mark a suggestion rejected; False when there is no open suggestion of that id."""
    return bool(conn.execute(update(merge_suggestions).where(
        merge_suggestions.c.id == suggestion_id, merge_suggestions.c.status == "open").values(status="rejected")
    ).rowcount)


def carry_to_crm(rt: Any, survivor: str, absorbed: str) -> list[str]:
    """Merge the two contacts in each CRM that has a record for both and supports merging."""
    with rt.engine.connect() as conn:
        records = {name: dict(conn.execute(select(crm_links.c.local_id, crm_links.c.remote_id).where(
            crm_links.c.crm == name, crm_links.c.entity == "customer",
            crm_links.c.local_id.in_([survivor, absorbed]))).all()) for name in rt.crms}
    done = []
    for name, crm in rt.crms.items():
        rows = records[name]
        if isinstance(crm, ContactMerge) and survivor in rows and absorbed in rows and rows[survivor] != rows[absorbed]:
            crm.merge_contacts(rows[survivor], rows[absorbed])
            done.append(f"{name}: record {rows[absorbed]} merged into {rows[survivor]}")
    return done


@customers_group.command("unmerge")
@_config
@click.argument("merge_id", type=int)
@click.option("--reason", default=None)
def unmerge_command(config_path: Path, merge_id: int, reason: str | None) -> None:
    """Undo a merge: both customers and their identifiers are restored."""
    rt = _runtime(config_path)
    try:
        with rt.engine.begin() as conn:
            result = unmerge(conn, merge_id, reason)
    except MergeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"merge {merge_id} undone: {result['restored']} has its {result['identities']} identifier(s) back")


@customers_group.command("suggestions")
@_config
@click.option("--all", "include_closed", is_flag=True)
@click.option("--reject", type=int, default=None, help="Mark a suggestion as rejected.")
def suggestions(config_path: Path, include_closed: bool, reject: int | None) -> None:
    """Likely duplicates for review, with a score and the reason; never applied by themselves."""
    rt = _runtime(config_path)
    with rt.engine.begin() as conn:
        if reject is not None:
            reject_suggestion(conn, reject)
        rows = open_suggestions(conn, include_closed)
    for row in rows:
        click.echo(f"{row.id:>5}  {row.score:5.1f}  {row.customer_a} ~ {row.customer_b}  [{row.status}]  {row.reason}")
    if not rows:
        click.echo("no suggestions")


def _by_default() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@customers_group.command("forget")
@_config
@click.argument("query")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--crm", "in_crms", is_flag=True, help="Also delete the person's record in each CRM that can.")
@click.option("--by", "requested_by", default=None, help="Who asked (kept in the tombstone); default: your user.")
def forget(config_path: Path, query: str, yes: bool, in_crms: bool, requested_by: str | None) -> None:
    """Erase everything held about a person (by customer id, email or phone): a deletion request.

    A tombstone keeps only a keyed hash of each identifier, the time and who asked: a later message from the same
    identifier starts a new customer.
    """
    rt = _runtime(config_path)
    region = rt.config.settings.identity.default_region
    key = rt.config.privacy_key
    with rt.engine.connect() as conn:
        try:
            customer = erasure.find_customer(conn, query, region)
        except erasure.NotFound as exc:
            before = erasure.erased_before(conn, key, erasure.candidates(query, region))
            if before:
                raise click.ClickException(f"{query!r} was erased on {before[-1].erased_at:%Y-%m-%d %H:%M} UTC at "
                                           f"the request of {before[-1].requested_by}") from None
            raise click.ClickException(str(exc)) from None
        found = erasure.holdings(conn, customer)
        contacts = erasure.crm_contacts(conn, found)
    click.echo(f"customer {customer}: {len(found.identifiers)} identifier(s), {len(found.messages)} message(s), "
               f"{len(found.conversations)} conversation(s), {len(found.inbox)} raw payload(s), "
               f"{len(found.attachments)} attachment(s); CRM records: "
               + (", ".join(f"{name} {remote}" for name, remote in contacts.items()) or "none"))
    if not yes:
        click.confirm("Erase all of it? This cannot be undone", abort=True)
    results: dict[str, str] = {}
    if in_crms:
        for name, remote in contacts.items():
            connector = rt.crms.get(name)
            if not isinstance(connector, ContactErasure):
                results[name] = f"record {remote} not deleted: {name} cannot delete contacts"
                continue
            try:
                results[name] = connector.erase_contact(remote)
            except Exception as exc:
                raise click.ClickException(
                    f"{name}: could not delete record {remote} ({describe_error(exc)}); nothing was erased here: "
                    "run again, or without --crm") from None
    with rt.engine.begin() as conn:
        found = erasure.holdings(conn, customer)  # again, inside the transaction: a message may have come since
        summary = erasure.erase(conn, found, key=key, requested_by=requested_by or _by_default(), crm=results)
    with rt.engine.connect() as conn:
        files = erasure.remove_files(conn, found, _attachments(rt))
    removed = ", ".join(f"{table} {count}" for table, count in summary["removed"].items())
    click.echo(f"erased customer {customer}: {removed}; attachment files {files}")
    for name, line in results.items():
        click.echo(f"  {name}: {line}")
    left = [f"{name} {remote}" for name, remote in contacts.items() if name not in results]
    if left:
        click.echo(f"  still in the CRM (use --crm, or delete them there): {', '.join(left)}")


def _attachments(rt: Any) -> AttachmentStore:
    return AttachmentStore(rt.data_dir / "attachments")


@customers_group.command("export")
@_config
@click.argument("query")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write to FILE (default: stdout).")
def export_command(config_path: Path, query: str, output: Path | None) -> None:
    """Everything held about a person (by customer id, email or phone), as JSON: an access request."""
    rt = _runtime(config_path)
    with rt.engine.connect() as conn:
        try:
            customer = erasure.find_customer(conn, query, rt.config.settings.identity.default_region)
        except erasure.NotFound as exc:
            raise click.ClickException(str(exc)) from None
        data = erasure.export(conn, erasure.holdings(conn, customer), _attachments(rt))
    text = json.dumps({"customer": customer, **data}, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    click.echo(f"wrote {output}", err=True)
