"""``gateway admin``: console accounts (add, set a password, remove, list)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Any

import click

from gateway.console.accounts import ROLES, AccountError, add_user, list_users, record, remove_user, set_password

_config = click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), default="config.yaml",
                       envvar="GATEWAY_CONFIG", show_default=True)
_stdin = click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")


def _engine(config_path: Path) -> Any:
    from gateway.cli import _load
    from gateway.runtime import build_runtime

    runtime = build_runtime(_load(config_path))
    runtime.http.close()
    return runtime.engine


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise click.ClickException("the passwords differ")
    return first


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@click.group()
def admin_group() -> None:
    """Console accounts: add-user, set-password, remove-user, users."""


@admin_group.command("add-user")
@_config
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="admin changes things; viewer only reads.")
@_stdin
def add_user_command(config_path: Path, name: str, role: str, password_stdin: bool) -> None:
    """Add a console account; the password is asked for on the terminal (or read from stdin)."""
    password = _password(password_stdin)
    engine = _engine(config_path)
    try:
        with engine.begin() as conn:
            add_user(conn, name, role, password)
            record(conn, _operator(), "user_added", name, {"role": role})
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"user {name} added ({role})")


@admin_group.command("set-password")
@_config
@click.argument("name")
@_stdin
def set_password_command(config_path: Path, name: str, password_stdin: bool) -> None:
    """Give an account a new password; its sessions end."""
    password = _password(password_stdin)
    engine = _engine(config_path)
    try:
        with engine.begin() as conn:
            set_password(conn, name, password)
            record(conn, _operator(), "password_set", name, {})
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"password of {name} changed; its sessions have ended")


@admin_group.command("remove-user")
@_config
@click.argument("name")
def remove_user_command(config_path: Path, name: str) -> None:
    """Remove a console account; its sessions end."""
    engine = _engine(config_path)
    try:
        with engine.begin() as conn:
            remove_user(conn, name)
            record(conn, _operator(), "user_removed", name, {})
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"user {name} removed")


@admin_group.command("users")
@_config
def users_command(config_path: Path) -> None:
    """List console accounts."""
    engine = _engine(config_path)
    try:
        with engine.connect() as conn:
            rows = list_users(conn)
    finally:
        engine.dispose()
    for row in rows:
        last = f"{row.last_login_at:%Y-%m-%d %H:%M}" if row.last_login_at else "never"
        click.echo(f"{row.name:<24} {row.role:<7} last login {last}{'  (disabled)' if row.disabled else ''}")
    if not rows:
        click.echo("no users")
