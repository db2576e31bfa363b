"""Accounts, tokens and claims (gateway/accounts.py) on a real SQLite store:
passwords and tokens kept only as hashes, roles, claim codes (with typos
forgiven and guesses limited), ownership and its transfer, and a database
of the schema before reopened with its data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import db as dbapi
from gateway.accounts import (
    CLAIM_TRIES,
    CLAIM_WINDOW_S,
    ROLES,
    Account,
    AccountError,
    Accounts,
    check_password,
    claim_hash,
    hash_password,
    new_claim_code,
    normal_claim_code,
)
from gateway.store import SCHEMA_VERSION, Store

from ..conftest import DbAt
from ..support.schema import as_of

T0 = 1_800_000_000.0
PASSWORD = "correct horse battery"


@pytest.fixture
def accounts(db_at: DbAt) -> Accounts:
    return Accounts(Store(db_at()))


def test_a_password_is_kept_as_an_scrypt_hash_and_checks() -> None:
    h = hash_password(PASSWORD)
    assert h.startswith("scrypt$16384$8$1$") and PASSWORD not in h
    assert check_password(PASSWORD, h) and not check_password(PASSWORD + "x", h)
    assert hash_password(PASSWORD) != h  # salted
    for broken in ("", "scrypt$1$2", "md5$16384$8$1$aa$bb", h.replace("scrypt", "bcrypt"), h + "$x"):
        assert not check_password(PASSWORD, broken)


def test_accounts_are_created_with_a_role_and_log_in_with_their_password(accounts: Accounts) -> None:
    a = accounts.create("ann", "owner", PASSWORD, T0)
    assert (a.name, a.role) == ("ann", "owner") and accounts.get("ann") == a
    assert accounts.login("ann", PASSWORD) == a
    assert accounts.login("ann", "wrong password") is None and accounts.login("bob", PASSWORD) is None
    stored = accounts.db.execute("SELECT password FROM accounts").fetchone()[0]
    assert PASSWORD not in stored
    with pytest.raises(AccountError, match="already") as e:
        accounts.create("ann", "maker", PASSWORD, T0)
    assert e.value.code == "exists"
    with pytest.raises(AccountError, match="role"):
        accounts.create("cat", "root", PASSWORD, T0)
    with pytest.raises(AccountError, match="name"):
        accounts.create("Ann Smith", "owner", PASSWORD, T0)
    with pytest.raises(AccountError, match="password") as e:
        accounts.create("dan", "owner", "short", T0)
    assert e.value.code == "weak_password"
    assert [x.name for x in accounts.all()] == ["ann"]


def test_roles_rank_owner_below_maker_below_admin() -> None:
    owner, maker, admin = (Account(i, r, r, T0) for i, r in enumerate(ROLES))
    assert owner.may("owner") and not owner.may("maker") and not owner.may("admin")
    assert maker.may("owner") and maker.may("maker") and not maker.may("admin")
    assert admin.may("owner") and admin.may("maker") and admin.may("admin")


def test_a_token_names_its_account_and_only_its_hash_is_kept(accounts: Accounts) -> None:
    a = accounts.create("ann", "maker", None, T0)
    token = accounts.issue_token(a, "laptop", T0)
    assert token.startswith("pbt_") and len(token) > 40
    assert accounts.by_token(token, T0 + 1) == a
    assert token not in str([tuple(r) for r in accounts.db.execute("SELECT * FROM account_tokens")])
    listed = accounts.tokens(a)
    assert [(t["label"], t["last_used"]) for t in listed] == [("laptop", T0 + 1)]
    for wrong in ("", token[:-1], token + "x", "Bearer " + token, "pbt_" + "A" * 200):
        assert accounts.by_token(wrong, T0) is None
    assert accounts.revoke_token(a, str(listed[0]["id"]))
    assert accounts.by_token(token, T0) is None
    assert not accounts.revoke_token(a, "'; DROP TABLE") and not accounts.revoke_token(a, "0" * 12)


def test_an_account_without_a_password_cannot_log_in(accounts: Accounts) -> None:
    accounts.create("ci", "maker", None, T0)
    assert accounts.login("ci", "") is None and accounts.login("ci", PASSWORD) is None


def test_a_claim_code_has_80_random_bits_in_four_groups() -> None:
    codes = {new_claim_code() for _ in range(200)}
    assert len(codes) == 200
    for c in codes:
        groups = c.split("-")
        assert [len(g) for g in groups] == [4, 4, 4, 4] and normal_claim_code(c) == c.replace("-", "")


@given(st.text(max_size=40))
def test_any_text_is_a_claim_code_or_refused_clearly(text: str) -> None:
    digits = normal_claim_code(text)
    if digits is None:
        with pytest.raises(AccountError, match="16 letters and digits") as e:
            claim_hash(text)
        assert e.value.code == "bad_claim_code"
    else:
        assert len(digits) == 16 and claim_hash(text) == claim_hash(digits)


@settings(max_examples=30)
@given(st.data())
def test_a_claim_code_typed_loosely_is_the_same_code(data: st.DataObject) -> None:
    code = new_claim_code()
    typed = data.draw(
        st.sampled_from([code.lower(), code.replace("-", " "), code.replace("-", ""), f" {code} "])
    )
    typed = typed.replace("0", data.draw(st.sampled_from(["0", "o", "O"])))
    typed = typed.replace("1", data.draw(st.sampled_from(["1", "i", "l", "I", "L"])))
    assert claim_hash(typed) == claim_hash(code)


def test_an_owner_claims_a_device_by_its_code_and_another_cannot_until_it_is_released(
    accounts: Accounts,
) -> None:
    ann = accounts.create("ann", "owner", PASSWORD, T0)
    bob = accounts.create("bob", "owner", PASSWORD, T0)
    maker = accounts.create("mia", "maker", PASSWORD, T0)
    code = new_claim_code()
    accounts.register_claim("th-1", code, T0)
    assert not accounts.may_see(ann, "th-1") and accounts.may_see(maker, "th-1")
    assert accounts.claim(ann, code.lower(), T0) == "th-1"
    assert accounts.owner_of("th-1") == ann.id and accounts.devices_of(ann) == ["th-1"]
    assert accounts.may_see(ann, "th-1") and not accounts.may_see(bob, "th-1")
    assert accounts.claim(ann, code, T0) == "th-1"  # again: still hers
    with pytest.raises(AccountError, match="has an owner") as e:
        accounts.claim(bob, code, T0)
    assert e.value.code == "claimed" and accounts.owner_of("th-1") == ann.id
    with pytest.raises(AccountError, match="not yours"):
        accounts.release(bob, "th-1")
    accounts.release(ann, "th-1")  # sold: the box and its code go to bob
    assert accounts.claim(bob, code, T0) == "th-1" and accounts.devices_of(ann) == []


def test_a_device_provisioned_again_has_only_its_new_code(accounts: Accounts) -> None:
    ann = accounts.create("ann", "owner", PASSWORD, T0)
    old, new = new_claim_code(), new_claim_code()
    accounts.register_claim("th-1", old, T0)
    accounts.register_claim("th-1", new, T0 + 1)
    with pytest.raises(AccountError, match="no device"):
        accounts.claim(ann, old, T0 + 2)
    assert accounts.claim(ann, new, T0 + 2) == "th-1"


def test_guessing_claim_codes_is_limited_per_account(accounts: Accounts) -> None:
    mallory = accounts.create("mallory", "owner", PASSWORD, T0)
    ann = accounts.create("ann", "owner", PASSWORD, T0)
    code = new_claim_code()
    accounts.register_claim("th-1", code, T0)
    for i in range(CLAIM_TRIES):
        with pytest.raises(AccountError, match="no device") as e:
            accounts.claim(mallory, new_claim_code(), T0 + i)
        assert e.value.code == "bad_claim_code"
    # even the right code is refused now, and the refusal says why
    with pytest.raises(AccountError, match="try again later") as e:
        accounts.claim(mallory, code, T0 + CLAIM_TRIES)
    assert e.value.code == "rate_limited" and accounts.owner_of("th-1") is None
    assert accounts.claim(ann, code, T0 + CLAIM_TRIES) == "th-1"  # others are not held up
    accounts.release(ann, "th-1")
    assert accounts.claim(mallory, code, T0 + CLAIM_WINDOW_S + CLAIM_TRIES) == "th-1"  # the window passed


def test_a_database_of_the_schema_before_keeps_its_data_and_gains_the_accounts(db_at: DbAt) -> None:
    db = db_at()
    with Store(db) as s:
        as_of(s, 6)
        s.set_meta("kept", "yes")
    with Store(db) as s:
        assert s.schema == SCHEMA_VERSION and s.get_meta("kept") == "yes"
        a = Accounts(s).create("ann", "owner", PASSWORD, T0)
        assert Accounts(s).get("ann") == a
    with pytest.raises(dbapi.IntegrityError), Store(db) as s:
        s.db.execute("INSERT INTO device_claims (device, code_hash, created) VALUES ('a', 'x', 0)")
        s.db.execute("INSERT INTO device_claims (device, code_hash, created) VALUES ('b', 'x', 0)")
