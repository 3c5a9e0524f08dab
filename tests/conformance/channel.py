"""The conformance suite every inbound channel connector subclasses.

A subclass is named ``Test...`` (this base is not, so pytest does not collect it on its own) and supplies:

- ``connector_class``, ``channel_name`` and ``channel_settings()``: the connector and its config under ``channels:``;
  ``make_connector()`` builds one from them (override it for connectors that need more context);
- ``signed_request(fixture, connector)``: a correctly signed ``HookRequest`` for one documented payload fixture;
- ``tamper(request)``: the same request with its signature (or signed content) changed;
- ``expected``: for each fixture, the inbox kind and the canonical fields of the messages it normalises to;
- ``malformed_requests(connector)``: bodies that are malformed, truncated or wrongly typed (signed where the
  connector's scheme allows it), each of which must be answered 400;
- ``has_timestamp`` + ``stale_request()`` for connectors whose signatures carry a timestamp (replay window), and
  ``has_handshake`` + ``handshake_request()`` for connectors with a subscription handshake.

Tests that only apply to some connectors are parametrized over what applies (see ``pytest_generate_tests``), so
nothing is skipped: a connector without timestamps gets no stale-timestamp case, and a connector without a handshake
has its GET refused with 405 instead.

Web-level tests use the Flask test client of ``gateway.web.create_app`` on the ``runtime`` fixture, whose ``config``
fixture this class overrides so the runtime carries the subclass's channel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from flask.testing import FlaskClient
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from gateway.config import GatewayConfig, load_config
from gateway.errors import HookRejected, SignatureInvalid
from gateway.model import Message
from gateway.pipeline import PipelineWorker
from gateway.plugins import ChannelConnector, ConnectorContext, secret_fields
from gateway.records import RawRecord
from gateway.runtime import Runtime
from gateway.storage.db import utcnow
from gateway.storage.tables import inbox, messages
from gateway.web import create_app
from gateway.webhooks import HookRequest
from gateway.worker import drain_once
from gateway.yamlsource import ConfigError
from tests.conftest import PUBLIC_URL

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
_MISSING = object()


@dataclass(frozen=True)
class Expected:
    """What one payload fixture must become.

    ``kind`` is the inbox kind the ingress stores it under; ``messages`` holds, per canonical message, the fields
    it must carry as dotted paths into ``Message.model_dump(mode="json")`` (``sender.identifiers``,
    ``attachments.0.content_type``, ``extras.WaId``). An empty ``messages`` means the item normalises to nothing.
    ``provider_ids``, when given, are the inbox keys the request must be stored under.
    """

    kind: str
    messages: tuple[dict[str, Any], ...] = ()
    provider_ids: tuple[str, ...] = ()


def field_at(data: Any, path: str) -> Any:
    """The value at a dotted path in dumped JSON data (integer segments index lists); ``_MISSING`` if absent."""
    for part in path.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return _MISSING
    return data


def assert_fields(dumped: dict[str, Any], fields: dict[str, Any]) -> None:
    """Every expected dotted field equals the dumped message's value; all mismatches reported together."""
    wrong = {}
    for path, want in fields.items():
        got = field_at(dumped, path)
        if got != want:
            wrong[path] = {"expected": want, "got": "<missing>" if got is _MISSING else got}
    assert not wrong, "canonical fields differ:\n" + json.dumps(wrong, indent=2, ensure_ascii=False)


def config_text(channel_name: str, settings: dict[str, Any]) -> str:
    """A whole gateway config (for ``write_config``) with one channel, routed to a JSONL trial CRM."""
    channel = json.dumps(settings)  # JSON is valid YAML flow style
    return f"""
storage: {{url: "{{storage_url}}"}}
server: {{listen: "127.0.0.1:0", public_url: "{PUBLIC_URL}"}}
workers: {{idle_poll_seconds: 0.05, retry: {{initial_seconds: 0.01, max_seconds: 0.05, jitter_seconds: 0}}}}
channels:
  {channel_name}: {channel}
crms:
  trial: {{type: jsonl, path: out/crm.jsonl}}
routes:
  - {{from: [{channel_name}], to: trial}}
"""


def send(client: FlaskClient, request: HookRequest, channel_name: str) -> TestResponse:
    """Replay a ``HookRequest`` through the Flask app exactly as the provider would send it."""
    return client.open(f"/hooks/{channel_name}", method=request.method, query_string=request.query_string,
                       headers=list(request.headers.items()), data=request.body)


def count(runtime: Runtime, table: Any, connector: str) -> int:
    """Rows of ``table`` belonging to one connector instance, read on a fresh connection."""
    with runtime.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(table.c.connector == connector)
                            ).scalar_one()


def drain_pipeline(runtime: Runtime, worker: PipelineWorker | None = None) -> int:
    """Run the pipeline stage until the inbox has nothing due; return how many rows it processed. A benchmark
    passes a worker built beforehand: building one loads the language model, which is no part of a drain."""
    worker = worker or PipelineWorker(runtime, "conformance")
    total = 0
    while processed := drain_once(worker):
        total += processed
    return total


def split_records(connector: ChannelConnector, request: HookRequest) -> list[RawRecord]:
    """The inbox records ``split`` makes of a request, as the pipeline would read them back."""
    now = utcnow()
    return [RawRecord(inbox_id=n + 1, connector=connector.name, provider_id=item.provider_id, kind=item.kind,
                      body=item.body, content_type=item.content_type, headers=request.headers,
                      public_url=request.public_url, received_at=now)
            for n, item in enumerate(connector.split(request))]


def secret_values(settings: dict[str, Any], config_class: type[BaseModel]) -> list[str]:
    """The plain values of every secret-typed setting (``SecretStr`` fields) in ``settings``."""
    return [str(settings[name]) for name in secret_fields(config_class) if name in settings]


class ChannelConformance:
    """Shared tests for inbound channel connectors. Subclass it as ``Test<Name>Conformance``."""

    connector_class: ClassVar[type[ChannelConnector]]
    channel_name: ClassVar[str]
    expected: ClassVar[dict[str, Expected]]
    required_secrets: ClassVar[tuple[str, ...]]
    has_timestamp: ClassVar[bool] = False
    has_handshake: ClassVar[bool] = False

    # -- what a subclass supplies --------------------------------------------------------------------------------
    def channel_settings(self) -> dict[str, Any]:
        """The channel's settings as written under ``channels.<name>`` (including ``type``)."""
        raise NotImplementedError

    def signed_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        """A correctly signed request carrying the documented payload ``fixture``."""
        raise NotImplementedError

    def tamper(self, request: HookRequest) -> HookRequest:
        """The request with its signature or signed content altered."""
        raise NotImplementedError

    def malformed_requests(self, connector: ChannelConnector) -> dict[str, HookRequest]:
        """Malformed, truncated or wrongly typed requests, by case name; each must be answered 400."""
        raise NotImplementedError

    def stale_request(self, fixture: str, connector: ChannelConnector) -> HookRequest:
        """A correctly signed request whose timestamp is outside the replay window (``has_timestamp`` only)."""
        raise NotImplementedError

    def handshake_request(self, connector: ChannelConnector) -> tuple[HookRequest, int, bytes]:
        """A handshake request and the status and body it must be answered with (``has_handshake`` only)."""
        raise NotImplementedError

    def make_connector(self, settings: dict[str, Any] | None = None) -> ChannelConnector:
        """A connector built from ``settings`` (default ``channel_settings()``), with no network."""
        config = self.connector_class.Config.model_validate(settings or self.channel_settings())
        context = ConnectorContext(http=requests.Session(), public_url=PUBLIC_URL)
        return self.connector_class(self.channel_name, config, context)

    # -- plumbing ------------------------------------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrize over this connector's fixtures and over only the checks that apply to it."""
        if "fixture" in metafunc.fixturenames:
            metafunc.parametrize("fixture", sorted(self.expected))
        if "refusal" in metafunc.fixturenames:
            refusals = ["tampered_signature", "missing_signature"]
            if self.has_timestamp:
                refusals.append("stale_timestamp")
            metafunc.parametrize("refusal", refusals)
        if "get_case" in metafunc.fixturenames:
            metafunc.parametrize("get_case", ["handshake_answered" if self.has_handshake else "get_refused_405"])
        if "secret" in metafunc.fixturenames:
            metafunc.parametrize("secret", list(self.required_secrets))
        if "malformed_case" in metafunc.fixturenames:
            metafunc.parametrize("malformed_case", sorted(self.malformed_requests(self.make_connector())))

    @pytest.fixture
    def config(self, write_config: Callable[..., Path]) -> GatewayConfig:
        """The gateway config with this connector's channel (overrides the conftest ``config``)."""
        return load_config(write_config(config_text(self.channel_name, self.channel_settings())))

    @pytest.fixture
    def client(self, runtime: Runtime) -> FlaskClient:
        """The Flask test client of the app on this class's runtime."""
        return create_app(runtime).test_client()

    def _refused_request(self, refusal: str, connector: ChannelConnector) -> HookRequest:
        fixture = self._message_fixture()
        if refusal == "tampered_signature":
            return self.tamper(self.signed_request(fixture, connector))
        if refusal == "stale_timestamp":
            return self.stale_request(fixture, connector)
        request = self.signed_request(fixture, connector)
        unsigned = [(k, v) for k, v in request.headers.items() if "signature" not in k.lower()]
        return HookRequest(request.method, request.path, request.query_string, type(request.headers)(unsigned),
                           request.body, request.public_url, request.remote_addr)

    def _message_fixture(self) -> str:
        return next(name for name, want in sorted(self.expected.items()) if want.messages)

    # -- the shared tests ----------------------------------------------------------------------------------------
    def test_fixture_normalizes_to_expected_fields(self, fixture: str) -> None:
        """Each documented payload verifies, splits into the expected inbox kind and normalises as expected."""
        connector = self.make_connector()
        request = self.signed_request(fixture, connector)
        connector.verify(request)
        want = self.expected[fixture]
        records = split_records(connector, request)
        assert [record.kind for record in records] == [want.kind] * len(records)
        if want.provider_ids:
            assert tuple(record.provider_id for record in records) == want.provider_ids
        produced: list[Message] = [m for record in records for m in connector.normalize(record)]
        assert len(produced) == len(want.messages)
        for message, fields in zip(produced, want.messages, strict=True):
            assert message.connector == self.channel_name
            assert message.connector_type == self.connector_class.type_name
            assert message.channel in self.connector_class.channel_types
            assert_fields(message.model_dump(mode="json"), fields)

    def test_refused_before_storage(self, refusal: str, runtime: Runtime, client: FlaskClient) -> None:
        """Tampered or unsigned (and, for timestamped schemes, stale) requests: SignatureInvalid, 401, no row."""
        connector = runtime.channels[self.channel_name]
        request = self._refused_request(refusal, connector)
        with pytest.raises(SignatureInvalid) as caught:
            connector.verify(request)
        assert caught.value.status == 401
        assert caught.value.reason
        response = send(client, request, self.channel_name)
        assert response.status_code == 401
        assert response.get_data(as_text=True).strip()
        assert count(runtime, inbox, self.channel_name) == 0

    def test_get(self, get_case: str, runtime: Runtime, client: FlaskClient) -> None:
        """The handshake is answered where the provider has one; otherwise a GET is refused with 405."""
        connector = runtime.channels[self.channel_name]
        if get_case == "handshake_answered":
            request, status, body = self.handshake_request(connector)
            response = send(client, request, self.channel_name)
            assert (response.status_code, response.get_data()) == (status, body)
        else:
            response = client.get(f"/hooks/{self.channel_name}")
            assert response.status_code == 405
            assert response.get_data(as_text=True).strip()
        assert count(runtime, inbox, self.channel_name) == 0

    def test_missing_secret_is_config_error(self, secret: str, write_config: Callable[..., Path]) -> None:
        """A required secret left out is refused by the config model and reported with its file, line and path."""
        settings = {k: v for k, v in self.channel_settings().items() if k != secret}
        with pytest.raises(ValidationError) as invalid:
            self.connector_class.Config.model_validate(settings)
        assert any(error["loc"] == (secret,) and error["type"] == "missing" for error in invalid.value.errors())
        path = write_config(config_text(self.channel_name, settings))
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        issues = [issue for issue in caught.value.issues if issue.path == f"channels.{self.channel_name}.{secret}"]
        assert len(issues) == 1, str(caught.value)
        assert issues[0].line is not None
        assert "field required" in issues[0].message
        assert f"{path}:{issues[0].line} channels.{self.channel_name}.{secret}: field required" in str(caught.value)

    def test_same_delivery_twice_is_stored_once(self, fixture: str, runtime: Runtime, client: FlaskClient) -> None:
        """A provider's retry is answered 2xx, kept as one inbox row, and normalises to one message."""
        want = self.expected[fixture]
        request = self.signed_request(fixture, runtime.channels[self.channel_name])
        first = send(client, request, self.channel_name)
        second = send(client, request, self.channel_name)
        assert 200 <= first.status_code < 300, first.get_data(as_text=True)
        assert (second.status_code, second.get_data()) == (first.status_code, first.get_data())
        with runtime.engine.connect() as conn:
            kinds = list(conn.execute(select(inbox.c.kind).where(inbox.c.connector == self.channel_name)).scalars())
        assert kinds == [want.kind]
        assert drain_pipeline(runtime) == 1
        send(client, request, self.channel_name)
        assert drain_pipeline(runtime) == 0
        with runtime.engine.connect() as conn:
            stored = list(conn.execute(select(messages.c.data).where(messages.c.connector == self.channel_name)))
            status = conn.execute(select(inbox.c.status).where(inbox.c.connector == self.channel_name)).scalar_one()
        assert len(stored) == len(want.messages)
        assert status == ("done" if want.messages or want.kind == "status" else "ignored")
        for (data,), fields in zip(stored, want.messages, strict=True):
            assert_fields(data, fields)

    def test_malformed_body_is_400(self, malformed_case: str, runtime: Runtime, client: FlaskClient) -> None:
        """Malformed, truncated or wrongly typed bodies: 400 with a short reason, never a 5xx, nothing stored."""
        connector = runtime.channels[self.channel_name]
        request = self.malformed_requests(connector)[malformed_case]
        with pytest.raises(HookRejected) as caught:
            connector.verify(request)
            connector.split(request)
        assert caught.value.status == 400
        response = send(client, request, self.channel_name)
        reason = response.get_data(as_text=True)
        assert response.status_code == 400, reason
        assert reason.strip() and len(reason) < 300 and "Traceback" not in reason
        assert count(runtime, inbox, self.channel_name) == 0

    def test_secrets_never_logged_or_shown(self, runtime: Runtime, client: FlaskClient,
                                           caplog: pytest.LogCaptureFixture) -> None:
        """Secret settings appear in no log record, repr, str, JSON dump, rejection reason or response."""
        caplog.set_level(logging.DEBUG)
        settings = self.channel_settings()
        secrets = secret_values(settings, self.connector_class.Config)
        assert secrets, "a channel with webhook signatures has at least one secret setting"
        connector = runtime.channels[self.channel_name]
        shown: list[str] = [repr(connector), str(connector), repr(connector.config), str(connector.config),
                            connector.config.model_dump_json(), str(connector.config.model_dump())]
        for refusal in ("tampered_signature", "missing_signature"):
            request = self._refused_request(refusal, connector)
            try:
                connector.verify(request)
            except HookRejected as exc:
                shown += [str(exc), exc.reason]
            shown.append(send(client, request, self.channel_name).get_data(as_text=True))
        for request in self.malformed_requests(connector).values():
            shown.append(send(client, request, self.channel_name).get_data(as_text=True))
        for fixture in sorted(self.expected):
            shown.append(send(client, self.signed_request(fixture, connector), self.channel_name).get_data(
                as_text=True))
        drain_pipeline(runtime)
        shown.append(client.get("/metrics").get_data(as_text=True))
        assert caplog.records, "the refusals above are logged"
        logged = caplog.text + "".join(repr(record.args) for record in caplog.records)
        for value in secrets:
            assert value not in logged
            for text in shown:
                assert value not in text
