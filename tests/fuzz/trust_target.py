"""
The CA bundle and CRL loaders, fed PEM files: DER certificates and CRLs
from the input armoured as PEM, CAs and CRLs built from fuzzed names,
serials and dates and signed with keys of several kinds, or the files'
bytes as they come.

Properties: the CA bundle loads or raises L{ConfigurationError}, and so
does the CRL file against it, with words that hold nothing
L{wire.escape_controls} would escape; every CRL loaded is signed by a CA
of the bundle that it names as its issuer; and what was loaded goes into
an OpenSSL store, as the daemon's server context takes it, without error.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL.crypto import X509Store

from secmsg import wire
from secmsg.daemon.trust import TrustAnchors, describe_issuer, load_crls
from secmsg.errors import ConfigurationError
from secmsg.pem import certificates_in
from tests.fuzz.fields import Fields
from tests.fuzz.identity_target import name_of
from tests.fuzz.scratch import written

_NOW = datetime(2026, 6, 1, tzinfo=UTC)


def one_input(data: bytes) -> None:
    """
    Make a CA bundle and a CRL file of C{data} and load them.
    """
    fields = Fields(data)
    mode = fields.byte() % 3
    if mode == 0:
        bundle, crl_file = fields.blob(65535), fields.rest()
    elif mode == 1:
        bundle = _armoured(fields, "CERTIFICATE")
        crl_file = _armoured(fields, "X509 CRL")
    else:
        bundle, crl_file = _built(fields)
    check_files(bundle, crl_file)


def check_files(bundle: bytes, crl_file: bytes) -> None:
    """
    The properties, for one CA bundle and CRL file.
    """
    ca_path = written("ca.pem", bundle)
    try:
        cas = certificates_in(bundle, ca_path, "CA certificate")
        crls = load_crls(written("crl.pem", crl_file), cas)
    except ConfigurationError as error:
        assert _clean(str(error)) and error.problem, str(error)
        return
    for crl in crls:
        assert any(
            ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key())
            for ca in cas
        ), crl
        assert _clean(describe_issuer(crl)), crl
    anchors = TrustAnchors(tuple(cas), tuple(crls))
    anchors.fill(X509Store())
    assert all(_clean(warning) for warning in anchors.stale_crls(_NOW))


def _clean(text: str) -> bool:
    return wire.escape_controls(text) == text


def _armoured(fields: Fields, label: str) -> bytes:
    blocks = [fields.blob(4096) for _ in range(1 + fields.byte() % 3)]
    return b"".join(_pem(label, block) for block in blocks)


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n".encode()


def _built(fields: Fields) -> tuple[bytes, bytes]:
    """
    A CA of a fuzzed subject and key kind, and a CRL of a fuzzed issuer,
    dates and serials signed by it or by another key; empty files if the
    builders refuse what was asked.
    """
    key = fields.pick(_KINDS)()
    try:
        subject = name_of(fields)
        issuer = subject if fields.byte() % 4 else name_of(fields)
        signer = key if fields.byte() % 4 else fields.pick(_KINDS)()
        ca = _ca(subject, key)
        crl = _crl(fields, issuer, signer)
    except ValueError:
        return b"", b""
    return _pem("CERTIFICATE", _der(ca)), _pem("X509 CRL", _der(crl))


def _ca(subject: x509.Name, key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_NOW - timedelta(days=30))
        .not_valid_after(_NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, algorithm)
    )


def _crl(
    fields: Fields, issuer: x509.Name, key: CertificateIssuerPrivateKeyTypes
) -> x509.CertificateRevocationList:
    last = _NOW + timedelta(hours=fields.byte() - 128)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(last)
        .next_update(last + timedelta(hours=fields.byte()))
    )
    for _ in range(fields.byte() % 4):
        serial = int.from_bytes(fields.blob(20) or b"\x01", "big") or 1
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(last)
            .build()
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _der(thing: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return thing.public_bytes(Encoding.DER)


@functools.cache
def _ed25519() -> CertificateIssuerPrivateKeyTypes:
    return ed25519.Ed25519PrivateKey.generate()


@functools.cache
def _ec() -> CertificateIssuerPrivateKeyTypes:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def _rsa() -> CertificateIssuerPrivateKeyTypes:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


_KINDS: list[Callable[[], CertificateIssuerPrivateKeyTypes]] = [_ed25519, _ec, _rsa]
"""The kinds of key a CA may have, each made once per run, never stored."""
