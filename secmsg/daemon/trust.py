"""
What a client certificate is judged by: the CAs and CRLs in force, OpenSSL's
verification errors in words, the key usage a client certificate needs, and
the CRL file read and checked against the CAs.  L{secmsg.daemon.tls} builds
the server context and the verify callback over it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from OpenSSL.crypto import (
    FILETYPE_ASN1,
    X509,
    X509Store,
    X509StoreContext,
    X509StoreContextError,
    X509StoreFlags,
    dump_certificate,
)
from OpenSSL.crypto import (
    Error as OpenSSLError,
)

from secmsg.daemon.identity import describe_name, describe_subject
from secmsg.errors import CertificateRefused, ConfigurationError, RefusalReason
from secmsg.files import read_bytes
from secmsg.wire import escape_controls

# OpenSSL's verification error numbers differ between its versions (an
# invalid CA is 24 in OpenSSL 3.0 and 79 in 4.0), so they are looked up by
# name in the OpenSSL that pyOpenSSL is linked against.
_OPENSSL = Binding.lib
_OPENSSL_REASONS = {
    getattr(_OPENSSL, f"X509_V_ERR_{name}"): reason
    for name, reason in [
        ("UNABLE_TO_GET_ISSUER_CERT", RefusalReason.UNKNOWN_CA),
        ("UNABLE_TO_GET_ISSUER_CERT_LOCALLY", RefusalReason.UNKNOWN_CA),
        ("UNABLE_TO_VERIFY_LEAF_SIGNATURE", RefusalReason.UNKNOWN_CA),
        ("CERT_SIGNATURE_FAILURE", RefusalReason.UNKNOWN_CA),
        ("DEPTH_ZERO_SELF_SIGNED_CERT", RefusalReason.UNKNOWN_CA),
        ("SELF_SIGNED_CERT_IN_CHAIN", RefusalReason.UNKNOWN_CA),
        ("INVALID_CA", RefusalReason.UNKNOWN_CA),
        ("CERT_UNTRUSTED", RefusalReason.UNKNOWN_CA),
        ("CERT_NOT_YET_VALID", RefusalReason.NOT_YET_VALID),
        ("CERT_HAS_EXPIRED", RefusalReason.EXPIRED),
        ("CERT_REVOKED", RefusalReason.REVOKED),
        ("UNABLE_TO_GET_CRL", RefusalReason.REVOCATION_UNKNOWN),
        ("CRL_NOT_YET_VALID", RefusalReason.REVOCATION_UNKNOWN),
        ("CRL_HAS_EXPIRED", RefusalReason.REVOCATION_UNKNOWN),
        ("INVALID_PURPOSE", RefusalReason.WRONG_KEY_USAGE),
        ("CERT_REJECTED", RefusalReason.WRONG_KEY_USAGE),
    ]
}

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def refusal_for_openssl_error(
    error_number: int, depth: int, subject: str, vouched: bool = False
) -> CertificateRefused:
    """
    Turn OpenSSL's numeric verification error into our words.

    @param vouched: whether the certificate was issued by a CA this server
        trusts (see L{CertificateRefused}).
    """
    reason = _OPENSSL_REASONS.get(error_number, RefusalReason.REJECTED)
    details = [_error_words(error_number)]
    if depth:
        details.append(f"CA certificate at depth {depth}")
    return CertificateRefused(reason, subject, "; ".join(details), vouched)


HOLDER_REASONS = frozenset(
    {
        RefusalReason.EXPIRED,
        RefusalReason.NOT_YET_VALID,
        RefusalReason.REVOKED,
        RefusalReason.REVOCATION_UNKNOWN,
        RefusalReason.WRONG_KEY_USAGE,
    }
)
"""OpenSSL's refusals that can concern a certificate our CAs issued, as
opposed to one no CA of ours signed: worth checking who signed it."""


def _error_words(error_number: int) -> str:
    words = Binding.ffi.string(_OPENSSL.X509_verify_cert_error_string(error_number))
    return words.decode("ascii", "replace")


def describe_issuer(crl: x509.CertificateRevocationList) -> str:
    """
    A CRL's issuer as an RFC 4514 string, safe to log or send.
    """
    return escape_controls(crl.issuer.rfc4514_string())


def check_client_usage(certificate: x509.Certificate) -> None:
    """
    Refuse a leaf certificate whose extended key usage does not name
    clientAuth (OpenSSL refuses a list that lacks it, but accepts a
    certificate with no extended key usage at all; we do not), or that is
    itself a CA.
    """
    try:
        usages = certificate.extensions.get_extension_for_oid(
            ExtensionOID.EXTENDED_KEY_USAGE
        ).value
    except x509.ExtensionNotFound:
        raise CertificateRefused(
            RefusalReason.WRONG_KEY_USAGE,
            describe_subject(certificate),
            "no extended key usage; clientAuth is required",
        ) from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise CertificateRefused(
            RefusalReason.WRONG_KEY_USAGE,
            describe_subject(certificate),
            "extended key usage lacks clientAuth",
        )
    if _may_sign_certificates(certificate):
        # A client certificate that is also a CA could mint certificates
        # for any identity wherever its issuer's path length allows it.
        raise CertificateRefused(
            RefusalReason.WRONG_KEY_USAGE,
            describe_subject(certificate),
            "a CA certificate is not a client certificate",
        )


def _may_sign_certificates(certificate: x509.Certificate) -> bool:
    extensions = certificate.extensions
    try:
        if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        return extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return False


def parsed_peer_certificate(certificate: X509, depth: int) -> x509.Certificate:
    """
    A peer's certificate, as OpenSSL read it, in cryptography's terms with
    its names and extensions parsed, so that every later check on it (its
    issuer, its key usage, its identity, the audit record, a reload's
    recheck) can rely on them.  OpenSSL reads some encodings cryptography
    does not (a name string of tag 14, an extension held twice, a SAN that
    does not parse, an unknown X.509 version), which a CA may issue.

    A CA's certificate (C{depth} above 0) is parsed once for every chain
    that holds it: the same few CAs come with every handshake, and every
    session keeps its chain for the rechecks at a reload, which then share
    one copy of each.

    @raise CertificateRefused: it does not parse, said in words.
    """
    der = dump_certificate(FILETYPE_ASN1, certificate)
    try:
        return _parsed_ca(der) if depth else _parsed(der)
    except (ValueError, x509.DuplicateExtension, x509.InvalidVersion):
        raise CertificateRefused(
            RefusalReason.REJECTED,
            "(a certificate that does not parse; sha256 "
            f"{hashlib.sha256(der).hexdigest()})",
            "its version, names or extensions do not parse",
        ) from None


def _parsed(der: bytes) -> x509.Certificate:
    parsed = x509.load_der_x509_certificate(der)
    parsed.subject.rfc4514_string()
    parsed.issuer.rfc4514_string()
    len(parsed.extensions)
    return parsed


# Keyed by the bytes, so it decides nothing about trust: a bound well above
# the CAs and intermediates one daemon trusts, which a peer sending
# certificates of its own making can churn but not grow.
_parsed_ca = functools.lru_cache(maxsize=64)(_parsed)


def kept_chain(chain: list[x509.Certificate]) -> list[x509.Certificate]:
    """
    The verified chain (leaf first) as a logged-in session keeps it: its
    leaf a fresh copy of the same bytes, without the names and extensions
    that checking it parsed and cached on it (some 2.6 KB of the 3.4 KB a
    parsed leaf holds, for each of thousands of idle sessions), which the
    rare use after login (a reload's policy, WHOAMI) parses again.  The CAs
    above it are already shared by every chain that holds them.
    """
    der = chain[0].public_bytes(serialization.Encoding.DER)
    return [x509.load_der_x509_certificate(der), *chain[1:]]


LeafCheck = Callable[[x509.Certificate], object]
"""Called on a leaf certificate that chains; raises L{CertificateRefused}."""


@dataclass(frozen=True)
class TrustAnchors:
    """
    The CAs and CRLs a server context trusts, kept apart from the context so
    that a live session's certificate can be checked again after a reload.
    """

    cas: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    refuse_on_stale_crl: bool = False

    @property
    def tolerated(self) -> frozenset[int]:
        """
        The OpenSSL verification errors that do not refuse a certificate.
        """
        if self.refuse_on_stale_crl:
            return frozenset()
        return frozenset({_OPENSSL.X509_V_ERR_CRL_HAS_EXPIRED})

    def stale_crls(self, now: datetime) -> list[str]:
        """
        A warning for each CRL past its next update as of C{now}.
        """
        outcome = (
            "refusing the certificates it covers"
            if self.refuse_on_stale_crl
            else "still serving; revocations since then are unknown"
        )
        return [
            f"the CRL of {describe_issuer(crl)} is past its next update "
            f"({crl.next_update_utc:%Y-%m-%d %H:%M}Z); {outcome}"
            for crl in self.crls
            if crl.next_update_utc is not None and crl.next_update_utc < now
        ]

    def recheck(
        self, chain: list[x509.Certificate], now: datetime
    ) -> CertificateRefused | None:
        """
        Verify a chain (leaf first) again, as of C{now}: the refusal, or
        L{None}.
        """
        return self.rechecker(now)(chain)

    def rechecker(self, now: datetime) -> Recheck:
        """
        L{recheck} for many chains as of one moment, as a reload judges
        every live session: the CAs and CRLs go into OpenSSL's stores once,
        not once a session, and a chain that several sessions hold (one
        person's several devices, or a bot's many connections) is verified
        once.  Verifying costs about half a millisecond of the reactor's
        time, so that a reload of 10,000 sessions verified one by one held
        every session up for seconds.
        """
        stores: dict[bool, X509Store] = {}
        verdicts: dict[tuple[x509.Certificate, ...], CertificateRefused | None] = {}

        def store(with_crls: bool) -> X509Store:
            if with_crls not in stores:
                stores[with_crls] = X509Store()
                stores[with_crls].set_time(now)
                self.fill(stores[with_crls], with_crls)
            return stores[with_crls]

        def judge(chain: list[x509.Certificate]) -> CertificateRefused | None:
            key = tuple(chain)
            if key not in verdicts:
                verdicts[key] = self._judge(chain, now, store)
            return verdicts[key]

        return judge

    def _judge(
        self,
        chain: list[x509.Certificate],
        now: datetime,
        store: Callable[[bool], X509Store],
    ) -> CertificateRefused | None:
        refusal = _verify(chain, store(True))
        if refusal is not None and self._stale_only(refusal):
            # OpenSSL's verification without a callback stops at the stale
            # CRL; verify without CRLs, then check revocation as OpenSSL
            # would, but for the staleness.
            refusal = _verify(chain, store(False)) or self._revocation(chain, now)
        return refusal or self.chain_issuer_refusal(chain)

    def vouches_for(self, certificate: x509.Certificate) -> bool:
        """
        Whether a CA of these signed C{certificate}: a certificate refused
        for its dates or its revocation may be one we issued (and its
        refusal then a fact about its holder) or one that merely names our
        CA as its issuer, which OpenSSL refuses the same way before it
        checks any signature.
        """
        for ca in self.cas:
            if ca.subject != certificate.issuer:
                continue
            try:
                certificate.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return True
        return False

    @functools.cached_property
    def _ca_set(self) -> frozenset[x509.Certificate]:
        return frozenset(self.cas)

    def chain_issuer_refusal(
        self, chain: list[x509.Certificate]
    ) -> CertificateRefused | None:
        """
        L{issuer_refusal} for the leaf of a chain (leaf first) that OpenSSL
        verified: it checked the leaf's signature with the key of the
        certificate above it, so if that is a CA of the bundle, the leaf
        is one of theirs without checking the signature again (a tenth of
        a millisecond a login).
        """
        if len(chain) > 1 and chain[1] in self._ca_set:
            return None
        return self.issuer_refusal(chain[0])

    def issuer_refusal(
        self, certificate: x509.Certificate
    ) -> CertificateRefused | None:
        """
        Refuse a client certificate that no CA of these issued directly.
        OpenSSL accepts a chain through any intermediate up to an anchor:
        a daemon given an issuing CA's bundle (it and its root) would
        accept the certificates of every other issuing CA under that root.
        The bundle's CAs, and only they, issue the certificates accepted.
        """
        if self.vouches_for(certificate):
            return None
        return CertificateRefused(
            RefusalReason.UNKNOWN_CA,
            describe_subject(certificate),
            "not issued directly by a CA of the CA bundle (its issuer is "
            f"{describe_name(certificate.issuer)}); only they may issue client "
            "certificates",
        )

    def _stale_only(self, refusal: CertificateRefused) -> bool:
        return bool(self.tolerated) and refusal.detail.startswith(
            _error_words(_OPENSSL.X509_V_ERR_CRL_HAS_EXPIRED)
        )

    def _revocation(
        self, chain: list[x509.Certificate], now: datetime
    ) -> CertificateRefused | None:
        """
        Check every certificate of the chain below its anchor against the
        CRLs (each was checked against its CA's signature when it was
        loaded), as CRL_CHECK_ALL does, except that a CRL past its next
        update still counts: one is needed from each issuer, it must have
        begun, and it must not list the certificate.
        """
        subject = describe_subject(chain[0])
        for depth, certificate in enumerate(chain[:-1]):
            crls = [crl for crl in self.crls if crl.issuer == certificate.issuer]
            if not crls:
                error = _OPENSSL.X509_V_ERR_UNABLE_TO_GET_CRL
            elif any(crl.last_update_utc > now for crl in crls):
                error = _OPENSSL.X509_V_ERR_CRL_NOT_YET_VALID
            elif any(
                crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
                for crl in crls
            ):
                error = _OPENSSL.X509_V_ERR_CERT_REVOKED
            else:
                continue
            return refusal_for_openssl_error(error, depth, subject)
        return None

    def fill(self, store: X509Store, with_crls: bool = True) -> None:
        """
        Add these CAs and CRLs to C{store} and switch CRL checking on.
        """
        for ca in self.cas:
            store.add_cert(X509.from_cryptography(ca))
        if not with_crls:
            return
        for crl in self.crls:
            store.add_crl(crl)
        if self.crls:
            # Every certificate of the chain, intermediate CAs included, is
            # checked; so every CA below the root needs a CRL from its issuer.
            store.set_flags(X509StoreFlags.CRL_CHECK | X509StoreFlags.CRL_CHECK_ALL)


Recheck = Callable[[list[x509.Certificate]], CertificateRefused | None]
"""A chain's refusal by the trust in force as of one moment, or L{None}."""


def _verify(
    chain: list[x509.Certificate], store: X509Store
) -> CertificateRefused | None:
    """
    OpenSSL's verification of a chain (leaf first) against a store of CAs
    (and CRLs), as of the store's time.
    """
    # A verified chain ends with the anchor it was verified against; only
    # what lies between it and the leaf may help build the new chain.
    leaf, intermediates = chain[0], chain[1:-1]
    try:
        X509StoreContext(
            store,
            X509.from_cryptography(leaf),
            [X509.from_cryptography(cert) for cert in intermediates],
        ).verify_certificate()
    except X509StoreContextError as error:
        code, depth = error.errors[0], error.errors[1]
        return refusal_for_openssl_error(code, depth, describe_subject(chain[0]))
    return None


def load_crls(
    path: Path, cas: list[x509.Certificate]
) -> list[x509.CertificateRevocationList]:
    blocks = _PEM_CRL.findall(read_bytes(path))
    if not blocks:
        raise ConfigurationError(str(path), "no PEM CRL in it")
    crls = []
    for block in blocks:
        try:
            crl = x509.load_pem_x509_crl(block)
            # Parsed when first read, and compared with the CAs below.
            crl.issuer.rfc4514_string()
        except (ValueError, x509.InvalidVersion):
            raise ConfigurationError(str(path), "a CRL in it does not parse") from None
        if not _openssl_reads(crl):
            raise ConfigurationError(
                str(path), "a CRL in it is encoded in a way OpenSSL refuses to read"
            )
        issuers = [ca for ca in cas if ca.subject == crl.issuer]
        if not any(crl.is_signature_valid(ca.public_key()) for ca in issuers):
            raise ConfigurationError(
                str(path),
                f"CRL of {describe_issuer(crl)} is not signed by a CA in the CA bundle",
            )
        crls.append(crl)
    return crls


def _openssl_reads(crl: x509.CertificateRevocationList) -> bool:
    """
    Whether OpenSSL takes C{crl} into a store, as the server context does:
    cryptography accepts encodings OpenSSL refuses (an issuer string of a
    type OpenSSL does not allow in a name), which would otherwise fail only
    when the context is built.
    """
    try:
        X509Store().add_crl(crl)
    except OpenSSLError:
        return False
    return True
