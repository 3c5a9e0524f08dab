"""``gateway retention``: remove what is past the config's ``retention:`` periods, on demand."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli_support import config_option, load


@click.group("retention")
def retention_group() -> None:
    """Retention: remove stored data past the periods set under ``retention:``."""


@retention_group.command("run")
@config_option
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
def retention_run(config_path: Path, dry_run: bool) -> None:
    """Remove now what the scheduled daily run would remove, and print what was removed per kind."""
    from gateway.retention import KINDS, retention_for
    from gateway.runtime import build_runtime

    runtime = build_runtime(load(config_path))
    try:
        removed = retention_for(runtime).run(dry_run=dry_run)
    finally:
        runtime.close()
    settings = runtime.config.settings.retention
    for kind, what in KINDS.items():
        days = getattr(settings, f"{kind}_days", None)
        period = "" if kind == "attachment_files" else (f" (after {days} days)" if days else " (kept: no period set)")
        click.echo(f"{kind:<18} {removed.get(kind, 0):>8}  {what}{' (dry run: would be)' if dry_run else ''}{period}")
