"""
The certificate-to-identity mapping, fed certificates built from fuzzed
fields (subject attributes of any string type, multi-valued RDNs, SANs,
Unicode) with cryptography's builders, or raw DER.

Properties, for every identity field an operator can choose: the mapping
gives a name token or raises L{CertificateRefused} for a bad identity;
what it says of the certificate (the refusal, the subject shown in logs)
holds nothing L{wire.escape_controls} would escape and is bounded in
length; and a policy rule on a subject field matches a certificate that
holds the value.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from OpenSSL.crypto import FILETYPE_ASN1, load_certificate
from OpenSSL.crypto import Error as OpenSSLError

from secmsg import wire
from secmsg.daemon.identity import (
    SUBJECT_FIELDS,
    SUBJECT_SHOWN,
    AttributeMatch,
    IdentityField,
    IdentityRule,
    describe_subject,
)
from secmsg.errors import CertificateRefused, RefusalReason
from tests.fuzz.fields import Fields

_OIDS = [
    *SUBJECT_FIELDS.values(),
    NameOID.SERIAL_NUMBER,
    NameOID.EMAIL_ADDRESS,
    NameOID.USER_ID,
]
_TYPES = [
    None,
    _ASN1Type.UTF8String,
    _ASN1Type.PrintableString,
    _ASN1Type.IA5String,
    _ASN1Type.BMPString,
    _ASN1Type.UniversalString,
    _ASN1Type.T61String,
    _ASN1Type.VisibleString,
]
_SANS = [x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName]
_SHOWN_AT_MOST = SUBJECT_SHOWN + 120
"""A cut subject's first fields, then its length and digest."""


def one_input(data: bytes) -> None:
    """
    Build (or parse) a certificate from C{data} and map it to identities.
    """
    fields = Fields(data)
    certificate = _raw(fields.rest()) if fields.byte() == 0 else _built(fields)
    if certificate is not None:
        check_certificate(certificate)


def check_certificate(certificate: x509.Certificate) -> None:
    """
    The properties, for one certificate.
    """
    shown = describe_subject(certificate)
    assert _clean(shown) and len(shown) <= _SHOWN_AT_MOST, shown
    for field in IdentityField:
        try:
            identity = IdentityRule(field).identity_of(certificate)
        except CertificateRefused as refusal:
            assert refusal.reason is RefusalReason.BAD_IDENTITY, refusal
            assert _clean(refusal.subject) and _clean(refusal.detail), refusal
            continue
        assert wire.NAME_TOKEN.fullmatch(identity), identity
    try:
        held = [
            (name, str(attribute.value))
            for name, oid in SUBJECT_FIELDS.items()
            for attribute in certificate.subject.get_attributes_for_oid(oid)
        ]
    except ValueError:
        # A subject that does not parse holds nothing a rule can match.
        assert not AttributeMatch((("CN", "x"),)).matches(certificate)
        return
    for name, value in held:
        rule = AttributeMatch(((name, value),))
        assert rule.matches(certificate), (name, value)
        assert _clean(rule.describe()), rule


def _clean(text: str) -> bool:
    return wire.escape_controls(text) == text


def _raw(der: bytes) -> x509.Certificate | None:
    """
    The certificate C{der} is, if OpenSSL reads it: a peer's certificate
    reaches the identity mapping through OpenSSL's handshake, and a file's
    through L{secmsg.pem.certificates_in}, which has OpenSSL read it.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
        load_certificate(FILETYPE_ASN1, der)
    except (ValueError, x509.InvalidVersion, OpenSSLError):
        return None
    return certificate


def _built(fields: Fields) -> x509.Certificate | None:
    """
    A certificate of fuzzed subject and SANs, parsed back from its DER as
    the daemon would receive it (L{_raw}); L{None} if the builders refuse the fields.
    """
    try:
        subject = name_of(fields)
        sans = [fields.pick(_SANS)(fields.text()) for _ in range(fields.byte() % 4)]
        certificate = _signed(subject, sans)
    except ValueError:
        return None
    return _raw(certificate.public_bytes(serialization.Encoding.DER))


def name_of(fields: Fields) -> x509.Name:
    """
    A subject of up to seven RDNs, each of one or two attributes of any
    type and string.

    @raise ValueError: cryptography refuses an attribute (a C{C} that is
        not two letters, a string its type cannot hold).
    """
    return x509.Name(
        [
            x509.RelativeDistinguishedName(
                x509.NameAttribute(
                    fields.pick(_OIDS), fields.text(), fields.pick(_TYPES)
                )
                for _ in range(1 + fields.byte() % 2)
            )
            for _ in range(fields.byte() % 8)
        ]
    )


def _signed(subject: x509.Name, sans: list[x509.GeneralName]) -> x509.Certificate:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(_key().public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(sans), critical=False
        )
    return builder.sign(_key(), None)


@functools.cache
def _key() -> ed25519.Ed25519PrivateKey:
    """
    The key every built certificate is signed with, made afresh per run
    (no key is kept in the corpus).
    """
    return ed25519.Ed25519PrivateKey.generate()
