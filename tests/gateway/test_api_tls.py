"""The API over HTTPS (gateway/tls.py, docs/security.md 5.3) and the command
line's login (gateway/cli_login.py): a real gateway serving the certificate
it made, real TLS handshakes that verify it, the CLI as a user runs it with
its own XDG_CONFIG_HOME."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from gateway.accounts import Accounts, new_claim_code
from gateway.errors import ConfigError
from gateway.service import Gateway
from gateway.store import Store
from gateway.tls import ApiTls, client_context, reach_url, server_cert

from ..support import messages
from ..support.cli import run_cli
from ..support.mosquitto import Mosquitto
from .conftest import Running, StartGateway

PASSWORD = "correct horse battery"


async def _presented(url: str, cadata: str) -> bytes:
    """The DER of the certificate the server at url presents, verified against cadata."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port), ssl=client_context(cadata=cadata))
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return bytes(der)


def _api(r: Running) -> dict[str, str]:
    return dict(json.loads(r.store.get_meta("api") or "{}"))


async def _https(start_gateway: StartGateway, **kw: object) -> Running:
    r = await start_gateway(api_tls=ApiTls(on=True), **kw)
    Accounts(r.store).create("ann", "owner", PASSWORD, 1.0)
    return r


async def test_the_gateway_presents_the_certificate_it_made_and_the_cli_trusts_only_it(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    r = await _https(start_gateway)
    api = _api(r)
    assert r.url.startswith("https://127.0.0.1:") and api["url"] == r.url
    cert = Path(api["cert"])
    assert cert.parent == r.store.beside(".tls")
    assert stat.S_IMODE((cert.parent / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
    der = await _presented(r.url, cert.read_text())
    assert hashlib.sha256(der).hexdigest() == api["fingerprint"]
    names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    shown = {str(n.value) for n in names.value}
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname()} <= shown
    # the system's CAs do not vouch for it: a client that was not told to trust it refuses
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection("127.0.0.1", int(r.url.rsplit(":", 1)[1]), ssl=client_context())
    # the command line on the machine trusts it through the database, and nothing else
    done = await asyncio.to_thread(run_cli, "account", "list", "--db", str(r.store.where))
    assert done.returncode == 0 and "ann" in done.stdout, done.stderr
    # HTTPS: HSTS, and the session's cookie is Secure with the __Host- prefix
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            r.url + "/api/v1/session",
            json={"name": "ann", "password": PASSWORD},
            ssl=client_context(cadata=cert.read_text()),
        ) as resp,
    ):
        assert resp.status == 201
        assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
        set_cookie = resp.headers["Set-Cookie"]
        assert (
            set_cookie.startswith("__Host-pb_session=pbs_")
            and "Secure" in set_cookie
            and "Path=/" in set_cookie
        )


async def test_a_certificate_replaced_under_the_gateway_is_not_trusted_by_the_cli(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    r = await _https(start_gateway)
    cert = Path(_api(r)["cert"])
    other = server_cert(ApiTls(on=True), "127.0.0.1", tmp_path / "other", time.time())
    cert.write_bytes(other.cert.read_bytes())
    done = await asyncio.to_thread(run_cli, "account", "list", "--db", str(r.store.where))
    assert done.returncode == 1 and "is not the certificate the gateway serves" in done.stderr


def test_the_certificate_is_kept_and_made_again_when_it_expires_or_does_not_name_the_address(
    tmp_path: Path,
) -> None:
    folder, now = tmp_path / "tls", time.time()
    first = server_cert(ApiTls(), "127.0.0.1", folder, now)
    assert server_cert(ApiTls(), "localhost", folder, now + 3600).fingerprint == first.fingerprint
    later = server_cert(ApiTls(), "127.0.0.1", folder, now + 900 * 86400)  # past its 825 days
    assert later.fingerprint != first.fingerprint
    other = server_cert(ApiTls(), "192.0.2.7", folder, now)
    assert other.fingerprint != later.fingerprint
    c = x509.load_pem_x509_certificate(other.cert.read_bytes())
    names = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "192.0.2.7" in {str(n.value) for n in names}
    assert c.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


async def test_a_given_certificate_is_served(start_gateway: StartGateway, tmp_path: Path) -> None:
    given = server_cert(ApiTls(), "127.0.0.1", tmp_path / "given", time.time())
    r = await start_gateway(api_tls=ApiTls(cert=given.cert, key=given.key))
    assert _api(r)["fingerprint"] == given.fingerprint and not r.store.beside(".tls").exists()
    der = await _presented(r.url, given.cert.read_text())
    assert hashlib.sha256(der).hexdigest() == given.fingerprint


async def test_an_address_off_loopback_is_served_over_https(start_gateway: StartGateway) -> None:
    r = await start_gateway(api=("0.0.0.0", 0))
    assert r.url.startswith("https://127.0.0.1:")
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            await s.get(r.url.replace("https:", "http:") + "/api/v1/health")


def test_plain_http_off_loopback_is_refused(gw_db: Path | str, mosquitto: Mosquitto) -> None:
    with Store(gw_db) as store:
        for host in ("0.0.0.0", "192.0.2.7", "gateway.example"):
            with pytest.raises(ConfigError, match="plain HTTP on loopback only"):
                Gateway(mosquitto.gateway_url, store, api=(host, 8480), api_tls=ApiTls(on=False))
    done = run_cli(
        "gateway", "run", "--broker", str(mosquitto.gateway_url), "--api", "0.0.0.0:0", "--no-tls",
        "--db", str(gw_db),
    )  # fmt: skip
    assert done.returncode == 1
    assert "the API serves plain HTTP on loopback only, not on 0.0.0.0" in done.stderr


# ---- permabeta login and logout -------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path / "config"), "PERMABETA_HOME": str(tmp_path / "home")}


async def _cli(tmp_path: Path, *words: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, *words, stdin=stdin, env=_env(tmp_path))


async def test_login_pins_the_certificate_by_its_fingerprint_and_logout_revokes_the_token(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    r = await _https(start_gateway)
    accounts = Accounts(r.store)
    r.store.upsert_hello("th-ann", messages.hello("th-ann"), 1.0)
    code = new_claim_code()
    accounts.register_claim("th-ann", code, 1.0)
    ann = accounts.get("ann")
    assert ann is not None
    accounts.claim(ann, code, 1.0)
    api = _api(r)
    creds = tmp_path / "config" / "permabeta" / "credentials.json"
    # not told what to trust: the fingerprint is shown, nothing is kept
    done = await _cli(tmp_path, "login", r.url, "--name", "ann", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 1 and f"--fingerprint {api['fingerprint']}" in done.stderr, done.stderr
    assert not creds.exists()
    # a wrong fingerprint: refused, with both named
    wrong = "ab" * 32
    done = await _cli(tmp_path, "login", r.url, "--name", "ann", "--fingerprint", wrong, "--password-stdin",
                      stdin=PASSWORD + "\n")  # fmt: skip
    assert done.returncode == 1 and f"SHA-256 {api['fingerprint']}, not the {wrong} given" in done.stderr
    assert not creds.exists()
    # the right one, typed as OpenSSL shows it
    typed = ":".join(api["fingerprint"][i : i + 2] for i in range(0, 64, 2)).upper()
    done = await _cli(tmp_path, "login", r.url, "--name", "ann", "--fingerprint", typed, "--password-stdin",
                      stdin=PASSWORD + "\n")  # fmt: skip
    assert done.returncode == 0 and "logged in to" in done.stdout, done.stderr
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600 and stat.S_IMODE(creds.parent.stat().st_mode) == 0o700
    kept = json.loads(creds.read_text())
    assert (kept["url"], kept["account"], kept["fingerprint"]) == (r.url, "ann", api["fingerprint"])
    assert kept["token"].startswith("pbt_") and "BEGIN CERTIFICATE" in kept["cert"]
    # later commands use it: no --db
    done = await _cli(tmp_path, "devices", "set", "th-ann", "--policy", "ask")
    assert done.returncode == 0 and "ask" in done.stdout, done.stderr
    done = await _cli(tmp_path, "--gateway", "https://elsewhere.example:8480", "devices", "set", "th-ann",
                      "--policy", "auto")  # fmt: skip
    assert done.returncode == 1 and "not logged in to https://elsewhere.example:8480" in done.stderr
    # pinned: another certificate in the gateway's place is refused
    other = server_cert(ApiTls(on=True), "127.0.0.1", tmp_path / "other", time.time())
    creds.write_text(json.dumps(kept | {"cert": other.cert.read_text()}))
    done = await _cli(tmp_path, "devices", "set", "th-ann", "--policy", "auto")
    assert done.returncode == 1 and "presented a certificate this client does not trust" in done.stderr
    creds.write_text(json.dumps(kept))
    # logout: the token is revoked and the file gone
    done = await _cli(tmp_path, "logout")
    assert done.returncode == 0 and "token revoked" in done.stdout, done.stderr
    assert not creds.exists() and accounts.by_token(kept["token"], 2.0) is None


async def test_login_to_the_gateway_of_a_local_database_trusts_what_it_wrote(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    r = await _https(start_gateway)
    done = await _cli(tmp_path, "login", "--name", "ann", "--db", str(r.store.where), "--password-stdin",
                      stdin=PASSWORD + "\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    kept = json.loads((tmp_path / "config" / "permabeta" / "credentials.json").read_text())
    assert kept["url"] == r.url and kept["fingerprint"] == _api(r)["fingerprint"]


async def test_login_refuses_to_send_a_password_in_the_clear_off_loopback(tmp_path: Path) -> None:
    done = await _cli(tmp_path, "login", "http://192.0.2.7:8480", "--name", "ann", "--password-stdin",
                      stdin=PASSWORD + "\n")  # fmt: skip
    assert done.returncode == 1 and "over https:// only" in done.stderr


def test_what_another_machine_reaches_an_api_at() -> None:
    """A pool's worker publishes where the others pass requests on to it:
    an API on every address by the machine's name (its certificate's), on one
    address there, on loopback nowhere."""
    assert reach_url("0.0.0.0", 8481, "gw-box") == "https://gw-box:8481"
    assert reach_url("::", 8481, "gw-box") == "https://gw-box:8481"
    assert reach_url("10.0.0.7", 8481, "gw-box") == "https://10.0.0.7:8481"
    assert reach_url("fd00::7", 8481, "gw-box") == "https://[fd00::7]:8481"
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert reach_url(loopback, 8481, "gw-box") is None


def test_a_worker_passes_requests_on_only_to_the_certificate_the_leader_published(tmp_path: Path) -> None:
    """gateway/api_pool.py trusts the leader on another machine by the one
    certificate it published: another certificate, for the same name, is refused."""
    from gateway.tls import _make, trusting

    for name in ("leader", "other"):
        _make(tmp_path / name / "cert.pem", tmp_path / name / "key.pem", ["gw-box", "127.0.0.1"], time.time())
    published = (tmp_path / "leader" / "cert.pem").read_text()

    def handshake(served: str, trusted: str) -> None:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(tmp_path / served / "cert.pem", tmp_path / served / "key.pem")
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        client = trusting(trusted).wrap_bio(c_in, c_out, server_hostname="gw-box")
        srv = server.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for end, out, peer_in in ((client, c_out, s_in), (srv, s_out, c_in)):
                try:
                    end.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                peer_in.write(out.read())
        assert client.version() is not None  # (done)

    handshake("leader", published)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake("other", published)
