"""Customer clustering and threading on the generated population, through the gateway's real resolver and threading.

    .venv/bin/python -m bench.identity_eval                 # 10,000 people (about 3-4 minutes), rewrites its section
    .venv/bin/python -m bench.identity_eval --people 1000   # smaller; --no-docs to leave docs/benchmarks.md alone

Messages are built as the connectors build them (the sender normalised with the channel's default region and the
configured email rules) and go, in time order, through ``resolve_customer``, ``suggest_for_new_customer`` and
``assign_conversation`` inside transactions on a fresh SQLite database, as ``MessageStore._store`` calls them.

Scores are pairwise over messages. A message's *attribution label* is the person who wrote it, except for messages
whose only identifier is a shared handle: a household phone two people share, or a company's role address
(``support@``). Nothing in such a message says which of the people wrote it, so its label is the handle itself
("household:..." / "role:..."), the handle's messages belong together, and a customer holding both a handle's
messages and a person's own messages counts as a false merge. The person-level view (true authors) is reported
too: there the pairs of two household members joined through their shared phone are the unavoidable "merges"
that every system keyed on identifiers makes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.docs import write_section
from bench.identity_data import WINDOW, GenMessage, generate, identity_rules
from gateway.config import ConversationsConfig
from gateway.conversations import assign_conversation
from gateway.identity import (
    IdentityRules,
    InvalidIdentifier,
    email_identifier,
    normalize_phone,
    resolve_customer,
    scoped_identifier,
)
from gateway.identity.suggest import suggest_for_new_customer
from gateway.model import ChannelType, Identifier, IdentifierKind, Message, Party, RawRef, ThreadRef
from gateway.storage.db import make_engine, migrate
from gateway.storage.tables import customers, merge_suggestions, merges

ROOT = Path(__file__).resolve().parent.parent
CONNECTOR_TYPES = {"email": "imap", "slack": "slack", "wa-cloud": "meta", "wa-twilio": "twilio"}


# ---- building canonical messages as the connectors do ---------------------------------------------------------------

def sender_identifiers(gm: GenMessage, rules: IdentityRules) -> tuple[Identifier, ...]:
    """The sender's identifiers, normalised as the channel's connector normalises them."""
    s = gm.sender
    if gm.channel == "sms":
        return (Identifier(kind=IdentifierKind.PHONE, value=normalize_phone(s["phone"], gm.region)),)
    if gm.channel == "whatsapp":
        value = (normalize_phone(s["wa_id"], gm.region, international=True) if "wa_id" in s
                 else normalize_phone(s["phone"], gm.region))
        return (Identifier(kind=IdentifierKind.PHONE, value=value),
                Identifier(kind=IdentifierKind.WHATSAPP, value=value))
    if gm.channel == "slack":
        return (scoped_identifier(IdentifierKind.SLACK, s["team"], s["user"]), email_identifier(s["email"], rules))
    return (email_identifier(s["from"], rules),)


def to_message(gm: GenMessage, rules: IdentityRules) -> Message:
    """A canonical message for a generated one (raises InvalidIdentifier where a connector would quarantine)."""
    thread = ThreadRef(message_id=gm.message_id, in_reply_to=gm.in_reply_to,
                       references=(gm.in_reply_to,) if gm.in_reply_to else (), provider_thread_id=gm.thread_id)
    return Message(
        channel=ChannelType(gm.channel), connector=gm.connector,
        connector_type=CONNECTOR_TYPES.get(gm.connector, "twilio"), provider_message_id=f"gen-{gm.seq}",
        thread=thread, sender=Party(identifiers=sender_identifiers(gm, rules), display_name=gm.display_name),
        text=f"about {gm.problem}", sent_at=gm.at, received_at=gm.at, raw=RawRef(inbox_id=gm.seq + 1,
                                                                                  connector=gm.connector))


# ---- scoring ---------------------------------------------------------------------------------------------------------

def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def pairwise(predicted: Sequence[Hashable], truth: Sequence[Hashable]) -> dict[str, Any]:
    """Pairwise precision and recall of a clustering against ground truth (both: one id per item)."""
    both = Counter(zip(predicted, truth, strict=True))
    tp = sum(_pairs(n) for n in both.values())
    pred = sum(_pairs(n) for n in Counter(predicted).values())
    true = sum(_pairs(n) for n in Counter(truth).values())
    return {"true_pairs": true, "predicted_pairs": pred, "correct_pairs": tp, "wrong_pairs": pred - tp,
            "precision": tp / pred if pred else 1.0, "recall": tp / true if true else 1.0}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}

    def find(self, x: Hashable) -> Hashable:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: Hashable, b: Hashable) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def ideal_clusters(messages: Sequence[GenMessage]) -> list[Hashable]:
    """The clustering strong evidence allows: messages joined by shared evidence keys; shared handles join nothing."""
    uf = _UnionFind()
    for gm in messages:
        uf.find(("m", gm.seq))
        for key in gm.evidence:
            uf.union(("m", gm.seq), ("k", key))
        if not gm.evidence:
            uf.union(("m", gm.seq), ("iso", gm.isolated[0]))
    return [uf.find(("m", gm.seq)) for gm in messages]


def ideal_threads(messages: Sequence[GenMessage], clusters: Sequence[Hashable]) -> list[int]:
    """Threading by the gateway's rules (thread keys, then continuity inside the window) on the ideal clustering."""
    keys: dict[str, int] = {}
    latest: dict[Hashable, tuple[int, datetime]] = {}
    last_at: dict[int, datetime] = {}
    out: list[int] = []
    for gm, cluster in zip(messages, clusters, strict=True):
        lookup = [f"{gm.connector}:mid:{gm.in_reply_to}"] if gm.in_reply_to else []
        lookup += [f"{gm.connector}:thread:{gm.thread_id}"] if gm.thread_id else []
        conv = next((keys[k] for k in lookup if k in keys), None)
        if conv is None and cluster in latest and latest[cluster][1] >= gm.at - WINDOW:
            conv = latest[cluster][0]
        if conv is None:
            conv = len(last_at)
        last_at[conv] = max(last_at.get(conv, gm.at), gm.at)
        if cluster not in latest or last_at[conv] >= latest[cluster][1]:
            latest[cluster] = (conv, last_at[conv])
        for own in ([f"{gm.connector}:mid:{gm.message_id}"] if gm.message_id else []) + (
                [f"{gm.connector}:thread:{gm.thread_id}"] if gm.thread_id else []):
            keys.setdefault(own, conv)
        out.append(conv)
    return out


def contacts_per_person(clusters: Sequence[Hashable], messages: Sequence[GenMessage]) -> dict[str, Any]:
    """How many customers (CRM contacts) hold each person's own messages."""
    held: dict[str, set[Hashable]] = defaultdict(set)
    for cluster, gm in zip(clusters, messages, strict=True):
        if gm.label.startswith("person:"):
            held[gm.label].add(cluster)
    sizes = Counter(len(v) for v in held.values())
    people = len(held)
    return {"people": people, "mean": sum(len(v) for v in held.values()) / people if people else 0.0,
            "distribution": {str(k): sizes[k] for k in sorted(sizes)},
            "one_contact_share": sizes[1] / people if people else 0.0}


@dataclass
class Run:
    """What the gateway did with each message."""

    customer: list[str] = field(default_factory=list)
    conversation: list[str] = field(default_factory=list)
    rules: Counter[str] = field(default_factory=Counter)
    fed: list[GenMessage] = field(default_factory=list)
    normalized: list[str] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    suggestions: list[tuple[str, str, float, str]] = field(default_factory=list)
    merges: int = 0


def run_gateway(messages: Sequence[GenMessage], db_path: Path, batch: int = 200) -> Run:
    """Feed messages in time order through the resolver and the threading on a fresh SQLite database."""
    engine = make_engine(f"sqlite:///{db_path}", sqlite_synchronous="off")
    migrate(engine)
    rules = identity_rules()
    settings = ConversationsConfig()
    run = Run()
    started = time.perf_counter()
    for start in range(0, len(messages), batch):
        with engine.begin() as conn:
            for gm in messages[start:start + batch]:
                try:
                    message = to_message(gm, rules)
                except (InvalidIdentifier, ValueError) as exc:
                    run.rejected[f"{gm.form}: {type(exc).__name__}"] += 1
                    continue
                resolution = resolve_customer(conn, message.sender, message_id=message.id, rules=rules)
                if resolution.created:
                    suggest_for_new_customer(conn, resolution.customer_id, 85.0)
                assignment = assign_conversation(conn, message, resolution.customer_id, settings)
                run.fed.append(gm)
                run.customer.append(resolution.customer_id)
                run.conversation.append(assignment.conversation_id)
                run.rules[assignment.rule] += 1
                run.normalized.append(message.sender.identifiers[-1].value)
    run.seconds = time.perf_counter() - started
    with engine.connect() as conn:
        merged_into = dict(conn.execute(select(customers.c.id, customers.c.merged_into)).all())
        run.suggestions = [tuple(r) for r in conn.execute(select(  # type: ignore[misc]
            merge_suggestions.c.customer_a, merge_suggestions.c.customer_b, merge_suggestions.c.score,
            merge_suggestions.c.reason))]
        run.merges = len(conn.execute(select(merges.c.id)).all())
    engine.dispose()

    def live(cid: str) -> str:
        while merged_into.get(cid):
            cid = merged_into[cid]
        return cid

    run.customer = [live(cid) for cid in run.customer]
    run.suggestions = [(live(a), live(b), s, r) for a, b, s, r in run.suggestions]
    return run


def form_table(run: Run) -> list[dict[str, Any]]:
    """Per written form: messages, and how many normalised to a value that disagrees with the ground truth.

    A value disagrees when the handle's messages normalised to several values (a missed join: counted for the
    messages off the handle's most common value) or when one value stands for several handles (a wrong join).
    """
    by_key: dict[str, Counter[str]] = defaultdict(Counter)
    by_value: dict[str, set[str]] = defaultdict(set)
    for gm, value in zip(run.fed, run.normalized, strict=True):
        key = (gm.evidence or gm.isolated)[-1]
        by_key[key][value] += 1
        by_value[value].add(key)
    rows: dict[str, dict[str, Any]] = {}
    for gm, value in zip(run.fed, run.normalized, strict=True):
        key = (gm.evidence or gm.isolated)[-1]
        row = rows.setdefault(gm.form, {"form": gm.form, "messages": 0, "split": 0, "joined_wrongly": 0})
        row["messages"] += 1
        row["split"] += by_key[key].most_common(1)[0][0] != value
        row["joined_wrongly"] += len(by_value[value]) > 1
    for form, count in run.rejected.items():
        rows.setdefault(form, {"form": form, "messages": 0, "split": 0, "joined_wrongly": 0})["rejected"] = count
    return sorted(rows.values(), key=lambda r: r["form"])


def _false_merge_examples(run: Run, limit: int = 5) -> list[dict[str, Any]]:
    labels_of: dict[str, set[str]] = defaultdict(set)
    for cid, gm in zip(run.customer, run.fed, strict=True):
        labels_of[cid].add(gm.label)
    examples = []
    for cid, labels in labels_of.items():
        if len(labels) > 1:
            rows = [(gm.label, gm.form, json.dumps(gm.sender, ensure_ascii=False), gm.at.isoformat())
                    for c, gm in zip(run.customer, run.fed, strict=True) if c == cid]
            examples.append({"customer": cid, "labels": sorted(labels), "messages": rows[:8]})
            if len(examples) >= limit:
                break
    return examples


def _split_examples(run: Run, ideal: Sequence[Hashable], limit: int = 5) -> list[dict[str, Any]]:
    """Ideal clusters the gateway spread over several customers (evidence it did not use)."""
    customers_of: dict[Hashable, set[str]] = defaultdict(set)
    for cid, cluster in zip(run.customer, ideal, strict=True):
        customers_of[cluster].add(cid)
    examples = []
    for cluster, cids in customers_of.items():
        if len(cids) > 1:
            rows = [(gm.form, json.dumps(gm.sender, ensure_ascii=False), value, cid)
                    for cid, c, gm, value in zip(run.customer, ideal, run.fed, run.normalized, strict=True)
                    if c == cluster]
            examples.append({"customers": len(cids), "messages": rows[:8]})
            if len(examples) >= limit:
                break
    return examples


def evaluate(people: int = 10_000, seed: int = 5, workdir: Path | None = None) -> dict[str, Any]:
    """Generate, run the gateway, score. Returns every figure (JSON-serialisable)."""
    population, messages = generate(people, seed)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        run = run_gateway(messages, Path(tmp) / "eval.db")
    fed = run.fed
    labels = [gm.label for gm in fed]
    ideal = ideal_clusters(fed)
    clustering = pairwise(run.customer, labels)
    customers_with_several = sum(1 for labels_ in _labels_by(run.customer, labels).values() if len(labels_) > 1)
    ideal_score = pairwise(ideal, labels)
    problems = [gm.problem for gm in fed]
    threads_ideal = ideal_threads(fed, ideal)
    person_level = pairwise(run.customer, [f"person:{gm.person}" for gm in fed])
    same_person_suggestions = 0
    labels_by_customer = _labels_by(run.customer, labels)
    for a, b, _score, _reason in run.suggestions:
        if labels_by_customer.get(a, set()) & labels_by_customer.get(b, set()):
            same_person_suggestions += 1
    return {
        "people": people, "seed": seed, "messages": len(messages), "fed": len(fed),
        "rejected": dict(run.rejected), "problems": len(set(problems)),
        "channels": dict(Counter(gm.channel for gm in fed)),
        "labels": dict(Counter(gm.label.split(":")[0] for gm in fed)),
        "households": sum(1 for p in population if p.household) // 2,
        "seconds": round(run.seconds, 1), "messages_per_second": round(len(fed) / run.seconds, 1),
        "clustering": clustering, "false_merges": clustering["wrong_pairs"],
        "customers_holding_several_labels": customers_with_several,
        "ideal": ideal_score, "recall_ceiling": ideal_score["recall"],
        "versus_ideal": pairwise(run.customer, ideal),
        "person_level": person_level,
        "threading": pairwise(run.conversation, problems),
        "threading_ideal": pairwise(threads_ideal, problems),
        "thread_rules": dict(run.rules),
        "contacts": contacts_per_person(run.customer, fed),
        "contacts_ideal": contacts_per_person(ideal, fed),
        "customers": len(set(run.customer)), "ideal_customers": len(set(ideal)),
        "merges": run.merges,
        "suggestions": {"total": len(run.suggestions), "same_person": same_person_suggestions},
        "forms": form_table(run),
        "false_merge_examples": _false_merge_examples(run),
        "split_examples": _split_examples(run, ideal),
    }


def _labels_by(clusters: Sequence[Hashable], labels: Sequence[str]) -> dict[Hashable, set[str]]:
    out: dict[Hashable, set[str]] = defaultdict(set)
    for cluster, label in zip(clusters, labels, strict=True):
        out[cluster].add(label)
    return out


# ---- docs ------------------------------------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def render(r: dict[str, Any], command: str) -> str:
    """The docs/benchmarks.md section for one evaluation."""
    c, i, v, t, ti = r["clustering"], r["ideal"], r["versus_ideal"], r["threading"], r["threading_ideal"]
    verdict = "met" if r["false_merges"] == 0 else "**missed**"
    lines = [
        "## Customer identity and threading: evaluation",
        "",
        f"Generated by `{command}` ({r['seconds']} s, {r['messages_per_second']} messages/s through the resolver,",
        "suggestions and threading on SQLite). Data: `bench/identity_data.py`, seeded; scoring:",
        "`bench/identity_eval.py`.",
        "",
        f"{r['people']:,} people, {r['problems']:,} problems, {r['fed']:,} messages "
        f"({', '.join(f'{k} {n:,}' for k, n in sorted(r['channels'].items()))}); {r['households']} households share",
        f"a phone; {r['labels'].get('household', 0):,} messages come from a shared household phone and "
        f"{r['labels'].get('role', 0):,} from a company's role address. Rejected as unparseable: "
        f"{sum(r['rejected'].values())}.",
        "",
        "| customer clustering (pairwise over messages) | gateway | ideal from strong evidence |",
        "|---|---:|---:|",
        f"| precision | {_pct(c['precision'])} | {_pct(i['precision'])} |",
        f"| recall | {_pct(c['recall'])} | {_pct(i['recall'])} (the ceiling) |",
        f"| false merges (pairs of messages of different people in one customer) | {c['wrong_pairs']:,} | "
        f"{i['wrong_pairs']:,} |",
        f"| customers holding more than one person or shared handle | {r['customers_holding_several_labels']} | 0 |",
        f"| customers | {r['customers']:,} | {r['ideal_customers']:,} |",
        f"| CRM contacts per person (mean) | {r['contacts']['mean']:.3f} | {r['contacts_ideal']['mean']:.3f} |",
        f"| people with exactly one contact | {_pct(r['contacts']['one_contact_share'])} | "
        f"{_pct(r['contacts_ideal']['one_contact_share'])} |",
        "",
        f"Zero false merges: {verdict}. Against the ideal clustering itself the gateway scores precision "
        f"{_pct(v['precision'])} and recall {_pct(v['recall'])}: it joins exactly what the evidence joins"
        + (" and nothing else." if v["precision"] == 1 and v["recall"] == 1 else "; see the differences below."),
        f"Merges recorded on the way (a channel-asserted link joining two existing customers): {r['merges']:,}.",
        f"Merge suggestions for review: {r['suggestions']['total']:,}, of which {r['suggestions']['same_person']:,} "
        "pair two customers of the same person (never applied by themselves).",
        "",
        "| threading (pairwise: same problem <-> same conversation) | gateway | "
        "same rules on the final ideal clustering |",
        "|---|---:|---:|",
        f"| precision | {_pct(t['precision'])} | {_pct(ti['precision'])} |",
        f"| recall | {_pct(t['recall'])} | {_pct(ti['recall'])} |",
        "",
        "Thread rules used: " + ", ".join(f"{k} {n:,}" for k, n in sorted(r["thread_rules"].items())) + ".",
        "The right-hand column knows every link from the start; the gateway learns a link (a Slack profile",
        "address that changed) only when it arrives, so a conversation opened before that stays apart. Threading",
        "recall is bounded by clustering: a problem texted about and then emailed about lands on one ticket only",
        "when something strong ties the phone to the address.",
        "",
        "How the ground truth treats shared handles. Two people who share a family phone are two people, but a",
        "message sent from that phone carries nothing but the number, so no system can tell which of them wrote",
        "it. Such messages are labelled with the household, not a person: they count as belonging together, and a",
        "customer holding both household messages and a member's own messages (email, own phone) is a false merge.",
        "Role addresses (`support@`, `info@` of a company, used by several colleagues) are scored the same way.",
        "Precision and recall above are over these attribution labels. Scored by true author instead, the gateway's",
        f"precision is {_pct(r['person_level']['precision'])}: the {r['person_level']['wrong_pairs']:,} pairs it",
        "loses are messages of two household members or two colleagues that share a handle, which any",
        "identifier-keyed system puts together; none of them joins a person's own identifiers to anyone else.",
        "",
        "The recall ceiling is below 100 % because nothing strong links some of a person's handles: a phone and an",
        "email address are never asserted together by these channels (only a CRM record or an admin merge could),",
        "and `+tags` and case changes on domains without a rule are, by RFC 5321, possibly different mailboxes.",
        "Email rules used: Gmail-style (case, `+tag`, dots, googlemail.com) for gmail.com; case and `+tag` for",
        "outlook/hotmail domains; case folding for every other domain.",
        "",
        "Normalisation by written form (split: messages whose value differs from the one most of the handle's",
        "messages got; joined wrongly: messages whose value stands for two handles):",
        "",
        "| form | messages | split | joined wrongly | rejected |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {f['form']} | {f['messages']:,} | {f['split']} | {f['joined_wrongly']} | {f.get('rejected', 0)} |"
              for f in r["forms"]]
    if r["false_merge_examples"]:
        lines += ["", "False merges (first examples):", "", "```",
                  json.dumps(r["false_merge_examples"], indent=1, ensure_ascii=False), "```"]
    if r["split_examples"]:
        lines += ["", "Evidence the gateway did not use (first ideal clusters spread over several customers):", "",
                  "```", json.dumps(r["split_examples"], indent=1, ensure_ascii=False), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    result = evaluate(args.people, args.seed)
    page = render(result, " ".join([".venv/bin/python -m bench.identity_eval", *(argv or sys.argv[1:])]).strip())
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    if not args.no_docs:
        write_section("identity-eval", page)
    print(page)
    if result["false_merges"]:
        sys.exit(f"{result['false_merges']} false merge pairs")


if __name__ == "__main__":
    main()
