"""
Certificates for secmsg, made with cryptography: CAs (roots and the
issuing CAs under them), server and client certificates, signing requests
and CRLs, each a function of its arguments and the time
given; and writing a file in one step.  Which files a CA keeps, and
whether one may be replaced, is L{secmsg.pki.authority}'s business.

Keys are ECDSA P-256 unless RSA is asked for; every signature is SHA-256.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 365
CRL_DAYS = 30

RSA_SIZES = (3072, 4096)
"""RSA moduli we make; smaller ones fall short of 128-bit security."""

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_BACKDATE = timedelta(minutes=5)
"""How far before now a certificate starts, for peers whose clocks lag."""


@dataclass(frozen=True)
class Issued:
    """
    A certificate and its private key.
    """

    certificate: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True)
class Names:
    """
    The subject alternative names of a leaf certificate.

    @ivar dns: DNS names of a server.
    @ivar ips: IP addresses of a server, as text.
    @ivar emails: e-mail addresses (RFC 822 names).
    @ivar uris: URIs.
    """

    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()

    def general_names(self) -> list[x509.GeneralName]:
        return [
            *(x509.DNSName(name) for name in self.dns),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in self.ips),
            *(x509.RFC822Name(email) for email in self.emails),
            *(x509.UniformResourceIdentifier(uri) for uri in self.uris),
        ]


@dataclass(frozen=True)
class Revocation:
    """
    One revoked certificate as a CRL lists it.
    """

    serial: int
    date: datetime
    reason: x509.ReasonFlags


def new_private_key(rsa_bits: int | None = None) -> PrivateKey:
    """
    An ECDSA P-256 key, or an RSA key of C{rsa_bits}.
    """
    if rsa_bits is None:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def create_ca(
    subject: x509.Name,
    now: datetime,
    days: int = CA_DAYS,
    key: PrivateKey | None = None,
    *,
    path_length: int = 0,
    issuer: Issued | None = None,
) -> Issued:
    """
    A CA that may sign certificates and CRLs, nothing more: self-signed, or
    signed by C{issuer} (an issuing CA under a root).

    @param path_length: how many CAs may stand below it: 0 for a CA that
        signs leaf certificates only, 1 for a root over issuing CAs.
    """
    key = key or new_private_key()
    signing_key = issuer.key if issuer else key
    issuer_name = issuer.certificate.subject if issuer else subject
    builder = (
        _builder(subject, issuer_name, key.public_key(), now, days)
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
        .add_extension(_key_usage(cert_sign=True), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    return Issued(builder.sign(signing_key, hashes.SHA256()), key)


def issue(
    ca: Issued,
    common_name: str,
    now: datetime,
    days: int = LEAF_DAYS,
    *,
    server: bool = False,
    names: Names = Names(),
    key: PrivateKey | None = None,
    units: tuple[str, ...] = (),
) -> Issued:
    """
    A new key and a leaf certificate for it signed by C{ca}, as
    L{sign_leaf} makes one.
    """
    key = key or new_private_key()
    certificate = sign_leaf(
        ca,
        key.public_key(),
        common_name,
        now,
        days,
        server=server,
        names=names,
        units=units,
    )
    return Issued(certificate, key)


def sign_leaf(
    ca: Issued,
    public_key: PublicKey,
    common_name: str,
    now: datetime,
    days: int = LEAF_DAYS,
    *,
    server: bool = False,
    names: Names = Names(),
    units: tuple[str, ...] = (),
) -> x509.Certificate:
    """
    A leaf certificate for C{public_key} signed by C{ca}: for a client
    (clientAuth) or, with C{server}, for a server (serverAuth).  Every
    extension is decided here, whoever holds the key and whatever a
    signing request asked for.

    @param units: organisational units for the subject (OU), which policy
        rules can grant roles by.
    """
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        _builder(
            leaf_subject(common_name, units),
            ca.certificate.subject,
            public_key,
            now,
            days,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    general_names = names.general_names()
    if general_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(general_names), critical=False
        )
    return builder.sign(ca.key, hashes.SHA256())


def leaf_subject(common_name: str, units: tuple[str, ...] = ()) -> x509.Name:
    """
    The subject of a leaf certificate: its organisational units, then its CN.
    """
    return x509.Name(
        [
            *(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in units),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def signing_request(
    key: PrivateKey,
    common_name: str,
    *,
    names: Names = Names(),
    units: tuple[str, ...] = (),
) -> x509.CertificateSigningRequest:
    """
    A certificate signing request for C{key}, asking for what a client
    certificate would hold; the CA decides what it grants.
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        leaf_subject(common_name, units)
    )
    general_names = names.general_names()
    if general_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(general_names), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def sign_crl(
    ca: Issued,
    now: datetime,
    number: int,
    revoked: Sequence[Revocation] = (),
    days: int = CRL_DAYS,
) -> x509.CertificateRevocationList:
    """
    A CRL of C{ca} listing C{revoked}, valid for C{days}.

    @param number: the CRL number, which must grow with every CRL a CA
        signs so that a relying party can tell the newer of two.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for revocation in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(revocation.serial)
            .revocation_date(revocation.date)
        )
        if revocation.reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(
                x509.CRLReason(revocation.reason), critical=False
            )
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca.key, hashes.SHA256())


def pem(
    *objects: x509.Certificate
    | x509.CertificateRevocationList
    | x509.CertificateSigningRequest,
) -> bytes:
    """
    Certificates, CRLs or signing requests as one PEM bundle.
    """
    return b"".join(o.public_bytes(serialization.Encoding.PEM) for o in objects)


def private_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """
    A private key as PKCS#8 PEM, for a file only its owner reads: encrypted
    with C{passphrase} (the best encryption cryptography offers) if given.
    """
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    now: datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
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
