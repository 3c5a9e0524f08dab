"""One error policy: any exception a CRM write raises becomes one delivery outcome (``as_delivery_error``)."""

from __future__ import annotations

import pytest
import requests

from gateway.errors import (
    INTERNAL,
    NETWORK,
    OnlineCheckFailed,
    PermanentError,
    RetryableError,
    as_delivery_error,
    failure_reason,
    one_line,
)

URL = "https://crm.example/api/records?access_token=test-query-token"


def http_error(status: int, headers: dict[str, str] | None = None) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response.url = URL
    request = requests.Request("POST", URL).prepare()
    response.request = request
    return requests.HTTPError(f"{status} Error for url: {URL}", request=request, response=response)


def test_a_delivery_error_is_its_own_outcome() -> None:
    error = PermanentError("Zendesk answered 422 RecordInvalid", code="RecordInvalid", field="subject")
    assert as_delivery_error(error) is error


@pytest.mark.parametrize("exc", [
    requests.ConnectTimeout("connect timed out", request=requests.Request("GET", URL).prepare()),
    requests.ReadTimeout("read timed out"),
    requests.ConnectionError(f"Max retries exceeded with url: {URL}", request=requests.Request("GET", URL).prepare()),
    requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"),
])
def test_timeouts_and_broken_connections_are_retryable_network_errors(exc: Exception) -> None:
    error = as_delivery_error(exc)
    assert isinstance(error, RetryableError) and error.code == NETWORK and error.retry_after is None
    assert "test-query-token" not in str(error)


@pytest.mark.parametrize(("status", "headers", "retry_after"), [
    (429, {"Retry-After": "7"}, 7.0),
    (503, {}, None),
    (500, {"Retry-After": "nan"}, None),
    (408, {}, None),
])
def test_throttling_server_errors_and_timeouts_answered_are_retryable(status: int, headers: dict[str, str],
                                                                     retry_after: float | None) -> None:
    error = as_delivery_error(http_error(status, headers))
    assert isinstance(error, RetryableError)
    assert (error.code, error.retry_after) == (str(status), retry_after)
    assert str(error) == f"crm.example answered HTTP {status}"


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_client_errors_are_permanent(status: int) -> None:
    error = as_delivery_error(http_error(status))
    assert isinstance(error, PermanentError) and not error.retryable and error.code == str(status)
    assert "test-query-token" not in str(error)


@pytest.mark.parametrize("exc", [KeyError("ticket"), ValueError("bad\nvalue"), requests.exceptions.InvalidURL("x")])
def test_anything_else_is_a_retryable_internal_error(exc: Exception) -> None:
    error = as_delivery_error(exc)
    assert isinstance(error, RetryableError) and error.code == INTERNAL
    assert str(error).startswith(type(exc).__name__) and "\n" not in str(error)


def test_failure_reasons_are_one_line() -> None:
    assert failure_reason(OnlineCheckFailed("refused\n  (401)")) == "refused (401)"
    assert failure_reason(http_error(401)) == "crm.example answered HTTP 401"
    assert failure_reason(OSError(13, "Permission denied")) == "PermissionError: [Errno 13] Permission denied"
    assert one_line("x" * 1000).endswith("…") and len(one_line("x" * 1000)) == 300
