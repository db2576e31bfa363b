"""The broker's CA (gateway/ca.py) and `permabeta broker ca`."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from gateway.ca import CaFiles, ca_der, create_ca, read_ca, server_cert
from gateway.cli import main
from gateway.errors import ConfigError


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_ca_signs_a_server_certificate_for_the_hosts_given(tmp_path: Path) -> None:
    ca = create_ca(tmp_path / "ca")
    assert _mode(tmp_path / "ca") == 0o700 and _mode(ca.key) == 0o600
    cert_path, key_path = server_cert(tmp_path / "ca", ["broker.lan", "10.0.0.5", "::1"], tmp_path / "broker")
    assert _mode(key_path) == 0o600
    authority = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(authority)
    assert authority.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["broker.lan"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    assert ca_der(tmp_path / "ca") == ca.der.read_bytes() == read_ca(ca.cert)


def test_an_existing_ca_is_kept_unless_forced(tmp_path: Path) -> None:
    ca = create_ca(tmp_path)
    before = ca.cert.read_bytes()
    with pytest.raises(ConfigError, match=r"already holds a CA .* --force"):
        create_ca(tmp_path)
    assert ca.cert.read_bytes() == before
    assert create_ca(tmp_path, force=True).cert.read_bytes() != before


@pytest.mark.parametrize("hosts", [[], [""], ["bad host"], ["bad/host"], ["user@host"], ["host:8883"]])
def test_a_host_that_is_no_name_or_address_is_refused(tmp_path: Path, hosts: list[str]) -> None:
    create_ca(tmp_path)
    with pytest.raises(ConfigError, match="host name or IP address"):
        server_cert(tmp_path, hosts)
    assert not (tmp_path / "server.pem").exists()


def test_a_server_certificate_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no CA in .*`permabeta broker ca --out"):
        server_cert(tmp_path, ["localhost"])


def test_read_ca_takes_pem_or_der_and_refuses_what_is_no_ca(tmp_path: Path) -> None:
    ca = create_ca(tmp_path / "ca")
    cert, _ = server_cert(tmp_path / "ca")
    assert read_ca(ca.cert) == read_ca(ca.der) == ca.der.read_bytes()
    with pytest.raises(ConfigError, match="not a CA certificate"):
        read_ca(cert)
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    with pytest.raises(ConfigError, match="not a certificate"):
        read_ca(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="cannot read the CA certificate"):
        read_ca(tmp_path / "missing.der")


def test_broker_ca_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ca"
    assert main(["broker", "ca", "--out", str(out), "--host", "broker.lan"]) == 0
    said = capsys.readouterr().out
    assert "ca.der" in said and "--ca" in said and "broker.lan" in said
    files = CaFiles.of(out)
    first = files.cert.read_bytes()
    assert main(["broker", "ca", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    # a bad host replaces nothing, even forced
    assert main(["broker", "ca", "--out", str(out), "--host", "a b", "--force"]) == 1
    assert "host name or IP address" in capsys.readouterr().err
    assert files.cert.read_bytes() == first
    # a new server certificate from the same CA
    assert main(["broker", "ca", "--out", str(out), "--renew", "--host", "10.1.2.3"]) == 0
    assert files.cert.read_bytes() == first
    cert = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert main(["broker", "ca", "--out", str(tmp_path / "none"), "--renew"]) == 1
    assert "no CA in" in capsys.readouterr().err
