"""
Reading certificates and private keys from PEM, for the daemon, the client
and the CA tool alike: one loader, so that a wrong file gets the same words
whichever program reads it, and is named before anything is tried with it.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from OpenSSL.crypto import X509
from OpenSSL.crypto import Error as OpenSSLError

from secmsg.errors import ConfigurationError


def certificates_in(
    data: bytes, path: Path, what: str = "certificate"
) -> list[x509.Certificate]:
    """
    Every certificate of the PEM bundle C{data}, read from C{path}.

    @param what: what the file should hold, for the error.
    @raise ConfigurationError: naming C{path}: it holds none, or one of
        them does not parse, its public key included.
    """
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except (ValueError, x509.InvalidVersion):
        raise ConfigurationError(str(path), f"no PEM {what} in it") from None
    for number, certificate in enumerate(certificates, start=1):
        problem = _unreadable(certificate)
        if problem is not None:
            raise ConfigurationError(str(path), f"{what} {number} in it {problem}")
    return certificates


def _unreadable(certificate: x509.Certificate) -> str | None:
    """
    What keeps a certificate that cryptography loaded from being used, or
    L{None}: cryptography reads the key, the names and the extensions
    only when asked, and the uses of a certificate here ask; and OpenSSL,
    which the TLS context is given it through, refuses some encodings
    cryptography takes (a subject string of a type OpenSSL does not allow
    there, say).
    """
    try:
        certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "has a public key that does not parse"
    try:
        certificate.subject.rfc4514_string()
        certificate.issuer.rfc4514_string()
        len(certificate.extensions)
    except (ValueError, x509.DuplicateExtension):
        return "has a name or an extension that does not parse"
    try:
        X509.from_cryptography(certificate)
    except OpenSSLError:
        return "is encoded in a way OpenSSL refuses to read"
    return None


def private_key_in(data: bytes, path: Path) -> PrivateKeyTypes:
    """
    The unencrypted PEM private key C{data}, read from C{path}.

    @raise ConfigurationError: naming C{path}: the key is encrypted (secmsg
        starts unattended, so it asks for no passphrase), or there is none.
    """
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            str(path), "the key is encrypted; secmsg needs an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(str(path), "no PEM private key in it") from None


def check_key_pair(
    key: PrivateKeyTypes,
    key_path: Path,
    certificate: x509.Certificate,
    certificate_path: Path,
) -> None:
    """
    @raise ConfigurationError: naming C{key_path}: C{key} is not the
        private key of C{certificate}.
    """
    if not key_matches(key, certificate):
        raise ConfigurationError(
            str(key_path), f"key does not match the certificate in {certificate_path}"
        )


def key_matches(key: PrivateKeyTypes, certificate: x509.Certificate) -> bool:
    """
    Whether C{key} is the private key of C{certificate}.
    """
    return _der(key.public_key()) == _der(certificate.public_key())


def _der(public_key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
