"""``gateway crm``: what a CRM needs so that agents' replies reach the customers."""

from __future__ import annotations

from pathlib import Path

import click
import requests

from gateway.cli_support import config_option, load
from gateway.plugins import AgentReplies, Registry, ReplySetup
from gateway.runtime import build_connectors, connector_context


@click.group("crm")
def crm_group() -> None:
    """CRM set-up for two-way conversations."""


@crm_group.command("setup")
@config_option
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Print what would be created; change nothing.")
def setup(config_path: Path, name: str, dry_run: bool) -> None:
    """Create in the CRM what tells the gateway of agent replies (webhook, trigger, ...); safe to run twice."""
    config = load(config_path)
    session = requests.Session()
    _, crms = build_connectors(config, Registry.from_entry_points(), connector_context(config, session, engine=None))
    crm = crms.get(name)
    if crm is None:
        raise click.UsageError(f"no crm named {name!r} in {config_path}")
    if not isinstance(crm, ReplySetup):
        how = ("it takes signed replies at /crm-hooks/" + name + " (set reply_secret)"
               if isinstance(crm, AgentReplies) else "it does not take agent replies")
        raise click.UsageError(f"{name} ({crm.type_name}) needs no set-up: {how}")
    hook_url = f"{config.settings.server.public_url}/crm-hooks/{name}"
    try:
        lines = crm.setup_replies(hook_url, dry_run=dry_run)
    except Exception as exc:
        raise click.ClickException(f"{name}: set-up failed: {exc}") from None
    for line in lines:
        click.echo(line)
