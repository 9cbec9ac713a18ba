"""
A throwaway PKI for the tests, made with cryptography alone, independent
of secmsg.pki.certificates so that a fault there cannot hide one here.

Validity windows are placed days or years away from the current time, so
that no test depends on how long it takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_AUTH = (ExtendedKeyUsageOID.CLIENT_AUTH,)
SERVER_AUTH = (ExtendedKeyUsageOID.SERVER_AUTH,)


def now() -> datetime:
    """
    The time certificates are made around; OpenSSL checks them against the
    machine's clock during a real handshake, so they must be valid by it.
    """
    return datetime.now(UTC)


@dataclass(frozen=True)
class Pair:
    """
    A certificate, its key and the chain a peer presents (leaf first).
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def certificate_pem(self) -> bytes:
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM)
            for c in (self.certificate, *self.chain)
        )

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(
    common_name: str | None, extra: tuple[x509.NameAttribute, ...] = ()
) -> x509.Name:
    if common_name is None:
        return x509.Name(list(extra))
    return x509.Name([*extra, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class CertificateAuthority:
    """
    A test CA that signs whatever a test asks for, good or bad; its
    certificate began a year ago and lasts C{lifetime}.
    """

    name: str = "secmsg test CA"
    parent: CertificateAuthority | None = None
    pair: Pair = field(init=False)
    revoked: list[int] = field(default_factory=list)
    lifetime: timedelta = timedelta(days=3650)

    def __post_init__(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(self.name)
        issuer_name = self.parent.pair.certificate.subject if self.parent else subject
        issuer_key = self.parent.pair.key if self.parent else key
        start = now() - timedelta(days=365)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + self.lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
            )
            .sign(issuer_key, hashes.SHA256())
        )
        self.pair = Pair(certificate, key)

    @property
    def pem(self) -> bytes:
        return self.pair.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str | None,
        *,
        usages: tuple[x509.ObjectIdentifier, ...] | None = CLIENT_AUTH,
        valid_from: timedelta = timedelta(days=-1),
        valid_for: timedelta = timedelta(days=30),
        names: list[x509.GeneralName] | None = None,
        ca: bool = False,
        subject: tuple[x509.NameAttribute, ...] = (),
        extensions: tuple[x509.ExtensionType, ...] = (),
    ) -> Pair:
        """
        A leaf certificate (or, with C{ca}, one that claims to be a CA);
        C{valid_from} is relative to now, C{usages} L{None} leaves the
        extended key usage out, C{subject} adds fields before the CN.  Its
        chain holds this CA's own chain; C{extensions} are added last.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        start = now() + valid_from
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, subject))
            .issuer_name(self.pair.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + valid_for)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.pair.key.public_key()
                ),
                False,
            )
        )
        if usages is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        if ca:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=True, path_length=None), True
            )
        for extension in extensions:
            builder = builder.add_extension(extension, False)
        certificate = builder.sign(self.pair.key, hashes.SHA256())
        return Pair(certificate, key, self.chain)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """
        What a peer presents after its leaf: this CA and the CAs above it,
        when this CA is an intermediate; nothing for a root.
        """
        if self.parent is None:
            return ()
        return (self.pair.certificate, *self.parent.chain)

    def intermediate(self, name: str) -> CertificateAuthority:
        """
        A CA below this one.
        """
        return CertificateAuthority(name, parent=self)

    def server(self) -> Pair:
        return self.issue(
            "localhost",
            usages=SERVER_AUTH,
            names=[x509.DNSName("localhost")],
        )

    def revoke(self, pair: Pair) -> None:
        self.revoked.append(pair.certificate.serial_number)

    def crl_pem(self, next_update: timedelta = timedelta(days=7)) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.pair.certificate.subject)
            .last_update(now() - timedelta(hours=1))
            .next_update(now() + next_update)
        )
        for serial in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now() - timedelta(hours=1))
                .build()
            )
        crl = builder.sign(self.pair.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)


def self_signed(common_name: str) -> Pair:
    """
    A self-signed client certificate that looks like one of ours.
    """
    impostor = CertificateAuthority(common_name)
    key, certificate = impostor.pair.key, impostor.pair.certificate
    return Pair(certificate, key)
