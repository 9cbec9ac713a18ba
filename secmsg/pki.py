"""
Certificates for secmsg, made with cryptography: a CA, server and client
certificates, CRLs, and the development instance C{secmsg init} writes.

Keys are ECDSA P-256.  Private keys are written with mode 0600 from the
moment the file exists, and no existing file is ever overwritten.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secmsg.errors import ConfigurationError

CA_DAYS = 3650
LEAF_DAYS = 365
CRL_DAYS = 365


@dataclass(frozen=True)
class Issued:
    """
    A certificate and its private key.
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def create_ca(common_name: str, now: datetime, days: int = CA_DAYS) -> Issued:
    """
    A self-signed CA that may sign leaf certificates and CRLs, nothing more.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        _builder(name, name, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def issue(
    ca: Issued,
    common_name: str,
    now: datetime,
    days: int = LEAF_DAYS,
    *,
    server_names: tuple[str, ...] = (),
) -> Issued:
    """
    A leaf certificate signed by C{ca}: for a client (clientAuth) unless
    C{server_names} are given, in which case for a server (serverAuth) with
    those DNS names and IP addresses.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if server_names
        else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        _builder(subject, ca.certificate.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]),
            critical=False,
        )
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def sign_crl(
    ca: Issued, now: datetime, revoked: tuple[int, ...] = (), days: int = CRL_DAYS
) -> x509.CertificateRevocationList:
    """
    A CRL of C{ca} revoking the given serial numbers, valid for C{days}.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + timedelta(days=days))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """
    Write an unencrypted PEM key, readable by its owner only.
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(path, pem, 0o600)


def write_public(
    path: Path, *objects: x509.Certificate | x509.CertificateRevocationList
) -> None:
    """
    Write certificates or CRLs as PEM.
    """
    _write_new(
        path,
        b"".join(o.public_bytes(serialization.Encoding.PEM) for o in objects),
        0o644,
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigurationError(str(path), "already exists; not overwritten") from None
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


DEVELOPMENT_USERS = {"admin": ["admin"], "alice": ["user"], "bob": ["user"]}

DEVELOPMENT_POLICY = """\
# Who may do what.  A verified identity not listed under [identities]
# gets default_roles; an empty list refuses it.
default_roles = ["guest"]

[roles.guest]
commands = ["HELP", "WHOAMI", "WHO", "PING", "QUIT"]

[roles.user]
inherits = ["guest"]
commands = ["MSG", "JOIN", "PART", "SAY", "ROOMS"]

[roles.admin]
inherits = ["user"]
commands = ["KICK", "BROADCAST", "RELOAD"]

[identities]
{identities}
"""

DEVELOPMENT_CONFIG = """\
# A secmsg development instance made by `secmsg init`.
# Run it with: twistd -n secmsg --config {config}
# Paths are relative to this file's directory.
port = 7443
interface = "127.0.0.1"
cert = "server.pem"
key = "server.key"
ca = "ca.pem"
crl = "crl.pem"
policy = "policy.toml"
data-dir = "data"
"""


def create_instance(directory: Path, now: datetime) -> Path:
    """
    Write a ready-to-run development instance into C{directory}: a CA, its
    CRL, a server certificate for localhost, 127.0.0.1 and ::1, client
    certificates for the L{DEVELOPMENT_USERS}, a policy and a config file.

    @return: the config file.
    @raise ConfigurationError: the directory already holds an instance.
    """
    config = directory / "secmsg.toml"
    if config.exists():
        raise ConfigurationError(str(config), "already exists; not overwritten")
    clients = directory / "clients"
    clients.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = create_ca("secmsg development CA", now)
    write_public(directory / "ca.pem", ca.certificate)
    write_private_key(directory / "ca.key", ca.key)
    write_public(directory / "crl.pem", sign_crl(ca, now))
    server = issue(ca, "localhost", now, server_names=("localhost", "127.0.0.1", "::1"))
    write_public(directory / "server.pem", server.certificate)
    write_private_key(directory / "server.key", server.key)
    for user in DEVELOPMENT_USERS:
        client = issue(ca, user, now)
        write_public(clients / f"{user}.pem", client.certificate)
        write_private_key(clients / f"{user}.key", client.key)
    identities = "\n".join(
        f"{user} = {roles!r}".replace("'", '"')
        for user, roles in DEVELOPMENT_USERS.items()
    )
    (directory / "policy.toml").write_text(
        DEVELOPMENT_POLICY.format(identities=identities)
    )
    config.write_text(DEVELOPMENT_CONFIG.format(config=config))
    return config
