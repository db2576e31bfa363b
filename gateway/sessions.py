"""The browser's sessions (docs/protocol.md 10.1): a cookie made at login,
kept as its SHA-256 like a token, with a CSRF token of its own.

A session ends after IDLE_S without a request, at MAX_AGE_S after the login
whatever its use, at logout, and when its account is disabled. Its cookie is
256 random bits (`pbs_`, never a `pbt_` token: one is not taken for the
other), so a fast hash is as good as a slow one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .accounts import Account, account_from_row, token_hash
from .store import Store

IDLE_S = 30 * 60.0
MAX_AGE_S = 12 * 3600.0
PREFIX = "pbs_"


@dataclass(frozen=True)
class Session:
    account: Account
    csrf: str
    created: float


class Sessions:
    """The sessions in the gateway's store."""

    def __init__(self, store: Store) -> None:
        self.db = store.db

    def create(self, account: Account, now: float) -> tuple[str, Session]:
        """A new session of the account: (its cookie, shown only now; the session)."""
        cookie, csrf = PREFIX + secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.db.execute(
            "DELETE FROM account_sessions WHERE last_seen <= ? OR created <= ?",
            (now - IDLE_S, now - MAX_AGE_S),
        )
        self.db.execute(
            "INSERT INTO account_sessions (hash, account, csrf, created, last_seen) VALUES (?, ?, ?, ?, ?)",
            (token_hash(cookie), account.id, csrf, now, now),
        )
        return cookie, Session(account, csrf, now)

    def get(self, cookie: str, now: float) -> Session | None:
        """The live session of a cookie (None: none, ended, or its account
        disabled); a request keeps it from going idle."""
        if not cookie.startswith(PREFIX) or len(cookie) > 128:
            return None
        h = token_hash(cookie)
        row = self.db.execute(
            "SELECT a.*, s.csrf, s.created AS since, s.last_seen FROM account_sessions s"
            " JOIN accounts a ON a.id = s.account WHERE s.hash = ?",
            (h,),
        ).fetchone()
        if row is None or row["disabled"]:
            return None
        if row["last_seen"] <= now - IDLE_S or row["since"] <= now - MAX_AGE_S:
            self.db.execute("DELETE FROM account_sessions WHERE hash = ?", (h,))
            return None
        self.db.execute("UPDATE account_sessions SET last_seen = ? WHERE hash = ?", (now, h))
        return Session(account_from_row(row), str(row["csrf"]), float(row["since"]))

    def delete(self, cookie: str) -> bool:
        """End the session of a cookie (logout)."""
        return (
            self.db.execute("DELETE FROM account_sessions WHERE hash = ?", (token_hash(cookie),)).rowcount > 0
        )
