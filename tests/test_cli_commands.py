"""The ``gateway`` command as an admin meets it: where the config comes from, errors told in a sentence, and the
commands' output."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import responses
from click.testing import CliRunner, Result
from sqlalchemy.exc import OperationalError

from gateway.cli import main
from gateway.cli_support import unused_variables
from gateway.identity import IdentityRules, resolve_customer
from gateway.model import Identifier, IdentifierKind, Party
from gateway.plugins import Registry
from gateway.runtime import Runtime, build_runtime
from gateway.storage.db import make_engine, migrate
from gateway.web import create_app
from tests.conftest import BASE_CONFIG, ROOT
from tests.helpers import free_port

SENDGRID_TOKEN = "test-sendgrid-url-token-0123"


@pytest.fixture(autouse=True)
def no_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.delenv("GATEWAY_DEBUG", raising=False)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_sentence(result: Result, *, lines: int = 2) -> list[str]:
    """The command failed with at most ``lines`` lines on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    said = result.stderr.strip().splitlines()
    assert 1 <= len(said) <= lines, result.stderr
    assert "Traceback" not in result.stderr
    return said


# -- where the config comes from ------------------------------------------------------------------------------------

def test_config_comes_from_the_option_then_the_variable_then_the_current_folder(
        write_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_folder = write_config()
    other = write_config(name="other.yaml")
    monkeypatch.chdir(tmp_path)

    found = invoke("check")
    assert found.exit_code == 0, found.output
    assert found.stderr == "config: config.yaml (in the current folder: no -c, no $GATEWAY_CONFIG)\n"
    assert found.stdout.startswith("config.yaml: valid")

    monkeypatch.setenv("GATEWAY_CONFIG", str(other))
    named = invoke("check")
    assert named.stderr == f"config: {other} (named by $GATEWAY_CONFIG)\n"
    assert named.stdout.startswith(f"{other}: valid")

    given = invoke("check", "-c", str(in_folder))
    assert given.exit_code == 0 and given.stderr == ""
    assert given.stdout.startswith(f"{in_folder}: valid")


def test_no_config_anywhere_says_where_it_looked_and_what_to_do(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for command in (["check"], ["dlq", "list"], ["customers", "find", "x"], ["run"]):
        said = assert_sentence(invoke(*command))
        assert said == ["Error: no config file config.yaml (in the current folder: no -c, no $GATEWAY_CONFIG)",
                        "give -c FILE, set GATEWAY_CONFIG, or start from the example: "
                        "cp config.example.yaml config.yaml"], command
    monkeypatch.setenv("GATEWAY_CONFIG", str(tmp_path / "missing.yaml"))
    said = assert_sentence(invoke("dlq", "list"))
    assert said[0] == f"Error: no config file {tmp_path / 'missing.yaml'} (named by $GATEWAY_CONFIG)"


def test_only_starting_commands_say_not_starting(write_config: Callable[..., Path]) -> None:
    path = write_config(BASE_CONFIG + "bogus: 1\n")
    for command in ("check", "simulate"):
        args = [command, "-c", str(path)] + (["sms-main", "--text", "x"] if command == "simulate" else [])
        result = invoke(*args)
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines()[-1] == f"1 error(s) in {path}.", command
    for command in ("run", "serve", "work"):
        result = invoke(command, "-c", str(path))
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines()[-1] == "1 error(s); not starting.", command


# -- errors in a sentence -------------------------------------------------------------------------------------------

def test_simulate_with_no_gateway_running_says_to_start_it_or_wait(write_config: Callable[..., Path]) -> None:
    path = write_config()
    port = free_port()  # nothing listens there: what simulate meets while the gateway is down or still starting
    said = assert_sentence(invoke("simulate", "-c", str(path), "sms-main", "--from", "+14155550100", "--text", "hi",
                                  "--url", f"http://127.0.0.1:{port}"), lines=1)
    assert said == [f"Error: nothing answers at http://127.0.0.1:{port}: start the gateway (gateway run -c {path}) "
                    "or, if it is starting, try again in a few seconds; --url sends elsewhere"]


def test_simulate_on_an_imap_channel_says_how_to_try_one(write_config: Callable[..., Path]) -> None:
    path = write_config(BASE_CONFIG.replace(
        "channels:\n", "channels:\n  mail: {type: imap, host: imap.example.com, username: u, password: p}\n"))
    said = assert_sentence(invoke("simulate", "-c", str(path), "mail", "--from", "a@example.com", "--text", "hi"),
                           lines=1)
    assert "it reads a mailbox" in said[0] and "'Trying an IMAP channel locally'" in said[0]
    assert "Trying an IMAP channel locally" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_unreachable_storage_is_two_lines_and_the_traceback_waits_for_debug(write_config: Callable[..., Path]) -> None:
    path = write_config(storage_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    said = assert_sentence(invoke("dlq", "list", "-c", str(path)))
    assert said[0].startswith("error: storage: ") and "refused" in said[0]
    assert said[1] == "check storage.url in the config and that the database is running"
    debug = invoke("--debug", "dlq", "list", "-c", str(path))
    assert isinstance(debug.exception, OperationalError)


def test_an_unexpected_error_is_two_lines_that_say_how_to_see_more(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(cls: type[Registry]) -> Registry:
        raise RuntimeError("entry point table is corrupt\nsecond line")

    monkeypatch.setattr(Registry, "from_entry_points", classmethod(broken))
    said = assert_sentence(invoke("connectors"))
    assert said == ["error: RuntimeError: entry point table is corrupt",
                    "unexpected: run again with --debug (or GATEWAY_DEBUG=1) for the traceback, and report it"]
    monkeypatch.setenv("GATEWAY_DEBUG", "1")
    assert isinstance(invoke("connectors").exception, RuntimeError)


def test_a_taken_port_is_refused_before_anything_says_listening(write_config: Callable[..., Path]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = write_config(BASE_CONFIG.replace('listen: "127.0.0.1:0"', f'listen: "127.0.0.1:{port}"'))
        said = assert_sentence(invoke("run", "-c", str(path)), lines=1)
    assert said == [f"Error: cannot listen on 127.0.0.1:{port}: another process is using it; stop it or "
                    "set server.listen to a free address"]


def test_the_image_variables_a_config_does_not_use_are_named(write_config: Callable[..., Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(BASE_CONFIG.replace('listen: "127.0.0.1:0"', 'listen: "${GATEWAY_LISTEN}"'))
    monkeypatch.setenv("GATEWAY_LISTEN", "0.0.0.0:8080")
    monkeypatch.setenv("GATEWAY_PUBLIC_URL", "https://elsewhere.example.com")
    from gateway.config import load_config

    assert unused_variables(load_config(path)) == [
        f"$GATEWAY_PUBLIC_URL is set but {path} does not use it: server.public_url comes from the config only "
        '(write public_url: "${GATEWAY_PUBLIC_URL}" there to take it)']


# -- simulate --------------------------------------------------------------------------------------------------------

SENDGRID_CONFIG = f"""
storage: {{url: "{{storage_url}}"}}
server: {{listen: "127.0.0.1:0", public_url: "https://gw.example.com"}}
channels:
  mail: {{type: sendgrid, url_token: "{SENDGRID_TOKEN}"}}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl}}
routes:
  - {{from: [mail], to: trial}}
"""


@pytest.fixture
def sendgrid_gateway(write_config: Callable[..., Path]) -> Iterator[tuple[Path, Runtime]]:
    path = write_config(SENDGRID_CONFIG)
    from gateway.config import load_config

    runtime = build_runtime(load_config(path), http=requests.Session())
    yield path, runtime
    runtime.close()


def test_simulate_a_sendgrid_message_keeps_the_parse_url_token(sendgrid_gateway: tuple[Path, Runtime]) -> None:
    path, runtime = sendgrid_gateway
    client = create_app(runtime).test_client()
    seen: list[str] = []

    def gateway(request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(str(request.url))
        seen.append(url.query)
        answer = client.post(url.path, query_string=url.query, data=request.body,
                             headers={k: v for k, v in request.headers.items() if k != "Content-Length"})
        return answer.status_code, {}, answer.get_data()

    with responses.RequestsMock() as mocked:
        mocked.add_callback(responses.POST, re.compile(r"http://gw\.test/hooks/mail.*"), callback=gateway)
        result = invoke("simulate", "-c", str(path), "mail", "--from", "asha@example.com", "--text", "Hello there",
                        "--url", "http://gw.test")
    assert result.exit_code == 0, result.output
    assert seen == [f"token={SENDGRID_TOKEN}"]
    assert result.stdout.startswith("POST http://gw.test/hooks/mail -> 200")
    assert SENDGRID_TOKEN not in result.output


# -- dlq, customers, connectors, --version --------------------------------------------------------------------------

def test_every_dlq_command_has_help_and_list_has_a_header(runtime: Runtime) -> None:
    dlq = main.commands["dlq"]
    for name, command in dlq.commands.items():  # type: ignore[attr-defined]
        assert command.get_short_help_str(), f"dlq {name} has no help text"
    with runtime.engine.begin() as conn:
        runtime.queues.dead_letter(conn, stage="delivery", source_id=7, target="trial", error_class="permanent",
                                   reason="422 priorty is not a field", attempts=1, code="422")
    result = invoke("dlq", "list", "-c", str(runtime.config.path))
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["ID", "CREATED", "(UTC)", "STAGE", "TARGET", "CLASS", "CODE", "STATE", "REASON"]
    assert row.split()[3:8] == ["delivery", "trial", "permanent", "422", "open"]
    assert header.index("STAGE") == row.index("delivery") and header.index("REASON") == row.index("422 priorty")


RULES = IdentityRules()


def _customer(runtime: Runtime, kind: IdentifierKind, value: str, name: str | None = None) -> str:
    with runtime.engine.begin() as conn:
        party = Party(identifiers=(Identifier(kind=kind, value=value),), display_name=name)
        return resolve_customer(conn, party, message_id="m", rules=RULES).customer_id


@pytest.fixture
def three_customers(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ids = iter(["8c249776" + "1" * 24, "8c249776" + "2" * 24, "5e0f3a21" + "3" * 24])
    monkeypatch.setattr("gateway.identity.resolve.new_id", lambda: next(ids))
    return [_customer(runtime, IdentifierKind.PHONE, "+14155550100", "Asha"),
            _customer(runtime, IdentifierKind.EMAIL, "asha@example.com"),
            _customer(runtime, IdentifierKind.EMAIL, "ben@example.com", "Ben Ashton")]


def test_customers_merge_takes_a_unique_id_prefix_and_refuses_an_ambiguous_one(
        runtime: Runtime, three_customers: list[str]) -> None:
    asha_phone, asha_mail, ben = three_customers
    path = str(runtime.config.path)
    ambiguous = assert_sentence(invoke("customers", "merge", "-c", path, "8c249776", "5e0f", "--reason", "r"),
                                lines=1)
    assert ambiguous == [f"Error: 8c249776 is the start of several customer ids ({asha_phone}, {asha_mail}): "
                         "give more of it"]
    unknown = assert_sentence(invoke("customers", "merge", "-c", path, "ffff", "5e0f", "--reason", "r"), lines=1)
    assert unknown == ["Error: no customer ffff (use 'gateway customers find' for ids)"]
    merged = invoke("customers", "merge", "-c", path, "8c2497761", "8c2497762", "--reason", "same person")
    assert merged.exit_code == 0, merged.output
    assert merged.stdout.startswith(f"merge 1: {asha_mail} merged into {asha_phone}")
    assert ben != asha_phone


def test_customers_show_is_always_an_array_and_lists_each_merge_once(
        runtime: Runtime, three_customers: list[str]) -> None:
    asha_phone, asha_mail, ben = three_customers
    path = str(runtime.config.path)
    assert invoke("customers", "merge", "-c", path, asha_phone, asha_mail, "--reason", "same").exit_code == 0
    one = json.loads(invoke("customers", "show", "-c", path, "+1 415 555 0100").stdout)
    assert isinstance(one, list) and [c["id"] for c in one] == [asha_phone]
    assert [m["merge"] for m in one[0]["merges"]] == [1]
    several = json.loads(invoke("customers", "show", "-c", path, "Ash").stdout)
    assert sorted(c["id"] for c in several) == sorted([asha_phone, ben])
    by_name = json.loads(invoke("customers", "show", "-c", path, "Asha").stdout)
    assert [c["id"] for c in by_name] == [asha_phone]


def test_connectors_shows_one_named_type() -> None:
    result = invoke("connectors", "twilio")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("twilio (channel)")
    assert "zendesk" not in result.stdout and "slack (channel)" not in result.stdout


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"gateway, version {version('channel-gateway')}\n"


# -- migrations ------------------------------------------------------------------------------------------------------

def test_alembic_speaks_only_when_a_migration_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        with caplog.at_level(logging.INFO):
            migrate(engine)
            first = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
            caplog.clear()
            migrate(engine)
            again = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
    finally:
        engine.dispose()
    assert any(line.startswith("Running upgrade") for line in first)
    assert again == []
    assert logging.getLogger("alembic").level == logging.NOTSET


def test_package_metadata_uses_an_spdx_license_and_a_setuptools_that_reads_it() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == "Apache-2.0"
    for pattern in pyproject["project"]["license-files"]:
        assert list(ROOT.glob(pattern)), f"license-files: {pattern} matches nothing"
    floor = next(r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools"))
    assert tuple(int(p) for p in floor.split(">=")[1].split(".")) >= (77,)
