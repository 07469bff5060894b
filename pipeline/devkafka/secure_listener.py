"""A SASL_SSL listener for the local broker (tests and trying out secured clients).

``ListenerSecurity`` adds one ``SASL_SSL`` listener to a ``LocalBroker`` next to its
PLAINTEXT one (which stays the inter-broker, controller-facing and readiness listener):
TLS with a PEM keystore made by ``make_certificates`` (a CA and a certificate for
127.0.0.1/localhost), SASL PLAIN users from the listener's JAAS config, SCRAM-SHA-256/512
users written into the metadata log when the data folder is formatted (``--add-scram``),
and optionally Kafka's StandardAuthorizer for ACL tests (the admin user and the PLAINTEXT
listener's ANONYMOUS principal are super users).

Certificates need the ``cryptography`` package (a dev dependency).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LISTENER = "SASL_SSL"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA's certificate (clients trust it) and the broker's key + chain."""

    ca_cert: Path
    ca_key: Path
    broker_keystore: Path  # the broker's private key (PKCS#8) and its certificate


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(
    folder: Path, *, days: int = 2, ca_name: str = "leadflow test CA"
) -> Certificates:
    """A new CA and a broker certificate for 127.0.0.1 and localhost, in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = _name(ca_name)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_subject).issuer_name(ca_subject)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost")).issuer_name(ca_subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_cert_path, ca_key_path = folder / "ca.pem", folder / "ca-key.pem"
    ca_cert_path.write_bytes(ca.public_bytes(pem))
    ca_key_path.write_bytes(ca_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ca_key_path.chmod(0o600)
    keystore = folder / "broker-keystore.pem"
    keystore.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(pem) + ca.public_bytes(pem)
    )
    keystore.chmod(0o600)
    return Certificates(ca_cert_path, ca_key_path, keystore)


@dataclass(frozen=True)
class ListenerSecurity:
    """What the local broker's SASL_SSL listener accepts.

    ``plain_users`` log in with PLAIN, ``scram_users`` with SCRAM-SHA-256 and SCRAM-SHA-512
    (name -> password). With ``authorizer`` on, only ``super_users`` (and the PLAINTEXT
    listener) may do anything that no ACL allows.
    """

    certificates: Certificates
    plain_users: Mapping[str, str] = field(default_factory=dict)
    scram_users: Mapping[str, str] = field(default_factory=dict)
    authorizer: bool = False
    super_users: tuple[str, ...] = ("admin",)

    def listener_properties(self, props: Mapping[str, str], port: int, host: str) -> dict[str, str]:
        """``props`` (LocalBroker's server.properties) with the SASL_SSL listener added."""
        name = LISTENER.lower()
        out = dict(props)
        out["listeners"] = f"{props['listeners']},{LISTENER}://{host}:{port}"
        out["advertised.listeners"] = f"{props['advertised.listeners']},{LISTENER}://{host}:{port}"
        out["listener.security.protocol.map"] = (
            f"{props['listener.security.protocol.map']},{LISTENER}:SASL_SSL"
        )
        out["sasl.enabled.mechanisms"] = ",".join(MECHANISMS)
        out[f"listener.name.{name}.sasl.enabled.mechanisms"] = ",".join(MECHANISMS)
        out[f"listener.name.{name}.ssl.keystore.type"] = "PEM"
        out[f"listener.name.{name}.ssl.keystore.location"] = str(self.certificates.broker_keystore)
        out[f"listener.name.{name}.ssl.client.auth"] = "none"
        plain = " ".join(f'user_{u}="{p}"' for u, p in self.plain_users.items())
        out[f"listener.name.{name}.plain.sasl.jaas.config"] = (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain};"
        )
        for mech in ("scram-sha-256", "scram-sha-512"):
            out[f"listener.name.{name}.{mech}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        if self.authorizer:
            out["authorizer.class.name"] = AUTHORIZER
            # ANONYMOUS: the PLAINTEXT listener, which the broker and controller use themselves.
            out["super.users"] = ";".join(
                [*(f"User:{u}" for u in self.super_users), "User:ANONYMOUS"]
            )
            out["allow.everyone.if.no.acl.found"] = "false"
        return out

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments that create the SCRAM users (KRaft, 3.5+)."""
        args: list[str] = []
        for user, password in self.scram_users.items():
            for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                args += ["--add-scram", f"{mech}=[name={user},password={password}]"]
        return args
