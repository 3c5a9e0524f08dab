"""Webhook secrets during a rotation: the current secret and, while the provider still uses it, the previous one.

A channel's config carries ``<secret>`` and ``previous_<secret>``; a request is authentic when it was signed with
either. Comparisons are constant-time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

from pydantic import SecretStr


def current_or_previous(current: SecretStr, previous: SecretStr | None) -> list[str]:
    """The secret values to accept, the current one first; an unset or empty value is never one of them."""
    return [secret.get_secret_value() for secret in (current, previous)
            if secret is not None and secret.get_secret_value()]


def matches_any(given: str | bytes, secrets: Iterable[str], expected: Callable[[str], str | bytes]) -> bool:
    """Whether ``given`` equals ``expected(secret)`` for one of ``secrets``, compared in constant time.

    ``expected`` computes what a request signed with that secret carries (an HMAC digest, or the token itself).
    """
    given_bytes = _bytes(given)
    return any(hmac.compare_digest(_bytes(expected(secret)), given_bytes) for secret in secrets)


def equal(given: str | bytes, expected: str | bytes) -> bool:
    """``given == expected`` in constant time, for any text a client sent (``hmac.compare_digest`` refuses str
    holding non-ASCII characters with a TypeError)."""
    return hmac.compare_digest(_bytes(given), _bytes(expected))


def _bytes(value: str | bytes) -> bytes:
    # surrogatepass: a str decoded from JSON may hold a lone surrogate; it must compare unequal, not raise
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
