"""Console accounts, logins and the audit log, kept in the database so every web process agrees.

Passwords are stored as argon2id hashes (argon2-cffi's defaults, RFC 9106's second recommended parameter set).
Failed logins are counted per account and per client address over a window; past either limit a login is refused
before the password is looked at, so guessing costs the same whether or not the account exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, Engine, delete, func, select, update

from gateway.storage.db import utcnow
from gateway.storage.tables import admin_audit, admin_users, login_failures

ROLES = ("admin", "viewer")
MIN_PASSWORD_LENGTH = 12
_hasher = PasswordHasher()
# verified against when the account does not exist, so the answer takes as long as for a wrong password
_ABSENT_HASH = _hasher.hash("an account that does not exist")


class AccountError(Exception):
    """A refused account change, in words for the admin."""


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str
    session_epoch: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class LoginLimits:
    per_account: int
    per_address: int
    window: timedelta


@dataclass(frozen=True)
class LoginResult:
    account: Account | None
    throttled: bool = False


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")


def _account(row: Any) -> Account:
    return Account(row.id, row.name, row.role, row.session_epoch)


def add_user(conn: Connection, name: str, role: str, password: str) -> Account:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if not name or len(name) > 64 or not name.isprintable() or name != name.strip():
        raise AccountError("a user name is 1 to 64 printable characters, without spaces around it")
    _check_password(password)
    if conn.execute(select(admin_users.c.id).where(admin_users.c.name == name)).first() is not None:
        raise AccountError(f"user {name!r} exists (use 'gateway admin set-password')")
    now = utcnow()
    user_id = conn.execute(admin_users.insert().values(
        name=name, password_hash=_hasher.hash(password), role=role, session_epoch=0, disabled=False,
        created_at=now, updated_at=now)).inserted_primary_key[0]
    return Account(user_id, name, role, 0)


def set_password(conn: Connection, name: str, password: str) -> None:
    """A new password; every session of the account ends."""
    _check_password(password)
    done = conn.execute(update(admin_users).where(admin_users.c.name == name).values(
        password_hash=_hasher.hash(password), session_epoch=admin_users.c.session_epoch + 1, disabled=False,
        updated_at=utcnow())).rowcount
    if not done:
        raise AccountError(f"no user {name!r}")


def remove_user(conn: Connection, name: str) -> None:
    if not conn.execute(delete(admin_users).where(admin_users.c.name == name)).rowcount:
        raise AccountError(f"no user {name!r}")


def list_users(conn: Connection) -> list[Any]:
    return list(conn.execute(select(admin_users.c.name, admin_users.c.role, admin_users.c.disabled,
                                    admin_users.c.created_at, admin_users.c.last_login_at)
                             .order_by(admin_users.c.name)))


def session_account(conn: Connection, user_id: int, epoch: int) -> Account | None:
    """The account a session cookie names, if it still stands: not removed, disabled, or its password changed."""
    row = conn.execute(select(admin_users).where(admin_users.c.id == user_id)).first()
    if row is None or row.disabled or row.session_epoch != epoch:
        return None
    return _account(row)


def log_in(engine: Engine, name: str, password: str, address: str, limits: LoginLimits) -> LoginResult:
    """Check a login against the limits, then the password; record a failure or the success in the audit log."""
    now = utcnow()
    since = now - limits.window
    name = name[:64]
    with engine.begin() as conn:
        conn.execute(delete(login_failures).where(login_failures.c.at < now - max(limits.window, timedelta(days=1))))
        by_account = conn.execute(select(func.count()).where(
            login_failures.c.account == name, login_failures.c.at >= since)).scalar_one()
        by_address = conn.execute(select(func.count()).where(
            login_failures.c.address == address, login_failures.c.at >= since)).scalar_one()
        if by_account >= limits.per_account or by_address >= limits.per_address:
            record(conn, name, "login_throttled", None, {"failures_account": by_account,
                                                         "failures_address": by_address}, address)
            return LoginResult(None, throttled=True)
        row = conn.execute(select(admin_users).where(admin_users.c.name == name)).first()
    account = None
    try:
        _hasher.verify(row.password_hash if row is not None and not row.disabled else _ABSENT_HASH, password)
        account = _account(row) if row is not None and not row.disabled else None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        account = None
    with engine.begin() as conn:
        if account is None:
            conn.execute(login_failures.insert().values(account=name, address=address, at=now))
            record(conn, name, "login_failed", None, {}, address)
            return LoginResult(None)
        conn.execute(delete(login_failures).where(login_failures.c.account == name))
        values: dict[str, Any] = {"last_login_at": now}
        if _hasher.check_needs_rehash(row.password_hash):
            values["password_hash"] = _hasher.hash(password)
        conn.execute(update(admin_users).where(admin_users.c.id == account.id).values(**values))
        record(conn, name, "login", None, {}, address)
    return LoginResult(account)


def record(conn: Connection, actor: str, action: str, target: str | None, detail: dict[str, Any],
           address: str | None = None) -> None:
    """One audit row: who did what to which record, from where."""
    conn.execute(admin_audit.insert().values(at=utcnow(), actor=actor[:64], action=action,
                                             target=target[:255] if target else None, detail=detail,
                                             address=(address or "")[:64] or None))


def audit_rows(conn: Connection, limit: int = 200, before: int | None = None) -> list[Any]:
    query = select(admin_audit).order_by(admin_audit.c.id.desc()).limit(limit)
    if before is not None:
        query = query.where(admin_audit.c.id < before)
    return list(conn.execute(query))
