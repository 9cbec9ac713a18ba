"""
TLS for the secmsg client: options that present our certificate and verify
the server's, and the words for a handshake that failed.

The server's chain is verified against the CA the user names, and its name
(a DNS name or an IP address) with service_identity, through Twisted's
C{optionsForClientTLS}.  When the server refuses our certificate, its TLS
alert is the only word it sends, so the alert is turned into the same
words the server's log uses (L{RefusalReason}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure

from secmsg.errors import RefusalReason
from secmsg.files import read_bytes
from secmsg.pem import certificates_in, check_key_pair, private_key_in

_CERTIFICATE_ALERTS = {
    "certificate revoked": RefusalReason.REVOKED.value,
    "certificate expired": "expired or not yet valid",
    "unknown ca": RefusalReason.UNKNOWN_CA.value,
    "unsupported certificate": RefusalReason.WRONG_KEY_USAGE.value,
    "certificate required": RefusalReason.NO_CERTIFICATE.value,
    "bad certificate": "bad certificate",
    # What OpenSSL sends when the server's own checks (the identity the
    # certificate names) refuse it; the server's log has the reason.
    "certificate unknown": "rejected; the server's log says why",
    "internal error": "rejected; the server's log says why",
    "access denied": "access denied",
}

_ALERT = re.compile(r"alert (.+)$")

_NOT_TLS = frozenset(
    ["wrong version number", "packet length too long", "unknown protocol"]
)
"""What OpenSSL says when the peer's first bytes are not a TLS record: an
HTTP, SSH or other plain service answered the ClientHello."""


_UNVERIFIED = (
    "the server's certificate did not verify against our CA file (another CA, "
    "expired, or not a server certificate; --ca names the CA file)"
)


@dataclass(frozen=True)
class CaOrigin:
    """
    Which CA file the server's certificate is verified against, and which
    option or setting named it, so that a certificate that does not verify
    is explained in the user's terms.

    @ivar named_by: C{--ca}, C{--instance}, C{SECMSG_CA} or C{profile
        NAME}.
    """

    path: Path
    named_by: str = "--ca"

    def unverified(self) -> str:
        """
        The words for a server certificate that did not verify against it.
        """
        if self.named_by == "--ca":
            return _UNVERIFIED
        if self.named_by == "--instance":
            return (
                f"the instance's CA ({self.path}) did not sign the server's "
                "certificate: is it a server of a different instance? (or the "
                "certificate has expired, or is not a server certificate)"
            )
        return (
            f"the server's certificate did not verify against the CA file "
            f"{self.path}, named by {self.named_by} (another CA, expired, or "
            "not a server certificate)"
        )


def client_tls_options(
    server_name: str,
    ca_pem: bytes,
    certificate_pem: bytes,
    key_pem: bytes,
    tls_version: TLSVersion | None = None,
) -> IOpenSSLClientConnectionCreator:
    """
    Client options that present our certificate and verify the server's
    chain against C{ca_pem} and its name (DNS name or IP address) with
    service_identity.

    @param tls_version: pin the protocol version (tests try both), or
        L{None} to negotiate.
    """
    extra = {}
    if tls_version is not None:
        extra = {"raiseMinimumTo": tls_version, "lowerMaximumSecurityTo": tls_version}
    authorities = _split_pem(ca_pem)
    return optionsForClientTLS(
        server_name,
        trustRoot=trustRootFromCertificates(
            [Certificate.loadPEM(pem) for pem in authorities]
        ),
        clientCertificate=PrivateCertificate.loadPEM(certificate_pem + key_pem),
        extraCertificateOptions=extra,
    )


def load_client_files(
    certificate_path: Path, key_path: Path, ca_path: Path
) -> tuple[bytes, bytes, bytes]:
    """
    Read and check our certificate, our key and the CA file, so that a
    wrong file is named before any connection is tried.

    @return: the three files' PEM bytes.
    @raise ConfigurationError: naming the file that is missing, is not
        what it should be, or (the key) does not match the certificate.
    """
    certificate_pem = read_bytes(certificate_path)
    key_pem = read_bytes(key_path)
    ca_pem = read_bytes(ca_path)
    certificate = certificates_in(certificate_pem, certificate_path)[0]
    key = private_key_in(key_pem, key_path)
    check_key_pair(key, key_path, certificate, certificate_path)
    certificates_in(ca_pem, ca_path, "CA certificate")
    return certificate_pem, key_pem, ca_pem


def server_alert(failure: Failure) -> str | None:
    """
    The TLS alert the server sent, as OpenSSL words it (C{"certificate
    revoked"}), or L{None} if the failure is not the server's alert.
    """
    if not isinstance(failure.value, SSL.Error) or not failure.value.args:
        return None
    for entry in failure.value.args[0]:
        if len(entry) == 3 and (match := _ALERT.search(str(entry[2]))):
            return match.group(1)
    return None


def describe_tls_failure(
    failure: Failure, server_name: str, ca: CaOrigin | None = None
) -> tuple[bool, str]:
    """
    Say in words why a connection ended before the server greeted us.

    @param ca: where the CA file came from, for the words when the
        server's certificate does not verify.
    @return: whether the server refused our certificate, and the words.
    """
    alert = server_alert(failure)
    if alert in _CERTIFICATE_ALERTS:
        return True, f"the server refused our certificate: {_CERTIFICATE_ALERTS[alert]}"
    if alert is not None:
        return False, f"the server ended the TLS handshake: {alert}"
    if failure.check(VerificationError):
        return False, (
            f"the server's certificate is not valid for {server_name} "
            "(--server-name names the one to check)"
        )
    if failure.check(SSL.Error):
        reasons = [str(e[2]) for e in failure.value.args[0] if len(e) == 3]
        if "certificate verify failed" in reasons:
            return False, _UNVERIFIED if ca is None else ca.unverified()
        if _NOT_TLS.intersection(reasons):
            return False, (
                "the server does not speak TLS (a plain TCP or HTTP service?): "
                "check the host and port"
            )
        return False, f"TLS failed: {', '.join(reasons) or failure.getErrorMessage()}"
    return False, "the connection closed before the server greeted us"


def _split_pem(bundle: bytes) -> list[bytes]:
    return re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", bundle, re.DOTALL
    )
