"""A TLS file that exists but is not what its key says is one configuration error naming the
key and the file (ssl's own "[X509: NO_CERTIFICATE_OR_CRL_FOUND]" or "PEM lib" names
neither), and an encrypted client key is refused instead of OpenSSL asking for its
passphrase on the terminal."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from serd.mqttclient import create_client
from serd.mqttsettings import MqttSettings
from serd.validate import ConfigError, build


def client_error(**mqtt: object) -> str:
    settings = build(MqttSettings, {"host": "broker.lan", "tls": True, **mqtt}, "mqtt")
    with pytest.raises(ConfigError) as exc:
        create_client(settings, "t", logger=logging.getLogger("test"))
    return str(exc.value)


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    d = tmp_path_factory.mktemp("pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=serd-test", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(d / "key.pem"), "-aes256", "-passout",
                    "pass:x", "-out", str(d / "key-enc.pem")], check=True, capture_output=True)
    (d / "garbage.pem").write_text("not a certificate\n")
    return {p.stem: p for p in d.iterdir()}


def test_a_ca_file_that_is_no_certificate_is_named(pems: dict[str, Path]) -> None:
    err = client_error(ca_file=str(pems["garbage"]))
    assert err.startswith(f"mqtt.ca_file: {pems['garbage']} holds no usable CA certificate")


def test_a_bad_client_certificate_or_key_is_named(pems: dict[str, Path]) -> None:
    err = client_error(cert_file=str(pems["garbage"]), key_file=str(pems["key"]))
    assert err.startswith(f"mqtt.cert_file {pems['garbage']} with mqtt.key_file {pems['key']}: ")
    err = client_error(cert_file=str(pems["cert"]), key_file=str(pems["garbage"]))
    assert f"mqtt.key_file {pems['garbage']}" in err


def test_an_encrypted_key_is_refused_without_a_passphrase_prompt(
    pems: dict[str, Path],
) -> None:
    err = client_error(cert_file=str(pems["cert"]), key_file=str(pems["key-enc"]))
    assert "the key is encrypted" in err
    # Good files still pass.
    settings = build(MqttSettings, {"host": "broker.lan", "tls": True,
                                    "ca_file": str(pems["cert"]), "cert_file": str(pems["cert"]),
                                    "key_file": str(pems["key"])}, "mqtt")
    create_client(settings, "t", logger=logging.getLogger("test"))
