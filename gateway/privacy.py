"""The install's privacy key, and the keyed hashes made with it (tombstones, identifiers in logs).

A plain hash of a phone number is no protection: there are few enough numbers to hash them all. So every hash is an
HMAC with a key of this install: ``privacy.key`` in the config (every host of one gateway must share it), or else a
random key generated once into ``{data_dir}/secrets/privacy.key`` (mode 0600).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = Path("secrets") / "privacy.key"


def identifier_hash(key: bytes, kind: str, value: str) -> str:
    """The keyed hash of one normalised identifier, as tombstones keep it (64 hex digits)."""
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def short_hash(key: bytes, value: str) -> str:
    """Eight hex digits that stand for ``value`` in log lines: the same value always gives the same digits."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:8]


def install_key(data_dir: Path, configured: str | None = None, file: Path = KEY_FILE) -> bytes:
    """The configured key, else the one kept in ``data_dir / file`` (created on first use, by whichever process is
    first)."""
    if configured:
        return configured.encode()
    path = data_dir / file
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileExistsError):  # another process made it first: its key wins
        os.link(temporary, path)
    temporary.unlink()
    return bytes.fromhex(path.read_text(encoding="ascii").strip())
