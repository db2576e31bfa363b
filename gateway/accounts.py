"""Accounts, their API tokens, and the owners' claims on devices
(docs/security.md will describe them with the API that checks them).

An account has a role: `owner` (sees and acts on the devices it claimed),
`maker` (releases, rollouts, every device) or `admin` (accounts, and what a
maker may). Passwords are kept as scrypt hashes (hashlib, RFC 7914), API
tokens as their SHA-256: a token is 256 random bits, so a fast hash is as
good as a slow one, and the database never holds anything that logs in.

A device's claim code is made when it is provisioned (80 random bits, shown
as 16 Crockford base-32 digits in four groups: the code on the box) and the
gateway keeps its SHA-256. An owner claims the device with the code; failed
claims are limited per account (CLAIM_TRIES in CLAIM_WINDOW_S); an owner
releases a device, and the next owner claims it with the same code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from .db import IntegrityError, Row, upsert
from .errors import GatewayError
from .store import Store

ROLES = ("owner", "maker", "admin")
NAME = re.compile(r"[a-z][a-z0-9._-]{0,31}")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
TOKEN_PREFIX = "pbt_"
CLAIM_TRIES = 10  # failed claims an account may make ...
CLAIM_WINDOW_S = 600.0  # ... in this many seconds
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # 16 MiB, ~50 ms: OWASP's minimum for scrypt
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CLAIM_DIGITS = 16  # 80 bits


# what a device's owner said of it and what was computed for it (schemas 5, 9, 10, 12, 13, 14)
_OWNERS_SAY = (
    "DELETE FROM device_decisions WHERE device = ?",
    "DELETE FROM twin_previews WHERE device = ?",
    "DELETE FROM twin_devices WHERE device = ?",
    """UPDATE device_settings SET policy = 'auto', "window" = NULL WHERE device = ?""",
    "DELETE FROM data_retention WHERE device = ?",
    "DELETE FROM stream_retention WHERE device = ?",
    "DELETE FROM ha_links WHERE device = ?",  # (its retained topics: gateway/ha_bridge.py)
)


class AccountError(GatewayError):
    """An account, token or claim that cannot be: `code` is what the API answers."""

    code = "bad_account"

    def __init__(self, message: str, code: str = "bad_account") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str
    created: float
    disabled: bool = False

    def may(self, role: str) -> bool:
        """Whether the account holds `role` or one above it (owner < maker < admin)."""
        return ROLES.index(self.role) >= ROLES.index(role)


# ---- passwords, tokens, claim codes ---------------------------------------------


def hash_password(password: str) -> str:
    """scrypt$N$r$p$salt$hash, base64 without padding."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, dklen=32, maxmem=64 * 2**20, **_SCRYPT)
    return "scrypt${n}${r}${p}$".format(**_SCRYPT) + f"{_b64(salt)}${_b64(key)}"


def check_password(password: str, stored: str) -> bool:
    """Whether password is the one stored hashes (False for a malformed hash)."""
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        want = _unb64(key)
        got = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=64 * 2**20,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_claim_code() -> str:
    """16 Crockford base-32 digits (80 random bits) in groups of four."""
    digits = "".join(secrets.choice(_CROCKFORD) for _ in range(_CLAIM_DIGITS))
    return "-".join(digits[i : i + 4] for i in range(0, _CLAIM_DIGITS, 4))


def normal_claim_code(text: str) -> str | None:
    """A claim code as typed (any case, dashes and spaces, O for 0, I or L
    for 1) as its 16 digits, or None if it cannot be one."""
    t = re.sub(r"[\s-]", "", text).upper().translate(str.maketrans("OIL", "011"))
    if len(t) != _CLAIM_DIGITS or any(c not in _CROCKFORD for c in t):
        return None
    return t


def claim_hash(code: str) -> str:
    """What the gateway keeps of a claim code. Raises AccountError for one that is not."""
    digits = normal_claim_code(code)
    if digits is None:
        raise AccountError("a claim code is 16 letters and digits, as XXXX-XXXX-XXXX-XXXX", "bad_claim_code")
    return hashlib.sha256(digits.encode()).hexdigest()


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


# ---- the tables ---------------------------------------------------------------------


class Accounts:
    """The accounts, their tokens and the devices' owners in the gateway's store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # accounts

    def create(self, name: str, role: str, password: str | None, now: float) -> Account:
        """A new account. Raises AccountError (name taken or malformed, role
        unknown, password too short)."""
        if not NAME.fullmatch(name):
            raise AccountError(
                f"an account name is 1-32 of a-z 0-9 . _ -, starting with a letter, not {name!r}"
            )
        if role not in ROLES:
            raise AccountError(f"a role is one of {', '.join(ROLES)}, not {role!r}")
        pw = None if password is None else _password_hash(password)
        try:
            row = self.db.execute(
                "INSERT INTO accounts (name, role, password, created) VALUES (?, ?, ?, ?) RETURNING id",
                (name, role, pw, now),
            ).fetchone()
        except IntegrityError:
            raise AccountError(f"there is an account {name!r} already", "exists") from None
        return Account(int(row[0]), name, role, now)

    def get(self, name: str) -> Account | None:
        row = self.db.execute("SELECT * FROM accounts WHERE name = ?", (name,)).fetchone()
        return account_from_row(row) if row is not None else None

    def by_id(self, account_id: int) -> Account | None:
        row = self.db.execute("SELECT * FROM accounts WHERE id = ?", (account_id,)).fetchone()
        return account_from_row(row) if row is not None else None

    def all(self) -> list[Account]:
        return [account_from_row(r) for r in self.db.execute("SELECT * FROM accounts ORDER BY name")]

    def set_password(self, name: str, password: str) -> None:
        """Raises AccountError."""
        pw = _password_hash(password)
        if self.db.execute("UPDATE accounts SET password = ? WHERE name = ?", (pw, name)).rowcount == 0:
            raise AccountError(f"no account {name!r}", "not_found")

    def login(self, name: str, password: str) -> Account | None:
        """The account, if the password is its own (and it may log in)."""
        row = self.db.execute("SELECT * FROM accounts WHERE name = ?", (name,)).fetchone()
        if row is None or row["password"] is None or row["disabled"]:
            check_password(password, _DUMMY)  # as long as a real check: names are not probed by timing
            return None
        return account_from_row(row) if check_password(password, row["password"]) else None

    # tokens

    def issue_token(self, account: Account, label: str, now: float) -> str:
        """A new API token of the account (shown once; the store keeps its hash)."""
        token = new_token()
        self.db.execute(
            "INSERT INTO account_tokens (hash, account, label, created) VALUES (?, ?, ?, ?)",
            (token_hash(token), account.id, label[:64], now),
        )
        return token

    def by_token(self, token: str, now: float) -> Account | None:
        """The account of a token (None: no such token, or a disabled account)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        h = token_hash(token)
        row = self.db.execute(
            "SELECT a.* FROM account_tokens t JOIN accounts a ON a.id = t.account WHERE t.hash = ?", (h,)
        ).fetchone()
        if row is None or row["disabled"]:
            return None
        self.db.execute("UPDATE account_tokens SET last_used = ? WHERE hash = ?", (now, h))
        return account_from_row(row)

    def tokens(self, account: Account) -> list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT substr(hash, 1, 12) AS id, label, created, last_used FROM account_tokens"
            " WHERE account = ? ORDER BY created",
            (account.id,),
        )
        return [dict(r) for r in rows]

    def revoke_token(self, account: Account, token_id: str) -> bool:
        """Revoke the token whose id (the first 12 hex digits of its hash) is given."""
        if not re.fullmatch(r"[0-9a-f]{12}", token_id):
            return False
        cur = self.db.execute(
            "DELETE FROM account_tokens WHERE account = ? AND substr(hash, 1, 12) = ?", (account.id, token_id)
        )
        return cur.rowcount > 0

    # devices: claim codes and owners

    def register_claim(self, device: str, code: str, now: float) -> None:
        """Keep the hash of device's claim code (a device provisioned again
        gets its new one). Raises AccountError for a malformed code."""
        try:
            self.db.execute(
                "INSERT INTO device_claims (device, code_hash, created) VALUES (?, ?, ?) ON CONFLICT(device)"
                " DO UPDATE SET code_hash = excluded.code_hash, created = excluded.created",
                (device, claim_hash(code), now),
            )
        except IntegrityError:
            raise AccountError("that claim code is another device's: make a new one", "exists") from None

    def claim(self, account: Account, code: str, now: float) -> str:
        """The device whose claim code this is becomes the account's. Raises
        AccountError: too many failed claims lately (`rate_limited`), no
        device has that code (`bad_claim_code`), it has an owner
        (`claimed`: the owner releases it first). A device whose data was
        forgotten has its data kept again from the claim on."""
        since = now - CLAIM_WINDOW_S
        failed = self.db.execute(
            "SELECT count(*) FROM claim_attempts WHERE account = ? AND at > ? AND ok = 0", (account.id, since)
        ).fetchone()[0]
        if failed >= CLAIM_TRIES:
            raise AccountError(
                f"{CLAIM_TRIES} wrong claim codes within {CLAIM_WINDOW_S / 60:g} minutes: try again later",
                "rate_limited",
            )
        digits = normal_claim_code(code)
        row = None
        if digits is not None:
            h = hashlib.sha256(digits.encode()).hexdigest()
            row = self.db.execute("SELECT device FROM device_claims WHERE code_hash = ?", (h,)).fetchone()
        if row is None:  # (only failures count: at most CLAIM_TRIES an account in a window)
            with self.store.transaction():
                self.db.execute("DELETE FROM claim_attempts WHERE at <= ?", (since,))
                self.db.execute(
                    "INSERT INTO claim_attempts (account, at, ok) VALUES (?, ?, 0)", (account.id, now)
                )
            raise AccountError("no device has that claim code", "bad_claim_code")
        device = str(row["device"])
        owner = self.owner_of(device)
        if owner is not None and owner != account.id:
            raise AccountError(f"{device} has an owner: they release it first", "claimed")
        with self.store.transaction():
            self.db.execute(
                upsert("device_owners", ("device", "account", "since"), ("device",)),
                (device, account.id, now),
            )
            # a forgotten device's data is kept again from its new claim on (gateway/footprint.py)
            self.db.execute("DELETE FROM device_forgotten WHERE device = ?", (device,))
        return device

    def release(self, account: Account, device: str) -> None:
        """The account gives up its device, and with it its say on the
        device's updates (its decisions, its policy and window) and what was
        computed for it (the twin's previews, the heater power it gave): the
        next owner starts afresh, and sees nothing of the device from before
        its own claim (owner_since). Raises AccountError if it is not its own."""
        self.db.begin_exclusive()
        try:
            cur = self.db.execute(
                "DELETE FROM device_owners WHERE device = ? AND account = ?", (device, account.id)
            )
            if cur.rowcount == 0:
                raise AccountError(f"{device} is not yours", "not_found")
            for sql in _OWNERS_SAY:
                self.db.execute(sql, (device,))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def owner_since(self, device: str) -> float | None:
        """When the device's owner claimed it (None: it has none)."""
        row = self.db.execute("SELECT since FROM device_owners WHERE device = ?", (device,)).fetchone()
        return float(row[0]) if row is not None else None

    def owner_of(self, device: str) -> int | None:
        row = self.db.execute("SELECT account FROM device_owners WHERE device = ?", (device,)).fetchone()
        return int(row[0]) if row is not None else None

    def devices_of(self, account: Account) -> list[str]:
        rows = self.db.execute(
            "SELECT device FROM device_owners WHERE account = ? ORDER BY device", (account.id,)
        )
        return [str(r[0]) for r in rows]

    def may_see(self, account: Account, device: str) -> bool:
        """Whether the account may see and act on the device: a maker or an
        admin any, an owner its own."""
        return account.may("maker") or self.owner_of(device) == account.id


_DUMMY = hash_password(secrets.token_hex(8))


def _password_hash(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters", "weak_password")
    return hash_password(password)


def account_from_row(row: Row) -> Account:
    return Account(
        int(row["id"]), str(row["name"]), str(row["role"]), float(row["created"]), bool(row["disabled"])
    )
