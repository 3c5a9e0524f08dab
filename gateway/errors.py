"""Errors that cross module boundaries: webhook rejections and CRM delivery failures."""

from __future__ import annotations

import math
from collections.abc import Mapping


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


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for; None when absent or not a number (the HTTP-date form is not read:
    a wrong clock would make it wrong, and the back-off then applies)."""
    try:
        seconds = float((headers or {}).get("Retry-After", ""))
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None  # "inf" or "nan" would stall the retry forever


class DeliveryError(Exception):
    """A CRM write failed. ``code`` is the CRM's own error code or HTTP status, kept in the dead letter."""

    retryable = False

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


class RetryableError(DeliveryError):
    """Worth trying again later: 429, 5xx, timeouts, connection errors."""

    retryable = True

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """Trying again cannot help (other 4xx, validation errors): the item goes to the dead letters."""


class OutcomeUnknown(PermanentError):
    """An earlier attempt may have reached the customer and the provider offers no way to find out."""


def as_delivery_error(exc: BaseException) -> DeliveryError:
    """The one translation of an exception into a delivery failure: network trouble and unknown errors retry.

    A network error names the host only: the URL's path and query may hold a phone number or an address.
    """
    import requests

    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        return RetryableError(f"{type(exc).__name__} reaching {_host_of(exc)}", code="network")
    return RetryableError(f"{type(exc).__name__}: {exc}", code="internal")


def never_reached(exc: BaseException) -> bool:
    """True when a request surely never reached the server (no connection was made): nothing can have been sent."""
    import requests
    from urllib3.exceptions import NameResolutionError, NewConnectionError

    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return isinstance(reason, NewConnectionError | NameResolutionError)
    return False


def _host_of(exc: BaseException) -> str:
    from urllib.parse import urlsplit

    request = getattr(exc, "request", None)
    url = getattr(request, "url", None)
    return (urlsplit(url).hostname or "the provider") if url else "the provider"
