"""Customer resolution: which customer a sender is, joining identifiers on strong evidence only.

Strong evidence is the same normalised identifier, or several identifiers the channel itself asserts belong to one
sender (a WhatsApp id is a phone number; a Slack profile's verified email), or a CRM record holding both, or an
admin's merge. Never a name, never a fuzzy score. Guardrails:

- isolated identifiers (role addresses, the business's own addresses and numbers) key a customer of their own but
  never join anything;
- at most ``max_per_kind`` identifiers of one kind per customer;
- two customers that already map to different records in one CRM are never merged automatically: a merge
  suggestion is recorded instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    cast,
    func,
    null,
    or_,
    select,
    union_all,
    update,
)

from gateway.identity.merges import conflicting_links, live_customer_id, merge_customers, suggest
from gateway.identity.normalize import IdentityRules, canonical_identifiers, name_key
from gateway.model import Identifier, IdentifierKind, Party, new_id
from gateway.storage.db import utcnow
from gateway.storage.prepared import Prepared
from gateway.storage.tables import Time, crm_directory, customers, identities


@dataclass
class Resolution:
    customer_id: str
    created: bool = False
    merges: list[int] = field(default_factory=list)
    suggestions: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, value, why not attached)
    # a customer created here is known whole without reading it back: its name and identifiers (kind, value)
    display_name: str | None = None
    identifiers: list[tuple[str, str]] | None = None
    wrote: bool = False  # a customer, an identifier, a name, a merge or a suggestion was written


@dataclass(frozen=True)
class _Owner:
    id: str
    display_name: str | None
    created_at: Any


def _pairs(table: Any, count: int) -> Any:
    """``table``'s rows matching one of ``count`` (kind, value) pairs, given as parameters ``kind0``, ``value0``...

    An OR of pairs, not a row-value IN: SQLite answers the OR from the unique index, the IN by a scan.
    """
    return or_(*[and_(table.c.kind == bindparam(f"kind{n}"), table.c.value == bindparam(f"value{n}"))
                 for n in range(count)])


@cache
def _owners_statement(count: int) -> Prepared:
    """The owners of ``count`` identifiers, with parameters ``kind0``, ``value0``, ...: built once per count."""
    return Prepared(select(identities.c.kind, identities.c.value, customers.c.id, customers.c.merged_into,
                   customers.c.display_name, customers.c.created_at)
            .join(customers, customers.c.id == identities.c.customer_id)
            .where(_pairs(identities, count)))


@cache
def _owners_and_records_statement(count: int) -> Prepared:
    """The owners of ``count`` identifiers and the CRM directory records holding them, in one statement.

    Rows of the first kind have ``crm`` NULL; rows of the second have ``customer_id`` NULL.
    """
    owners = (select(identities.c.kind, identities.c.value, customers.c.id.label("customer_id"),
                     customers.c.merged_into, customers.c.display_name, customers.c.created_at,
                     cast(null(), String).label("crm"), cast(null(), String).label("remote_id"))
              .join(customers, customers.c.id == identities.c.customer_id)
              .where(_pairs(identities, count)))
    records = select(crm_directory.c.kind, crm_directory.c.value, cast(null(), String), cast(null(), String),
                     cast(null(), String), cast(null(), Time), crm_directory.c.crm, crm_directory.c.remote_id
                     ).where(_pairs(crm_directory, count))
    return Prepared(union_all(owners, records))


@cache
def _new_customer_statement(count: int) -> Prepared:
    """On PostgreSQL, a new customer and its first ``count`` identifiers in one statement: the customer and all but
    one identifier inserted in CTEs (single-row inserts, so that SQLAlchemy caches the compiled statement)."""
    def one_row(table: Any, prefix: str, names: tuple[str, ...]) -> Any:
        return table.insert().values({name: bindparam(f"{prefix}{name}", type_=table.c[name].type) for name in names})

    statement = one_row(identities, "i0_", _IDENTIFIER_COLUMNS).add_cte(
        one_row(customers, "customer_", _CUSTOMER_COLUMNS).cte("new_customer"))
    for n in range(1, count):
        statement = statement.add_cte(one_row(identities, f"i{n}_", _IDENTIFIER_COLUMNS).cte(f"identifier{n}"))
    return Prepared(statement)


# Built once and run on the transaction's DBAPI cursor: the resolver runs for every message, and a prepared
# statement skips SQLAlchemy's per-call construction, cache-key and result work.
_CUSTOMER_SUMMARY = Prepared(select(customers.c.display_name, customers.c.created_at).where(
    customers.c.id == bindparam("customer_id")))
_RECORD_IDENTIFIERS = Prepared(select(crm_directory.c.kind, crm_directory.c.value).where(
    crm_directory.c.crm == bindparam("crm"), crm_directory.c.remote_id == bindparam("remote_id")))
_HELD_OF_KIND = Prepared(select(func.count()).select_from(identities).where(
    identities.c.customer_id == bindparam("customer_id"), identities.c.kind == bindparam("kind")))
_NAME_IF_MISSING = Prepared(update(customers).where(
    customers.c.id == bindparam("customer_id"), customers.c.display_name.is_(None)).values(
    display_name=bindparam("display_name"), name_key=bindparam("name_key"), updated_at=bindparam("now")))
_NEW_CUSTOMER = Prepared(customers.insert())
_NEW_IDENTIFIER = Prepared(identities.insert())
_CUSTOMER_COLUMNS = ("id", "display_name", "name_key", "created_at", "updated_at")
_IDENTIFIER_COLUMNS = ("kind", "value", "customer_id", "evidence", "source_message_id", "created_at")


def _live_owner(conn: Connection, customer_id: str, merged_into: str | None, name: str | None,
                created_at: Any) -> _Owner:
    if merged_into:  # rare: follow the merge to the customer that stands for this one now
        customer_id = live_customer_id(conn, merged_into)
        name, created_at = _CUSTOMER_SUMMARY.all(conn, {"customer_id": customer_id})[0]
    return _Owner(customer_id, name, created_at)


def _pair_params(idents: list[Identifier]) -> dict[str, str]:
    params = {}
    for n, ident in enumerate(idents):
        params[f"kind{n}"], params[f"value{n}"] = ident.kind.value, ident.value
    return params


def _owners(conn: Connection, idents: list[Identifier]) -> dict[str, _Owner]:
    """The live customer owning each identifier that has one: one indexed query for the common case."""
    return {f"{kind}:{value}": _live_owner(conn, customer_id, merged_into, name, created_at)
            for kind, value, customer_id, merged_into, name, created_at in _owners_statement(len(idents)).all(
                conn, _pair_params(idents))}


def _owners_and_records(conn: Connection, idents: list[Identifier]
                        ) -> tuple[dict[str, _Owner], dict[str, list[tuple[str, str]]]]:
    """``_owners``, and the (crm, remote id) of the CRM directory records holding each identifier: one query."""
    owners: dict[str, _Owner] = {}
    records: dict[str, list[tuple[str, str]]] = {}
    for kind, value, customer_id, merged_into, name, created_at, crm, remote_id in \
            _owners_and_records_statement(len(idents)).all(conn, _pair_params(idents)):
        if crm is not None:
            records.setdefault(f"{kind}:{value}", []).append((crm, remote_id))
        else:
            owners[f"{kind}:{value}"] = _live_owner(conn, customer_id, merged_into, name, created_at)
    return owners, records


READ_AHEAD_CHUNK = 64  # identifiers per read-ahead statement, padded to a power of two: a few shapes compiled


@dataclass
class KnownIdentifiers:
    """The owners and CRM directory records of a batch's identifiers, read ahead in a few statements
    (``read_identifiers``) so that resolving each message reads nothing more in the usual case.

    ``resolve_customer`` forgets what it changes: the identifiers of a message that wrote anything, the identifiers
    of a customer whose name it set, and everything after a merge or a suggestion.
    """

    owners: dict[str, tuple[str, str | None, str | None, Any]] = field(default_factory=dict)
    records: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    read: set[str] = field(default_factory=set)  # identifier keys read, whether or not anyone holds them

    def covers(self, idents: list[Identifier]) -> bool:
        return all(ident.key in self.read for ident in idents)

    def forget(self, keys: list[str], customer_id: str | None = None) -> None:
        """Forget ``keys``, and every identifier ``customer_id`` owns."""
        if customer_id is not None:
            keys = keys + [key for key, owner in self.owners.items() if owner[0] == customer_id]
        for key in keys:
            self.read.discard(key)
            self.owners.pop(key, None)
            self.records.pop(key, None)

    def clear(self) -> None:
        self.read.clear()
        self.owners.clear()
        self.records.clear()


def read_identifiers(conn: Connection, parties: list[Party], rules: IdentityRules) -> KnownIdentifiers:
    """What ``resolve_customer`` reads for each of ``parties``, read for all of them at once."""
    wanted: dict[str, Identifier] = {}
    for party in parties:
        wanted.update((ident.key, ident) for ident in _joinable(party, rules)[1])
    known = KnownIdentifiers()
    idents = list(wanted.values())
    for start in range(0, len(idents), READ_AHEAD_CHUNK):
        chunk = idents[start:start + READ_AHEAD_CHUNK]
        size = 1 << (len(chunk) - 1).bit_length()
        padded = chunk + [chunk[-1]] * (size - len(chunk))  # a pair named twice matches the same rows
        for kind, value, customer_id, merged_into, name, created_at, crm, remote_id in \
                _owners_and_records_statement(size).all(conn, _pair_params(padded)):
            if crm is not None:
                known.records.setdefault(f"{kind}:{value}", []).append((crm, remote_id))
            else:
                known.owners[f"{kind}:{value}"] = (customer_id, merged_into, name, created_at)
    known.read = set(wanted)
    return known


def _joinable(party: Party, rules: IdentityRules) -> tuple[dict[str, str | None], list[Identifier], str | None]:
    """A party's canonical identifiers: why each is isolated (None: it is not), the ones that may join a customer,
    and the evidence to record when only isolated ones are left (the first then keys a customer of its own)."""
    identifiers = canonical_identifiers(party.identifiers, rules)
    isolated = {ident.key: rules.isolation_reason(ident) for ident in identifiers}
    joinable = [ident for ident in identifiers if not isolated[ident.key]]
    if joinable:
        return isolated, joinable, None
    return isolated, [identifiers[0]], f"isolated:{isolated[identifiers[0].key]}"


def _via_crm_records(conn: Connection, idents: list[Identifier], records_of: dict[str, list[tuple[str, str]]],
                     rules: IdentityRules) -> dict[str, tuple[_Owner, str]]:
    """For identifiers no customer holds yet: the customer holding another identifier of the same CRM record.

    A CRM record (synced into ``crm_directory``) that holds both is strong evidence; an identifier that several
    records hold is ambiguous and joins nothing.
    """
    linked = {}
    for ident in idents:
        records = records_of.get(ident.key, [])
        if len(records) != 1:
            continue
        crm, remote_id = records[0]
        siblings = [Identifier(kind=IdentifierKind(kind), value=value) for kind, value in _RECORD_IDENTIFIERS.all(
            conn, {"crm": crm, "remote_id": remote_id})
            if (kind, value) != (ident.kind.value, ident.value)]
        owners = _owners(conn, [s for s in siblings if not rules.isolation_reason(s)]) if siblings else {}
        if len({owner.id for owner in owners.values()}) == 1:
            linked[ident.key] = (next(iter(owners.values())), f"{crm} record {remote_id}")
    return linked


def _insert_new_customer(conn: Connection, customer: dict[str, Any], identifier_rows: list[dict[str, Any]]) -> None:
    """The customer row and its identifiers: one statement on PostgreSQL, two on SQLite (no INSERT in a CTE)."""
    if conn.dialect.name != "postgresql" or not identifier_rows:
        _NEW_CUSTOMER.execute(conn, customer)
        if len(identifier_rows) > 1:
            _NEW_IDENTIFIER.execute_many(conn, identifier_rows)
        elif identifier_rows:
            _NEW_IDENTIFIER.execute(conn, identifier_rows[0])
        return
    params = {f"customer_{name}": customer[name] for name in _CUSTOMER_COLUMNS}
    params.update({f"i{n}_{name}": row[name] for n, row in enumerate(identifier_rows) for name in _IDENTIFIER_COLUMNS})
    _new_customer_statement(len(identifier_rows)).execute(conn, params)


def resolve_customer(conn: Connection, party: Party, *, message_id: str, rules: IdentityRules | None = None,
                     evidence: str = "asserted_by_channel", known: KnownIdentifiers | None = None) -> Resolution:
    """The customer for a sender party, creating, attaching, merging or suggesting as the evidence allows.

    Runs inside the pipeline's transaction. A concurrent insert of the same identifier raises IntegrityError; the
    caller retries, and then finds the row. ``known``: the batch's identifiers read ahead (``read_identifiers``);
    what this resolution changes is forgotten there.
    """
    rules = rules or IdentityRules()
    isolated, joinable, isolated_evidence = _joinable(party, rules)
    evidence = isolated_evidence or evidence
    if known is not None and known.covers(joinable):
        found = {ident.key: _live_owner(conn, *known.owners[ident.key]) for ident in joinable
                 if ident.key in known.owners}
        records_of = {ident.key: known.records[ident.key] for ident in joinable if ident.key in known.records}
    else:
        found, records_of = _owners_and_records(conn, joinable)
    result = _resolve(conn, party, message_id, rules, evidence, isolated, joinable, found, records_of)
    if known is not None and result.wrote:
        if result.merges or result.suggestions:
            known.clear()
        else:
            known.forget([ident.key for ident in joinable], result.customer_id)
    return result


def _resolve(conn: Connection, party: Party, message_id: str, rules: IdentityRules, evidence: str,
             isolated: dict[str, str | None], joinable: list[Identifier], found: dict[str, _Owner],
             records_of: dict[str, list[tuple[str, str]]]) -> Resolution:
    owners = {ident.key: found[ident.key].id if ident.key in found else None for ident in joinable}
    by_id = {owner.id: owner for owner in found.values()}
    new = [ident for ident in joinable if ident.key not in found]
    records = _via_crm_records(conn, [i for i in new if not isolated[i.key]], records_of, rules) if new else {}
    for key, (owner, _record) in records.items():
        owners[key] = owner.id
        by_id.setdefault(owner.id, owner)
    distinct = list(dict.fromkeys(owner for owner in owners.values() if owner))
    now = utcnow()
    result: Resolution
    new_customer: dict[str, Any] | None = None  # written with its identifiers, below
    if not distinct:
        customer_id = new_id()
        new_customer = {"id": customer_id, "display_name": party.display_name,
                        "name_key": name_key(party.display_name), "created_at": now, "updated_at": now}
        result = Resolution(customer_id, created=True, display_name=party.display_name, identifiers=[])
    else:
        survivor = min(distinct, key=lambda cid: (by_id[cid].created_at, cid))
        result = Resolution(survivor)
        for other in distinct:
            if other == survivor:
                continue
            joined_by = [key for key, owner in owners.items() if owner in (survivor, other)]
            via = [records[key][1] for key in joined_by if key in records]
            kind = "crm_record" if via else evidence
            conflict = conflicting_links(conn, survivor, other)
            if conflict:
                result.suggestions.append(suggest(
                    conn, survivor, other, 100.0,
                    f"{kind} via {', '.join(joined_by)}, but they map to different records in {conflict}"))
            else:
                detail: dict[str, Any] = {"identifiers": joined_by, **({"records": via} if via else {})}
                result.merges.append(merge_customers(
                    conn, survivor, other, evidence=kind, message_id=message_id, detail=detail))
        if party.display_name and not by_id[survivor].display_name:
            result.wrote = True
            _NAME_IF_MISSING.execute(conn, {"customer_id": survivor, "display_name": party.display_name,
                                            "name_key": name_key(party.display_name), "now": now})
    added: dict[str, int] = {}
    new_rows: list[dict[str, Any]] = []
    for ident in new:
        kind = ident.kind.value
        held = added.get(kind, 0) if result.created else _HELD_OF_KIND.scalar(
            conn, {"customer_id": result.customer_id, "kind": kind})
        if held >= rules.max_per_kind:
            result.skipped.append((ident.kind.value, ident.value, f"limit of {rules.max_per_kind} per kind"))
            continue
        row = {"kind": ident.kind.value, "value": ident.value, "customer_id": result.customer_id,
               "evidence": "crm_record" if ident.key in records else (
                   "first_seen" if result.created and ident is joinable[0] else evidence),
               "source_message_id": message_id, "created_at": now}
        result.wrote = True
        if new_customer is None:  # the count above reads what was inserted for the identifier before
            _NEW_IDENTIFIER.execute(conn, row)
        else:
            new_rows.append(row)
        added[kind] = added.get(kind, 0) + 1
        if result.identifiers is not None:
            result.identifiers.append((kind, ident.value))
    if new_customer is not None:
        _insert_new_customer(conn, new_customer, new_rows)
    result.wrote = result.wrote or result.created or bool(result.merges or result.suggestions)
    return result
