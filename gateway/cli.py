"""The ``gateway`` command."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from gateway.cli_admin import admin_group
from gateway.cli_crm import crm_group
from gateway.cli_customers import customers_group
from gateway.cli_kpis import kpis_command
from gateway.cli_retention import retention_group
from gateway.cli_support import (
    CONFIG_NOTE,
    GatewayGroup,
    config_option,
    ensure_listen_free,
    load,
    unused_variables,
)
from gateway.yamlsource import ConfigError


def _load(config_path: Path, *, starting: bool = False) -> Any:
    return load(config_path, starting=starting)


@click.group(cls=GatewayGroup)
@click.version_option(package_name="channel-gateway", prog_name="gateway")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log format; default from the config's logging.format.")
@click.option("--debug", is_flag=True, envvar="GATEWAY_DEBUG", help="Show the traceback of an unexpected error.")
@click.pass_context
def main(ctx: click.Context, log_format: str | None, debug: bool) -> None:
    """Customer-support channel gateway: every customer channel into the CRM you already have.

    Each command reads the config file given with -c, else the one $GATEWAY_CONFIG names, else ./config.yaml.
    """
    ctx.obj = {"log_format": log_format}


def _logging(ctx: click.Context, config: Any) -> str:
    from gateway.logs import setup_logging_for

    fmt = ctx.obj["log_format"] or config.settings.logging.format
    setup_logging_for(config, fmt)
    if CONFIG_NOTE in ctx.meta:
        logging.getLogger("gateway").info("%s", ctx.meta[CONFIG_NOTE])
    return fmt


@main.command()
@config_option
@click.option("--online", is_flag=True, help="Also test each connector's credentials and reachability.")
def check(config_path: Path, online: bool) -> None:
    """Validate a config file and its mappings; list every error as FILE:LINE path: message."""
    config = _load(config_path)
    click.echo(f"{config_path}: valid ({len(config.channels)} channels, {len(config.crms)} crms, "
               f"{len(config.settings.routes)} routes)")
    if not online:
        return
    import requests

    from gateway.plugins import Registry, online_failure
    from gateway.runtime import build_connectors, connector_context

    channels, crms = build_connectors(config, Registry.from_entry_points(),
                                      connector_context(config, requests.Session(), engine=None))
    failures = 0
    for name, connector in [*channels.items(), *crms.items()]:
        try:
            click.echo(f"  {name}: ok: {connector.check_online()}")
        except Exception as exc:  # a connector without @online_check is held to the same contract here
            failures += 1
            click.echo(f"  {name}: FAILED: {online_failure(connector, exc).reason}", err=True)
    from gateway.mapping_check import check_against_crms

    for line in check_against_crms(config, Registry.from_entry_points(), crms):
        failures += 1
        click.echo(line, err=True)
    sys.exit(1 if failures else 0)


@main.command()
@click.option("--markdown", is_flag=True, help="Print the reference as Markdown (docs/connectors.md).")
@click.argument("types", nargs=-1)
def connectors(markdown: bool, types: tuple[str, ...]) -> None:
    """List installed connector types and their settings: all of them, or the TYPES named."""
    from gateway.docs import connectors_markdown, connectors_text
    from gateway.plugins import Registry

    registry = Registry.from_entry_points()
    if types:
        chosen = {name: registry.get(name) for name in types}
        unknown = [name for name, cls in chosen.items() if cls is None]
        if unknown:
            raise click.UsageError(f"no installed connector type {', '.join(map(repr, unknown))}; "
                                   f"installed: {', '.join(registry.names())}")
        registry = Registry((name, cls) for name, cls in chosen.items() if cls is not None)
    click.echo(connectors_markdown(registry) if markdown else connectors_text(registry), nl=False)


@main.command()
@config_option
@click.pass_context
def run(ctx: click.Context, config_path: Path) -> None:
    """Run everything: web server, workers and scheduler."""
    from gateway.runtime import build_runtime
    from gateway.server import run_all, worker_stages

    config = _load(config_path, starting=True)
    ensure_listen_free(config.settings.server.listen)
    fmt = _logging(ctx, config)
    for warning in unused_variables(config):
        logging.getLogger("gateway").warning("%s", warning)
    build_runtime(config).close()  # migrate once, before the children start
    logging.getLogger("gateway").info("gateway listening on %s; webhooks at %s/hooks/<channel>",
                                      config.settings.server.listen, config.settings.server.public_url)
    sys.exit(run_all(config_path, fmt, worker_stages(config)))


@main.command()
@config_option
@click.pass_context
def serve(ctx: click.Context, config_path: Path) -> None:
    """Run only the web server (scale out: several of these behind a load balancer)."""
    from gateway.runtime import build_runtime
    from gateway.server import ensure_multiprocess_metrics_dir
    from gateway.server import serve as serve_forever

    config = _load(config_path, starting=True)
    fmt = _logging(ctx, config)
    ensure_multiprocess_metrics_dir()
    build_runtime(config).close()
    serve_forever(config, fmt)


@main.command()
@config_option
@click.option("--stage", type=click.Choice(["pipeline", "delivery"]), default=None,
              help="Run one stage: 'pipeline' (inbox to outbox) or 'delivery' (outbox to the CRMs, replies, notes "
                   "and the scheduled jobs); one process of each uses two cores. Default: every stage.")
@click.pass_context
def work(ctx: click.Context, config_path: Path, stage: str | None) -> None:
    """Run only the workers (pipeline, delivery) and the scheduler, in this one process."""
    from gateway.runtime import build_runtime
    from gateway.worker import WorkerProcess

    config = _load(config_path, starting=True)
    _logging(ctx, config)
    runtime = build_runtime(config)
    code = WorkerProcess(runtime, stage=stage).run_forever()
    runtime.close()
    if code:
        logging.shutdown()
        os._exit(code)  # a stuck thread cannot be joined, and interpreter exit would wait for it


@main.command()
@config_option
@click.argument("name")
@click.option("--from", "sender", default=None, help="Sender, as the provider would write it (+14155550100).")
@click.option("--text", required=True)
@click.option("--to", "recipient", default=None, help="Recipient (the business number).")
@click.option("--agent-reply", is_flag=True,
              help="NAME is a crm: post a signed agent reply to it, as the CRM would (the reply then goes out).")
@click.option("--conversation", default=None, help="With --agent-reply: the conversation; default the latest one.")
@click.option("--url", default=None, help="Where to send it; default http://{server.listen}.")
@click.option("--dry-run", is_flag=True, help="Send nothing: show the acknowledgement the message would get.")
@click.option("--at", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="With --dry-run: when the message is written (ISO 8601, UTC without an offset); default now.")
def simulate(config_path: Path, name: str, sender: str | None, text: str, recipient: str | None, agent_reply: bool,
             conversation: str | None, url: str | None, dry_run: bool, at: datetime | None) -> None:
    """Send a correctly signed sample request to the running gateway: a customer's message, or an agent's reply."""
    import requests

    from gateway.plugins import AgentReplies, Registry, WebhookChannel
    from gateway.runtime import build_connectors, connector_context

    config = _load(config_path)
    channels, crms = build_connectors(config, Registry.from_entry_points(),
                                      connector_context(config, requests.Session(), engine=None))
    if dry_run:
        from gateway.ack_preview import preview_lines

        if not isinstance(channels.get(name), WebhookChannel) or sender is None:
            raise click.UsageError("--dry-run needs a webhook channel's name and --from")
        when = at.replace(tzinfo=at.tzinfo or UTC) if at is not None else datetime.now(UTC)
        click.echo("\n".join(preview_lines(config, channels, channels[name], sender=sender, text=text,  # type: ignore[arg-type]
                                            recipient=recipient, at=when)))
        return
    base = (url or f"http://{config.settings.server.listen}").rstrip("/")
    if agent_reply:
        crm = crms.get(name)
        if not isinstance(crm, AgentReplies):
            raise click.UsageError(f"no crm named {name!r} that takes agent replies in {config_path}")
        conversation = conversation or _latest_conversation(config)
        public = f"{config.settings.server.public_url}/crm-hooks/{name}"
        try:
            sample = crm.sample_reply_hook(conversation_id=conversation, text=text, public_url=public)
        except (NotImplementedError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
        target = f"{base}/crm-hooks/{name}"
    else:
        connector = channels.get(name)
        if connector is not None and not isinstance(connector, WebhookChannel):
            raise click.ClickException(
                f"{name} is an {connector.type_name} channel: it reads a mailbox, there is no request to simulate. "
                "Send a mail to that mailbox, or try it locally with a Dovecot on loopback (README: "
                "'Trying an IMAP channel locally')." if connector.type_name == "imap" else
                f"{name} ({connector.type_name}) takes no webhooks: there is no request to simulate")
        if connector is None:
            raise click.UsageError(f"no channel named {name!r} in {config_path}; channels: {', '.join(channels)}")
        if sender is None:
            raise click.UsageError("--from is required for a customer's message")
        public = f"{config.settings.server.public_url}/hooks/{name}"
        try:
            sample = connector.sample_request(sender=sender, text=text, recipient=recipient, public_url=public)
        except NotImplementedError:
            raise click.ClickException(f"{name} ({connector.type_name}) cannot simulate requests") from None
        target = f"{base}/hooks/{name}"
    if sample.query_string:  # SendGrid's parse URL carries its secret ?token=
        target = f"{target}?{sample.query_string}"
    shown = target.split("?", 1)[0]
    try:
        response = requests.post(target, data=sample.body, headers=dict(sample.headers), timeout=10)
    except requests.ConnectionError:
        raise click.ClickException(
            f"nothing answers at {base}: start the gateway (gateway run -c {config_path}) or, if it is starting, "
            "try again in a few seconds; --url sends elsewhere") from None
    except requests.Timeout:
        raise click.ClickException(f"{base} did not answer within 10 s: is the gateway overloaded?") from None
    click.echo(f"POST {shown} -> {response.status_code} {response.text.strip()[:200]}")
    sys.exit(0 if response.ok else 1)


def _latest_conversation(config: Any) -> str:
    from sqlalchemy import select

    from gateway.runtime import storage_url
    from gateway.storage.db import make_engine
    from gateway.storage.tables import conversations

    engine = make_engine(storage_url(config))
    try:
        with engine.connect() as conn:
            found = conn.execute(select(conversations.c.id).order_by(
                conversations.c.last_activity_at.desc()).limit(1)).scalar()
    finally:
        engine.dispose()
    if found is None:
        raise click.UsageError("no conversation yet: simulate a customer's message first, or give --conversation")
    click.echo(f"conversation {found}")
    return str(found)


@main.group()
def dlq() -> None:
    """Dead letters: list, show, replay, discard."""


def _queues(config_path: Path) -> Any:
    from gateway.runtime import build_runtime

    return build_runtime(_load(config_path)).queues


@dlq.command("list")
@config_option
@click.option("--all", "include_resolved", is_flag=True, help="Include replayed and discarded ones.")
def dlq_list(config_path: Path, include_resolved: bool) -> None:
    """List the open dead letters (with --all, the replayed and discarded ones too), newest first; at most 100."""
    letters = _queues(config_path).list_dead_letters(include_resolved)
    if not letters:
        click.echo("no dead letters")
        return
    click.echo(f"{'ID':>6}  {'CREATED (UTC)':<16}  {'STAGE':<8} {'TARGET':<16} {'CLASS':<11} {'CODE':<18} "
               f"{'STATE':<9} REASON")
    for letter in letters:
        state = letter.resolution or "open"
        click.echo(f"{letter.id:>6}  {letter.created_at:%Y-%m-%d %H:%M}  {letter.stage:<8} {letter.target:<16} "
                   f"{letter.error_class:<11} {letter.error_code or '-':<18} {state:<9} {letter.reason[:80]}")


@dlq.command("show")
@config_option
@click.argument("letter_id", type=int)
def dlq_show(config_path: Path, letter_id: int) -> None:
    """Print one dead letter as JSON, with the inbox or outbox row it came from."""
    from sqlalchemy import select

    from gateway.storage.tables import inbox, outbox

    queues = _queues(config_path)
    letter = queues.get_dead_letter(letter_id)
    if letter is None:
        raise click.ClickException(f"no dead letter {letter_id}")
    out = dict(letter._mapping)
    table = inbox if letter.stage == "pipeline" else outbox
    with queues.engine.connect() as conn:
        source = conn.execute(select(table).where(table.c.id == letter.source_id)).first()
    if source is not None:
        row = dict(source._mapping)
        if "body" in row:
            row["body"] = row["body"].decode("utf-8", "replace")
        out["source"] = row
    click.echo(json.dumps(out, indent=2, default=str, ensure_ascii=False))


@dlq.command("replay")
@config_option
@click.argument("letter_ids", type=int, nargs=-1, required=True)
def dlq_replay(config_path: Path, letter_ids: tuple[int, ...]) -> None:
    """Put the rows of these dead letters back in their queue, to be processed again."""
    _resolve(config_path, letter_ids, "replayed")


@dlq.command("discard")
@config_option
@click.argument("letter_ids", type=int, nargs=-1, required=True)
def dlq_discard(config_path: Path, letter_ids: tuple[int, ...]) -> None:
    """Mark these dead letters as discarded: they are kept, and never processed again."""
    _resolve(config_path, letter_ids, "discarded")


def _resolve(config_path: Path, letter_ids: tuple[int, ...], resolution: str) -> None:
    queues = _queues(config_path)
    missing = [i for i in letter_ids if not queues.resolve_dead_letter(i, resolution)]
    for letter_id in letter_ids:
        if letter_id not in missing:
            click.echo(f"{letter_id}: {resolution}")
    if missing:
        raise click.ClickException(f"not open dead letters: {', '.join(map(str, missing))}")


@main.command()
@click.option("--check", "check_only", is_flag=True, help="Exit 1 if a file differs from the models.")
@click.option("--output-dir", type=click.Path(path_type=Path), default=Path("docs/schema"), show_default=True)
def schema(check_only: bool, output_dir: Path) -> None:
    """Write the JSON Schemas of the canonical message and of mapping files."""
    from gateway.mapping import render_mapping_schema
    from gateway.model import render_json_schema

    files = {"message.schema.json": render_json_schema(), "mapping.schema.json": render_mapping_schema()}
    for name, text in files.items():
        output = output_dir / name
        if check_only:
            current = output.read_text(encoding="utf-8") if output.exists() else ""
            if current != text:
                raise click.ClickException(f"{output} is stale: run 'gateway schema'")
            continue
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")


@main.group()
def db() -> None:
    """Storage schema."""


@db.command("upgrade")
@config_option
def db_upgrade(config_path: Path) -> None:
    """Apply pending migrations."""
    from gateway.runtime import build_runtime

    build_runtime(_load(config_path), migrate_schema=True).close()
    click.echo("schema is up to date")


@main.group()
def mapping() -> None:
    """Mappings from canonical messages to CRM fields."""


@mapping.command("test")
@click.argument("files", type=click.Path(exists=True, path_type=Path), nargs=-1, required=True)
def mapping_test(files: tuple[Path, ...]) -> None:
    """Check each mapping (as 'gateway check' does) and run its sibling NAME.tests.yaml."""
    from gateway.mapping import mappings_named, run_mapping_tests

    failed = 0
    for path in mappings_named(list(files)):
        try:
            failures = run_mapping_tests(path)
        except ConfigError as exc:
            failures = [str(issue) for issue in exc.issues]
        for line in failures:
            click.echo(line, err=True)
        failed += bool(failures)
        click.echo(f"{path}: {'FAILED' if failures else 'ok'}")
    sys.exit(1 if failed else 0)


main.add_command(customers_group, "customers")
main.add_command(crm_group, "crm")
main.add_command(retention_group, "retention")
main.add_command(admin_group, "admin")
main.add_command(kpis_command, "kpis")
