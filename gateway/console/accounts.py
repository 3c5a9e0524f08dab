"""Console accounts, logins and the audit log, kept in the database so every web process agrees.

Passwords are stored as argon2id hashes (argon2-cffi's defaults, RFC 9106's second recommended parameter set).
Failed logins are counted per account and per client address over a window; past either limit a login is refused
before the password is looked at, so guessing costs the same whether or not the account exists. Each attempt is
counted and recorded in one transaction, serialised across processes, before its password is checked: parallel
guesses cannot slip past the limit. A name that is no account is kept only as a keyed hash (it may be a password
typed into the wrong field). A login opens a server-side session (``console_sessions``) that a logout, a new password
or the account's removal deletes.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, Engine, delete, func, or_, select, text, update

from gateway.privacy import identifier_hash
from gateway.storage.db import utcnow
from gateway.storage.tables import admin_audit, admin_users, console_sessions, login_failures

ROLES = ("admin", "viewer")
MIN_PASSWORD_LENGTH = 12
_hasher = PasswordHasher()
# verified against when the account does not exist, so the answer takes as long as for a wrong password
_ABSENT_HASH = _hasher.hash("an account that does not exist")
_PG_LOGIN_LOCK = 0x636F6E736F6C  # advisory lock key: "consol"


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
    session: str | None = None  # the new session's token, for the cookie


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
    _end_sessions_of(conn, name)


def remove_user(conn: Connection, name: str) -> None:
    _end_sessions_of(conn, name)
    if not conn.execute(delete(admin_users).where(admin_users.c.name == name)).rowcount:
        raise AccountError(f"no user {name!r}")


def _end_sessions_of(conn: Connection, name: str) -> None:
    conn.execute(delete(console_sessions).where(
        console_sessions.c.user_id.in_(select(admin_users.c.id).where(admin_users.c.name == name))))


def list_users(conn: Connection) -> list[Any]:
    return list(conn.execute(select(admin_users.c.name, admin_users.c.role, admin_users.c.disabled,
                                    admin_users.c.created_at, admin_users.c.last_login_at)
                             .order_by(admin_users.c.name)))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def session_account(conn: Connection, token: str, lifetime: timedelta) -> Account | None:
    """The account a session token belongs to, if the session stands: not logged out, not older than
    ``lifetime``, its account neither removed nor disabled nor given a new password since."""
    row = conn.execute(select(admin_users).join(console_sessions, console_sessions.c.user_id == admin_users.c.id)
                       .where(console_sessions.c.token_hash == _token_hash(token),
                              console_sessions.c.created_at >= utcnow() - lifetime)).first()
    if row is None or row.disabled:
        return None
    return _account(row)


def end_session(conn: Connection, token: str) -> None:
    conn.execute(delete(console_sessions).where(console_sessions.c.token_hash == _token_hash(token)))


def _login_name(conn: Connection, name: str, key: bytes) -> tuple[Any, str]:
    """The account row, and the name a login attempt is counted and audited under: the account's own name, or for
    a name that is no account a keyed hash of it (the same typo always gives the same hash)."""
    row = conn.execute(select(admin_users).where(admin_users.c.name == name)).first()
    if row is not None:
        return row, name
    return None, f"unknown #{identifier_hash(key, 'console-login', name)[:24]}"


def log_in(engine: Engine, name: str, password: str, address: str, limits: LoginLimits,
           key: bytes) -> LoginResult:
    """Count and record the attempt against the limits, then check the password; record a failure or the success
    (and open a session) in the audit log. ``key`` hashes names that are no account."""
    now = utcnow()
    since = now - limits.window
    name, address = name[:64], address[:64]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE serialises these transactions already
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOGIN_LOCK})
        conn.execute(delete(login_failures).where(login_failures.c.at < now - max(limits.window, timedelta(days=1))))
        row, who = _login_name(conn, name, key)
        by_account = conn.execute(select(func.count()).where(
            login_failures.c.account == who, login_failures.c.at >= since)).scalar_one()
        by_address = conn.execute(select(func.count()).where(
            login_failures.c.address == address, login_failures.c.at >= since)).scalar_one()
        if by_account >= limits.per_account or by_address >= limits.per_address:
            record(conn, who, "login_throttled", None, {"failures_account": by_account,
                                                        "failures_address": by_address}, address)
            return LoginResult(None, throttled=True)
        # a failure until the password proves otherwise: a parallel attempt already counts this one
        attempt = conn.execute(login_failures.insert().values(account=who, address=address, at=now)
                               ).inserted_primary_key[0]
    account = None
    try:
        _hasher.verify(row.password_hash if row is not None and not row.disabled else _ABSENT_HASH, password)
        account = _account(row) if row is not None and not row.disabled else None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        account = None
    with engine.begin() as conn:
        if account is None:
            record(conn, who, "login_failed", None, {}, address)
            return LoginResult(None)
        conn.execute(delete(login_failures).where(
            (login_failures.c.account == name) | (login_failures.c.id == attempt)))
        values: dict[str, Any] = {"last_login_at": now}
        if _hasher.check_needs_rehash(row.password_hash):
            values["password_hash"] = _hasher.hash(password)
        conn.execute(update(admin_users).where(admin_users.c.id == account.id).values(**values))
        token = secrets.token_urlsafe(32)
        conn.execute(console_sessions.insert().values(token_hash=_token_hash(token), user_id=account.id,
                                                      created_at=now, address=address or None))
        record(conn, name, "login", None, {}, address)
    return LoginResult(account, session=token)


def purge_sessions(conn: Connection, lifetime: timedelta) -> None:
    """Forget sessions past their lifetime (those never logged out)."""
    conn.execute(delete(console_sessions).where(console_sessions.c.created_at < utcnow() - lifetime))


def record(conn: Connection, actor: str, action: str, target: str | None, detail: dict[str, Any],
           address: str | None = None) -> None:
    """One audit row: who did what to which record, from where."""
    conn.execute(admin_audit.insert().values(at=utcnow(), actor=actor[:64], action=action,
                                             target=target[:255] if target else None, detail=detail,
                                             address=(address or "")[:64] or None))


def audit_rows(conn: Connection, limit: int = 200, before: int | None = None, *,
               actions: tuple[str, ...] | None = None, actor: str | None = None,
               target_suffixes: tuple[str, ...] = ()) -> list[Any]:
    """The newest audit rows; optionally only some actions, one actor, targets ending in one of the suffixes."""
    query = select(admin_audit).order_by(admin_audit.c.id.desc()).limit(limit)
    if before is not None:
        query = query.where(admin_audit.c.id < before)
    if actions:
        query = query.where(admin_audit.c.action.in_(actions))
    if actor:
        query = query.where(admin_audit.c.actor == actor)
    if target_suffixes:
        query = query.where(or_(*[admin_audit.c.target.like(f"%{_escape_like(suffix)}", escape="\\")
                                  for suffix in target_suffixes]))
    return list(conn.execute(query))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
