"""Errors that cross module boundaries: webhook rejections, CRM delivery failures, failed online checks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import urlparse

import requests
from urllib3.exceptions import NameResolutionError, NewConnectionError

NETWORK = "network"
INTERNAL = "internal"
_ONE_LINE = 300


class HookRejected(Exception):
    """A webhook request refused with a 4xx status and a short, secret-free reason."""

    status = 400
    reason_code = "malformed"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureInvalid(HookRejected):
    """The request's signature, timestamp or verify token did not check out."""

    status = 401
    reason_code = "signature"


class MalformedRequest(HookRejected):
    """The body could not be understood: wrong type, truncated, missing fields."""

    status = 400
    reason_code = "malformed"


class PayloadTooLarge(HookRejected):
    status = 413
    reason_code = "too_large"


class TooManyRequests(HookRejected):
    """More requests of a kind than the gateway answers (a handshake flood); ``retry_after`` in seconds."""

    status = 429
    reason_code = "rate_limited"

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for; None when absent or not a number (the HTTP-date form is not read:
    a wrong clock would make it wrong, and the back-off then applies)."""
    try:
        seconds = float((headers or {}).get("Retry-After", ""))
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None  # "inf" or "nan" would stall the retry forever


class DeliveryError(Exception):
    """A CRM write failed. ``code`` is the CRM's own error code or HTTP status, kept in the dead letter.

    ``uncertain``: the write may have landed all the same (a timeout or a dropped connection after the request went
    out, a 5xx answering a write, a batch job that was queued but not read), so the retry must look in the CRM before
    writing again. False when the failure proves nothing was written (429, 503, a refusal, no connection made, a
    read that failed): the retry writes straight away, batched with the rest.
    """

    retryable = False
    default_uncertain = False

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None,
                 uncertain: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.uncertain = self.default_uncertain if uncertain is None else uncertain


class RetryableError(DeliveryError):
    """Worth trying again later: 429, 5xx, timeouts, connection errors.

    Uncertain unless its raiser knows better (the safe default). ``outage``: the CRM refused the call as a whole
    (429, 503, unreachable), so every row of the call waits the same time and the backlog is retried together.
    """

    retryable = True
    default_uncertain = True

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None,
        uncertain: bool | None = None, outage: bool = False,
    ) -> None:
        super().__init__(message, code=code, uncertain=uncertain)
        self.retry_after = retry_after
        self.outage = outage


def as_uncertain(error: DeliveryError) -> RetryableError:
    """A retryable, uncertain copy of ``error``: for rows whose write was under way when ``error`` ended the call."""
    if isinstance(error, RetryableError) and error.uncertain:
        return error
    return RetryableError(str(error), code=error.code, retry_after=getattr(error, "retry_after", None),
                          uncertain=True, outage=getattr(error, "outage", False))


class PermanentError(DeliveryError):
    """Trying again cannot help (other 4xx, validation errors): the item goes to the dead letters."""


class OutcomeUnknown(PermanentError):
    """An earlier attempt may have reached the customer and the provider offers no way to find out."""


def never_reached(exc: BaseException) -> bool:
    """True when a request surely never reached the server (no connection was made): nothing can have been sent."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return isinstance(reason, NewConnectionError | NameResolutionError)
    return False


def written_nothing(status: int, method: str | None) -> bool:
    """Whether a failed answer proves the request wrote nothing.

    A 429 is the rate limiter's refusal and a 503 the service's (or its load balancer's) before the request is
    handled; a read writes nothing whatever its answer. Any other 5xx may come after the write was made (a 500
    raised while answering, a 502/504 from a proxy whose upstream carried on), so it proves nothing for a write.
    """
    return status in (429, 503) or (method or "").upper() in ("GET", "HEAD")


def as_delivery_error(exc: BaseException) -> DeliveryError:
    """The delivery outcome of any exception a CRM write raised; the one place that decides.

    - a ``DeliveryError`` is its own outcome;
    - a timeout or a broken connection is retryable, code ``network``; certain only when no connection was made;
    - an HTTP error answer is retryable for 408, 429 and 5xx (honouring ``Retry-After``), permanent for other 4xx,
      with the status as its code; certain for 429, 503 and any failed read (GET), uncertain for other 5xx;
    - anything else is a bug in a connector: retryable, code ``internal``, so the item waits for a fix instead of
      being dropped.
    """
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, requests.Timeout | requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        unreached = never_reached(exc)
        return RetryableError(f"{type(exc).__name__} talking to {_host_of(exc)}", code=NETWORK,
                              uncertain=not unreached, outage=unreached)
    response = exc.response if isinstance(exc, requests.HTTPError) else None
    if response is not None:
        status = response.status_code
        message = f"{_host_of(exc)} answered HTTP {status}"
        if status in (408, 429) or status >= 500:
            method = getattr(response.request, "method", None)
            return RetryableError(message, code=str(status), retry_after=retry_after_seconds(response.headers),
                                  uncertain=not written_nothing(status, method), outage=status in (429, 503))
        return PermanentError(message, code=str(status))
    return RetryableError(one_line(f"{type(exc).__name__}: {exc}"), code=INTERNAL)


class OnlineCheckFailed(Exception):
    """A connector's ``check_online`` failed: credentials refused, service unreachable, an answer not understood.

    ``reason`` is one line that names no secret, fit for ``gateway check --online`` to print.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def failure_reason(exc: BaseException) -> str:
    """One line saying why ``exc`` happened, without URLs' paths and queries (where tokens may travel)."""
    if isinstance(exc, OnlineCheckFailed):
        return one_line(exc.reason)
    if isinstance(exc, requests.RequestException | DeliveryError):
        return str(as_delivery_error(exc))
    return one_line(f"{type(exc).__name__}: {exc}")


def one_line(text: str) -> str:
    """``text`` on one line, its whitespace runs collapsed, cut to a few hundred characters."""
    line = " ".join(text.split())
    return line if len(line) <= _ONE_LINE else line[:_ONE_LINE - 1] + "…"


def _host_of(exc: BaseException) -> str:
    """The host a requests exception was talking to, from its request or its response."""
    for part in (getattr(exc, "request", None), getattr(exc, "response", None)):
        host = urlparse(str(getattr(part, "url", None) or "")).hostname
        if host:
            return host
    return "the server"
