"""What every ``gateway`` command shares: finding the config file, loading it, and errors told in a sentence."""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from gateway.redact import redact
from gateway.yamlsource import ConfigError

CONFIG_ENV = "GATEWAY_CONFIG"
DEFAULT_CONFIG = Path("config.yaml")
STARTING = ("run", "serve", "work")  # the commands that log; the others answer on stdout and stderr
CONFIG_NOTE = "gateway.config_note"


def _discover(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path:
    """``-c`` if given, else ``$GATEWAY_CONFIG``, else ``./config.yaml``; a discovered file is named on stderr
    (in the log of ``run``, ``serve`` and ``work``)."""
    if value is not None:
        return value
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        path, source = Path(from_env), f"named by ${CONFIG_ENV}"
        hint = ("write your config there (in the container image: docker run "
                "-v $PWD/config.yaml:/etc/gateway/config.yaml:ro ...), or give -c FILE")
    else:
        path, source = DEFAULT_CONFIG, f"in the current folder: no -c, no ${CONFIG_ENV}"
        hint = f"give -c FILE, set {CONFIG_ENV}, or start from the example: cp config.example.yaml config.yaml"
    if ctx.resilient_parsing:
        return path
    if not path.is_file():
        raise click.ClickException(f"no config file {path} ({source})\n{hint}")
    note = f"config: {path} ({source})"
    if ctx.command.name in STARTING:
        ctx.meta[CONFIG_NOTE] = note  # logged once logging is set up: a JSON log stays all JSON
    else:
        click.echo(note, err=True)
    return path


config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
    callback=_discover, help=f"Config file; default ${CONFIG_ENV}, else ./config.yaml.")


def load(config_path: Path, *, starting: bool = False) -> Any:
    """The config, or every error in it listed (``FILE:LINE path: message``) and exit 1."""
    from gateway.config import load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        click.echo(f"{len(exc.issues)} error(s){'; not starting' if starting else f' in {config_path}'}.", err=True)
        sys.exit(1)


# the variables the container image sets, and the setting each is meant for
IMAGE_VARIABLES = {"GATEWAY_LISTEN": ("server", "listen"), "GATEWAY_PUBLIC_URL": ("server", "public_url"),
                   "GATEWAY_STORAGE_URL": ("storage", "url"), "GATEWAY_DATA_DIR": (None, "data_dir")}


def unused_variables(config: Any) -> list[str]:
    """A warning for each ``GATEWAY_*`` variable that is set while the config does not take it (``${VAR}``)."""
    warnings = []
    for variable, (section, name) in IMAGE_VARIABLES.items():
        value = os.environ.get(variable)
        holder = getattr(config.settings, section) if section else config.settings
        if value and str(getattr(holder, name)) != value:
            setting = f"{section}.{name}" if section else name
            warnings.append(f"${variable} is set but {config.path} does not use it: {setting} comes from "
                            f"the config only (write {name}: \"${{{variable}}}\" there to take it)")
    return warnings


def ensure_listen_free(listen: str) -> None:
    """Refuse to start, in one line, when another process holds the address the web server is to bind."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        return  # a unix socket or a form gunicorn parses itself
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise click.ClickException(f"cannot listen on {listen}: another process is using it; stop it or set "
                                           "server.listen to a free address") from None
            raise click.ClickException(f"cannot listen on {listen}: {exc.strerror}; check server.listen") from None


def explain(exc: BaseException) -> list[str]:
    """An error no command handled, in at most two lines that say what to do."""
    import requests
    from sqlalchemy.exc import DBAPIError

    detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__)
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return [f"error: network: {detail[:300]}", "check the address and that the other side is running"]
    if isinstance(exc, DBAPIError):
        orig = redact(str(exc.orig).strip().splitlines()[0]) if exc.orig is not None else detail
        return [f"error: storage: {orig[:300]}", "check storage.url in the config and that the database is running"]
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return [f"error: {exc.strerror}{where}"]
    return [f"error: {exc.__class__.__name__}: {detail[:300]}",
            "unexpected: run again with --debug (or GATEWAY_DEBUG=1) for the traceback, and report it"]


class GatewayGroup(click.Group):
    """The top-level command group: an error a command did not expect ends in ``explain``'s lines, exit 1; its
    traceback only with ``--debug``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            for line in explain(exc):
                click.echo(line, err=True)
            ctx.exit(1)
