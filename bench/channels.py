"""Per-channel ingest benchmark: Slack, Meta (WhatsApp), X and Twilio webhooks through the real gateway server,
against the bare Flask endpoint of ``bench/ingest.py``, in one run.

One ``gateway serve`` carries all four channels; the bare baseline (``bench/bare.py``) takes the Twilio SMS
requests of ``bench/loadgen.py``. Each round runs every target once, in alternating order, with the load generator
in its own process (this module with ``--loadgen``: it signs each channel's documented payload, each with a unique
message id, before the clock starts, then drives ``loadgen.closed_loop`` / ``loadgen.open_loop``). Figures are
medians; afterwards every 2xx answer must be an inbox row.

    .venv/bin/python -m bench.channels --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import hmac
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import ingest, loadgen
from bench.docs import write_section
from bench.stalls import STALL_MS, probing

ROOT = Path(__file__).resolve().parent.parent
SLACK_SECRET = "bench-slack-secret"
META_SECRET = "bench-meta-secret"
X_SECRET = "bench-x-secret"
X_USER = "3001969357"
CHANNELS = ("slack", "meta", "x", "twilio")
RATIO_TARGET = 0.6
P99_TARGET_MS = 20.0


def write_config(folder: Path, port: int, settings: ingest.Settings) -> Path:
    """The gateway config of ``bench/ingest.py`` with the Slack, Meta and X channels added."""
    path = ingest.write_config(folder, port, settings)
    text = path.read_text(encoding="utf-8").replace("channels:\n", f"""channels:
  slack: {{type: slack, signing_secret: "{SLACK_SECRET}", bot_token: "xoxb-bench"}}
  meta: {{type: meta, app_secret: "{META_SECRET}", verify_token: "bench-verify", access_token: "bench-access"}}
  x: {{type: x, consumer_secret: "{X_SECRET}", user_id: "{X_USER}"}}
""", 1)
    path.write_text(text, encoding="utf-8")
    return path


def _raw(host: str, port: int, name: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST /hooks/{name} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             *(f"{key}: {value}" for key, value in headers.items()), f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def slack_requests(host: str, port: int, run_id: int, count: int) -> list[bytes]:
    """Signed Events API deliveries: a DM per request, unique event_id and ts."""
    from slack_sdk.signature import SignatureVerifier

    verifier, out = SignatureVerifier(SLACK_SECRET), []
    stamp = str(int(time.time()))
    for i in range(count):
        ts = f"{1700000000 + i}.{run_id:06d}"
        body = json.dumps({
            "token": "bench", "team_id": "T0BENCH0001", "api_app_id": "A0BENCH0001", "type": "event_callback",
            "event_id": f"Ev{run_id:06d}{i:010d}", "event_time": 1700000000 + i,
            "event": {"type": "message", "channel": "D0BENCH0001", "user": f"U{i % 1000:08d}",
                      "text": f"Hello, my order {i} has not arrived yet", "ts": ts, "event_ts": ts,
                      "channel_type": "im"}}).encode()
        signature = verifier.generate_signature(timestamp=stamp, body=body) or ""
        out.append(_raw(host, port, "slack", body, {"X-Slack-Request-Timestamp": stamp,
                                                    "X-Slack-Signature": signature}))
    return out


def meta_requests(host: str, port: int, run_id: int, count: int) -> list[bytes]:
    """Signed WhatsApp Cloud API deliveries, one text message each with a unique wamid."""
    out = []
    for i in range(count):
        wa_id = f"1415555{i % 1000:04d}"
        body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                "contacts": [{"profile": {"name": f"Customer {i % 1000}"}, "wa_id": wa_id}],
                "messages": [{"from": wa_id, "id": f"wamid.BENCH{run_id:06d}{i:010d}", "timestamp": "1700000000",
                              "type": "text", "text": {"body": f"Hello, my order {i} has not arrived yet"}}]}}]}]}
                          ).encode()
        signature = "sha256=" + hmac.new(META_SECRET.encode(), body, hashlib.sha256).hexdigest()
        out.append(_raw(host, port, "meta", body, {"X-Hub-Signature-256": signature}))
    return out


def x_requests(host: str, port: int, run_id: int, count: int) -> list[bytes]:
    """Signed Account Activity deliveries, one direct message each with a unique event id."""
    from connectors.x import sign

    out = []
    for i in range(count):
        body = json.dumps({"for_user_id": X_USER, "direct_message_events": [{
            "type": "message_create", "id": f"{run_id:06d}{i:012d}", "created_timestamp": "1700000000000",
            "message_create": {"target": {"recipient_id": X_USER}, "sender_id": str(900000 + i % 1000),
                               "message_data": {"text": f"Hello, my order {i} has not arrived yet",
                                                "entities": {}}}}]}).encode()
        out.append(_raw(host, port, "x", body, {"x-twitter-webhooks-signature": sign(X_SECRET, body)}))
    return out


def build_requests(channel: str, host: str, port: int, public_url: str, run_id: int, count: int) -> list[bytes]:
    if channel == "twilio":
        return loadgen.signed_requests(host, port, public_url, run_id, count)
    return {"slack": slack_requests, "meta": meta_requests, "x": x_requests}[channel](host, port, run_id, count)


def _loadgen(args: argparse.Namespace) -> None:
    count = args.max_requests if args.mode == "closed" else int(args.rate * args.duration)
    requests = build_requests(args.channel, "127.0.0.1", args.port, args.public_url, args.run_id, count)
    gc.freeze()  # as in loadgen.main: no collection pauses over the prebuilt requests
    if args.mode == "closed":
        result = asyncio.run(loadgen.closed_loop("127.0.0.1", args.port, requests, args.concurrency, args.duration))
    else:
        result = asyncio.run(loadgen.open_loop("127.0.0.1", args.port, requests, args.rate, args.duration, 256))
    print(json.dumps(result))


class Target:
    """One measured thing: a channel on the gateway, or the bare baseline."""

    def __init__(self, label: str, server: ingest.Server, channel: str) -> None:
        self.label, self.server, self.channel = label, server, channel
        self.closed: list[dict[str, Any]] = []
        self.open: list[dict[str, Any]] = []

    def load(self, mode: str, settings: ingest.Settings, run_id: int, seconds: float) -> dict[str, Any]:
        command = [sys.executable, "-m", "bench.channels", "--loadgen", "--channel", self.channel,
                   "--port", str(self.server.port), "--public-url", f"http://127.0.0.1:{self.server.port}",
                   "--mode", mode, "--run-id", str(run_id), "--duration", str(seconds),
                   "--concurrency", str(settings.concurrency), "--rate", str(settings.rate)]
        with probing(str(self.server.database.parent)) as machine:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120,
                                  check=True)
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        result["machine"] = machine
        self.server.ok_total += result["ok"]
        return result


def run(settings: ingest.Settings, workdir: Path | None = None, verbose: bool = True) -> dict[str, Any]:
    base = Path(workdir or tempfile.mkdtemp(prefix="gw-bench-channels-"))
    gw_port, bare_port = ingest.free_port(), ingest.free_port()
    gw_config = write_config(base / "gateway", gw_port, settings)
    bare_config = ingest.write_config(base / "bare", bare_port, settings)
    python = sys.executable
    gateway = ingest.Server("gateway", [python, "-m", "gateway", "serve", "-c", str(gw_config)], gw_port,
                            base / "gateway" / "gateway.db")
    bare = ingest.Server("bare", [python, "-m", "bench.bare", "-c", str(bare_config)], bare_port,
                         base / "bare" / "gateway.db")
    targets = [Target("bare", bare, "twilio")] + [Target(c, gateway, c) for c in CHANNELS]
    run_id = 0

    def say(text: str) -> None:
        if verbose:
            print(text, file=sys.stderr, flush=True)

    try:
        for server in (gateway, bare):
            server.start(base / f"{server.name}.log")
        for target in targets:
            run_id += 1
            target.load("closed", settings, run_id, 1.0)  # warm-up
        for index in range(settings.rounds):
            for target in targets if index % 2 == 0 else targets[::-1]:
                run_id += 1
                result = target.load("closed", settings, run_id, settings.round_seconds)
                target.closed.append(result)
                say(f"  round {index + 1} {target.label}: {result['rps']:.0f} req/s, p99 {result['p99_ms']} ms, "
                    f"non-2xx {result['non_2xx']}, errors {result['errors']}")
        for index in range(settings.latency_rounds):
            for target in targets if index % 2 == 0 else targets[::-1]:
                run_id += 1
                result = target.load("open", settings, run_id, settings.latency_seconds)
                target.open.append(result)
                say(f"  latency {index + 1} {target.label} @ {settings.rate:.0f}/s: p50 {result['p50_ms']} ms, "
                    f"p99 {result['p99_ms']} ms, non-2xx {result['non_2xx']}, errors {result['errors']}, "
                    f"worst machine stall {result['machine']['stall_max_ms']} ms, "
                    f"slowest fsync {result['machine']['fsync_max_ms']} ms")
    finally:
        for server in (gateway, bare):
            server.stop()

    def rows(path: Path) -> dict[str, int]:
        with sqlite3.connect(path) as conn:
            return dict(conn.execute("SELECT connector, count(*) FROM inbox GROUP BY connector").fetchall())

    stored = {"gateway": rows(gateway.database), "bare": rows(bare.database)}
    bare_rps = statistics.median(r["rps"] for r in targets[0].closed)
    out: dict[str, Any] = {"settings": settings.__dict__ | {"label": settings.label}, "workdir": str(base),
                           "inbox_rows": stored}
    for target in targets:
        rps = statistics.median(r["rps"] for r in target.closed)
        ok = sum(r["ok"] for r in target.closed + target.open)
        out[target.label] = {
            "rps_median": rps, "rps_rounds": [r["rps"] for r in target.closed],
            "ratio_to_bare": round(rps / bare_rps, 3) if bare_rps else None,
            "p50_ms_median": statistics.median(r["p50_ms"] for r in target.open),
            "p99_ms_median": statistics.median(r["p99_ms"] for r in target.open),
            "p99_ms_rounds": [r["p99_ms"] for r in target.open],
            "stall_max_ms_rounds": [r["machine"]["stall_max_ms"] for r in target.open],
            "fsync_max_ms_rounds": [r["machine"]["fsync_max_ms"] for r in target.open],
            "failures": sum(r["non_2xx"] + r["errors"] for r in target.closed + target.open),
            "ok_measured": ok,
        }
    # warm-up answers count too: compare the servers' 2xx totals with their inbox rows
    out["no_loss"] = {"gateway": sum(stored["gateway"].values()) == gateway.ok_total,
                      "bare": sum(stored["bare"].values()) == bare.ok_total}
    return out


def render(result: dict[str, Any], command: str, note: str = "") -> str:
    """The markdown section for docs/benchmarks.md."""
    s = result["settings"]
    lines = [
        "## Channel ingest (Slack, Meta, X, Twilio)",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. One `gateway serve`",
        "carries the `slack`, `meta`, `x` and `twilio` channels; each receives its own signed, documented payload",
        "(Slack `event_callback` DM, WhatsApp Cloud API text, X direct message, Twilio SMS), each with a unique id.",
        "The baseline is the bare Flask endpoint of `bench/bare.py` taking the Twilio SMS requests, run side by",
        f"side. Server: {s['label']}. Throughput: closed loop, {s['concurrency']} connections, {s['rounds']}",
        f"alternating rounds of {s['round_seconds']} s; latency: open loop at {s['rate']:.0f} req/s for "
        f"{s['latency_seconds']} s x {s['latency_rounds']}. Medians.",
        "",
        f"| target | req/s | x bare (target >= {RATIO_TARGET}) | p50 ms @ {s['rate']:.0f}/s | p99 ms "
        f"(target < {P99_TARGET_MS:.0f}) | p99 ms per round | worst machine stall ms per round | slowest fsync ms "
        "per round | failures |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label in ("bare", *CHANNELS):
        row = result[label]
        ratio = row["ratio_to_bare"]
        ratio_text = "1.0 (baseline)" if label == "bare" else (
            f"{ratio:.2f} {'met' if ratio >= RATIO_TARGET else '**missed**'}")
        p99 = row["p99_ms_median"]
        p99_text = f"{p99:.2f}" + ("" if label == "bare" else (" met" if p99 < P99_TARGET_MS else " **missed**"))
        rounds = ", ".join(f"{value:.1f}" for value in row["p99_ms_rounds"])
        stalls = ", ".join(f"{value:.1f}" for value in row["stall_max_ms_rounds"])
        fsyncs = ", ".join(f"{value:.1f}" for value in row["fsync_max_ms_rounds"])
        lines.append(f"| {label} | {row['rps_median']:.0f} | {ratio_text} | {row['p50_ms_median']:.2f} | "
                     f"{p99_text} | {rounds} | {stalls} | {fsyncs} | {row['failures']} |")
    loss = result["no_loss"]
    lines += ["", f"Every 2xx answer is an inbox row: gateway {'yes' if loss['gateway'] else '**no**'}, "
              f"bare {'yes' if loss['bare'] else '**no**'}.", ""]
    lines += [f"The worst machine stall is how late `bench/stalls.py`, a probe sleeping 1 ms at a time beside the "
              "round, woke up: a stall of that length held up every process on the machine, servers and load "
              f"generator included (stalls over {STALL_MS:g} ms are counted in the raw figures). The slowest fsync "
              "is the same probe's: 4 KiB appended and fsynced every 50 ms beside the databases, as each commit "
              "with `synchronous=full` is.", ""]
    if note:
        lines += [note, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--channel", choices=CHANNELS, default="twilio", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--public-url", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["closed", "open"], help=argparse.SUPPRESS)
    parser.add_argument("--run-id", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=3.0, help=argparse.SUPPRESS)
    parser.add_argument("--max-requests", type=int, default=30000, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=ingest.Settings.processes)
    parser.add_argument("--threads", type=int, default=ingest.Settings.threads)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    parser.add_argument("--latency-rounds", type=int, default=5)
    parser.add_argument("--no-doc", action="store_true", help="print the results only")
    parser.add_argument("--note", default="", help="a sentence added under the table (e.g. machine conditions)")
    args = parser.parse_args(argv)
    if args.loadgen:
        _loadgen(args)
        return
    settings = ingest.Settings(args.processes, args.threads, args.synchronous, args.concurrency, args.rounds,
                               args.round_seconds, args.rate, args.latency_seconds, args.latency_rounds)
    result = run(settings)
    raw = ROOT / "docs" / "benchmarks-channels.json"
    print(json.dumps(result, indent=2))
    if not args.no_doc:
        raw.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        command = " ".join(["python -m bench.channels", *(a for a in sys.argv[1:] if a != args.note)])
        write_section("channels", render(result, command.replace(" --note", ""), args.note))


if __name__ == "__main__":
    main()
