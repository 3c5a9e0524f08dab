"""Webhook secrets during a rotation (``gateway.signing``)."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

from gateway.signing import current_or_previous, matches_any


def digest(secret: str, body: bytes = b"payload") -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_current_first_then_previous_and_never_an_unset_or_empty_one() -> None:
    assert current_or_previous(SecretStr("new"), SecretStr("old")) == ["new", "old"]
    assert current_or_previous(SecretStr("new"), None) == ["new"]
    assert current_or_previous(SecretStr("new"), SecretStr("")) == ["new"]  # an empty key would sign for anyone
    assert current_or_previous(SecretStr(""), None) == []


def test_a_signature_by_either_secret_matches() -> None:
    secrets = current_or_previous(SecretStr("new"), SecretStr("old"))
    assert matches_any(digest("new"), secrets, digest)
    assert matches_any(digest("old"), secrets, digest)
    assert not matches_any(digest("other"), secrets, digest)
    assert not matches_any(digest("old"), ["new"], digest)
    assert not matches_any("", secrets, digest)
    assert not matches_any(digest("new"), [], digest)


def test_bytes_and_text_compare_alike_and_other_scripts_are_refused_not_raised() -> None:
    assert matches_any(b"token-123", ["token-123"], lambda token: token)
    assert matches_any("token-123", ["token-123"], lambda token: token.encode())
    assert not matches_any("tökén", ["token-123"], lambda token: token)  # compare_digest would raise on str
