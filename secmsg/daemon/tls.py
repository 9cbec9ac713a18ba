"""
TLS for the secmsg daemon: the server context and the client-certificate
verify callback.  What a certificate is judged by (the CAs, the CRLs, the
key usage) is L{secmsg.daemon.trust}; the client's side is
L{secmsg.client.tls}.

The server context is built here from PEM files with pyOpenSSL, never
mutated once a connection has used it: a reload builds a new one and
L{VerifyingServerTLS.use} swaps it in for the next handshake.  The verify
callback is set per connection so that it can tell that connection's
protocol (an L{IHandshakeObserver}) why a certificate was refused; it keeps
OpenSSL's verdict and only ever adds refusals of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from OpenSSL.crypto import (
    X509,
)
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from secmsg.clock import clock_time
from secmsg.daemon.identity import describe_subject
from secmsg.daemon.interfaces import IHandshakeObserver
from secmsg.daemon.trust import (
    HOLDER_REASONS,
    LeafCheck,
    TrustAnchors,
    check_client_usage,
    load_crls,
    parsed_peer_certificate,
    refusal_for_openssl_error,
)
from secmsg.errors import CertificateRefused, ConfigurationError, RefusalReason
from secmsg.files import read_bytes
from secmsg.pem import certificates_in, check_key_pair, private_key_in

log = Logger()

TLS12_CIPHERS = (
    # Forward-secret AEAD suites only; TLS 1.3's suites are all of that kind.
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

_SERVER_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    # No session tickets and no session cache: a resumed session would skip
    # certificate verification, and with it the CRL a reload just loaded.
    | SSL.OP_NO_TICKET
)

_VERIFY_MODE = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT

_NO_AUTO_CHAIN = 0x00000008
"""OpenSSL's SSL_MODE_NO_AUTO_CHAIN, which pyOpenSSL does not name: serve
the chain in the certificate file, and not one OpenSSL builds from the
client CAs in the context's store, which would end with the root."""

_RELEASE_BUFFERS = SSL.MODE_RELEASE_BUFFERS
"""Free a connection's record buffers (some 34 KB) whenever it has nothing
buffered, and take them again for the next record: most sessions are idle
most of the time, and the buffers were half of what one cost the daemon."""


def refusal_for_handshake_failure(failure: Failure) -> CertificateRefused:
    """
    Name a failed handshake that the verify callback did not refuse: no
    certificate at all, or a failure before certificates were exchanged.
    """
    if isinstance(failure.value, SSL.Error):
        reasons = [str(entry[2]) for entry in failure.value.args[0] if len(entry) == 3]
        if "peer did not return a certificate" in reasons:
            return CertificateRefused(RefusalReason.NO_CERTIFICATE)
        detail = ", ".join(reasons) or "TLS error"
    else:
        detail = f"connection closed before the handshake completed ({failure.value})"
    return CertificateRefused(RefusalReason.HANDSHAKE_FAILED, detail=detail)


class TrustVerdict:
    """
    The trust a connection's chain was last judged by, and the judgement
    again by the trust in force.

    A handshake can straddle a reload: its chain judged by the verify
    callback before the reload, its Finished arriving after it; so can the
    time between a handshake and the login it leads to.  The connection
    asks L{again} at each step, and a reload in between (which closes the
    sessions it no longer trusts, but cannot see a connection that is not
    yet one) is applied to it too.  Judging again costs nothing while the
    trust is the one already applied.
    """

    __slots__ = ("_judged_by", "_tls")

    def __init__(self, tls: VerifyingServerTLS, judged_by: TrustAnchors) -> None:
        self._tls = tls
        self._judged_by = judged_by

    def again(self, chain: list[x509.Certificate]) -> CertificateRefused | None:
        """
        Verify a chain (leaf first) again if the trust in force is not the
        trust it was last verified by: the refusal, or L{None}.
        """
        trust = self._tls.trust
        if trust is self._judged_by:
            return None
        refusal = trust.recheck(chain, clock_time(self._tls.clock))
        if refusal is None:
            self._judged_by = trust
        else:
            # The trust it was admitted by verified the whole chain.
            refusal.vouched = True
        return refusal


class _PeerVerifier:
    """
    The verify callback of one connection.

    OpenSSL calls it once per certificate of the peer's chain, the trust
    anchor first and the leaf last, with its own verdict.  The verifier
    keeps that verdict, adds its own checks on the leaf, and once the whole
    chain is seen judges it again against a configuration reloaded while
    this handshake was under way (L{TrustVerdict}), which it hands to
    C{observer} to go on judging by.  It reports a refusal to C{observer}
    and stops at the first one.

    An error that the trust tolerates (a CRL past its next update, when the
    operator keeps serving then) is let through: OpenSSL still checks the
    chain against that CRL.

    pyOpenSSL swallows exceptions raised in a verify callback and fails the
    handshake without a word, so every exception is caught here, logged and
    turned into a refusal.

    The verifier lives as long as its connection, so it lets go of the
    chain once a pass has judged it: an accepted one goes to C{observer},
    parsed once here, for the session to keep.  It has slots and no
    C{__dict__}: pyOpenSSL wraps the callback with C{functools.wraps},
    which would copy every attribute onto the wrapper, a second holder of
    the same state.
    """

    __slots__ = (
        "_accepted",
        "_chain",
        "_leaf_check",
        "_observer",
        "_trust",
        "_verdict",
    )

    def __init__(
        self,
        observer: IHandshakeObserver | None,
        leaf_check: LeafCheck,
        verdict: TrustVerdict,
        trust: TrustAnchors,
    ) -> None:
        self._observer = observer
        self._leaf_check = leaf_check
        self._verdict = verdict
        self._trust = trust
        self._chain: dict[int, x509.Certificate] = {}
        self._accepted: list[x509.Certificate] | None = None

    def __call__(
        self,
        connection: SSL.Connection,
        certificate: X509,
        error_number: int,
        depth: int,
        preverify_ok: int,
    ) -> bool:
        try:
            refusal = self._judge(certificate, error_number, depth, preverify_ok)
        except Exception:  # noqa: BLE001 -- see the class docstring
            log.failure("error in the certificate verify callback")
            refusal = CertificateRefused(
                RefusalReason.REJECTED, detail="internal error while verifying"
            )
        accepted, self._accepted = self._accepted, None
        if self._observer is None:
            return refusal is None
        if refusal is not None:
            self._observer.certificate_refused(refusal)
            return False
        if accepted is not None:
            self._observer.certificate_accepted(accepted, self._verdict)
        return True

    def _judge(
        self, certificate: X509, error_number: int, depth: int, preverify_ok: int
    ) -> CertificateRefused | None:
        try:
            crypto_certificate = parsed_peer_certificate(certificate, depth)
        except CertificateRefused as refusal:
            return refusal
        if not preverify_ok and error_number in self._trust.tolerated:
            # OpenSSL goes on to check the certificate against the CRL it
            # complained of, and calls again once the chain has verified.
            return None
        if not preverify_ok:
            return self._openssl_refusal(crypto_certificate, error_number, depth)
        self._chain[depth] = crypto_certificate
        if depth:
            return None
        # The leaf ends a pass; a later one must not inherit this one's CAs.
        chain = [self._chain[d] for d in sorted(self._chain)]
        self._chain.clear()
        foreign = self._trust.chain_issuer_refusal(chain)
        if foreign is not None:
            return foreign
        try:
            check_client_usage(crypto_certificate)
            self._leaf_check(crypto_certificate)
        except CertificateRefused as refusal:
            refusal.vouched = True
            return refusal
        again = self._verdict.again(chain)
        if again is None:
            self._accepted = chain
        return again

    def _openssl_refusal(
        self, certificate: x509.Certificate, error_number: int, depth: int
    ) -> CertificateRefused:
        """
        OpenSSL's refusal in our words.  One for the dates or revocation
        of a leaf is a fact about its holder only if a CA of the bundle
        issued it; otherwise the refusal says who did.
        """
        refusal = refusal_for_openssl_error(
            error_number, depth, describe_subject(certificate)
        )
        if refusal.reason not in HOLDER_REASONS:
            return refusal
        if not depth:
            foreign = self._trust.issuer_refusal(certificate)
            if foreign is not None:
                return foreign
            refusal.vouched = True
            return refusal
        refusal.vouched = self._trust.vouches_for(certificate)
        return refusal


def release_verifier(connection: SSL.Connection) -> None:
    """
    Let go of a connection's verify callback once its handshake is done.
    pyOpenSSL keeps it for the connection's lifetime, with its verifier,
    the verdict and a cffi callback, some 0.9 KB for each idle session;
    nothing is verified on the connection again, since renegotiation is
    off and the daemon asks for no post-handshake authentication (and
    were it asked to, OpenSSL would still verify against the store).
    """
    connection.set_verify(connection.get_verify_mode(), None)


@dataclass(frozen=True)
class TLSFiles:
    """
    Where the server's TLS material lives.

    @ivar cert: the server's certificate chain, leaf first (PEM).
    @ivar key: the server's private key (PEM, unencrypted).
    @ivar ca: the CAs trusted to sign client certificates (PEM bundle).
    @ivar crl: the CRLs of those CAs (PEM), or L{None}.
    """

    cert: Path
    key: Path
    ca: Path
    crl: Path | None


@dataclass(frozen=True)
class ServerTLS:
    """
    A freshly built server context, the server's own certificate in it
    (whose expiry the metrics show) and the trust it was built with.
    """

    context: SSL.Context
    certificate: x509.Certificate
    trust: TrustAnchors


def load_server_tls(
    files: TLSFiles, now: datetime, refuse_on_stale_crl: bool
) -> ServerTLS:
    """
    Read and check every file, then build a new server context.

    @param now: the time against which the server certificate's validity
        is checked.
    @param refuse_on_stale_crl: refuse the certificates a CRL past its next
        update covers, rather than keep serving them with a warning.
    @raise ConfigurationError: naming the file and what is wrong with it.
    """
    chain = certificates_in(read_bytes(files.cert), files.cert)
    key = private_key_in(read_bytes(files.key), files.key)
    check_key_pair(key, files.key, chain[0], files.cert)
    if chain[0].not_valid_after_utc < now:
        raise ConfigurationError(
            str(files.cert),
            f"server certificate expired on {chain[0].not_valid_after_utc:%Y-%m-%d}",
        )
    cas = certificates_in(read_bytes(files.ca), files.ca, "CA certificate")
    crls = load_crls(files.crl, cas) if files.crl is not None else ()
    trust = TrustAnchors(tuple(cas), tuple(crls), refuse_on_stale_crl)
    return ServerTLS(_server_context(chain, key, trust), chain[0], trust)


def _server_context(
    chain: list[x509.Certificate],
    key: PrivateKeyTypes,
    trust: TrustAnchors,
) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(_SERVER_OPTIONS)
    context.set_mode(_NO_AUTO_CHAIN | _RELEASE_BUFFERS)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_session_id(b"secmsg")
    context.set_cipher_list(TLS12_CIPHERS)
    context.use_certificate(chain[0])
    for intermediate in chain[1:]:
        context.add_extra_chain_cert(intermediate)
    context.use_privatekey(key)
    context.check_privatekey()
    trust.fill(context.get_cert_store())
    for ca in trust.cas:
        context.add_client_ca(ca)
    context.set_verify(_VERIFY_MODE)
    return context


@implementer(IOpenSSLServerConnectionCreator)
class VerifyingServerTLS:
    """
    Creates each server-side TLS connection from the current context, with
    a verify callback that reports to that connection's protocol.

    @ivar clock: the time certificates are judged at.
    """

    def __init__(
        self, tls: ServerTLS, leaf_check: LeafCheck, clock: IReactorTime
    ) -> None:
        self._tls = tls
        self._leaf_check = leaf_check
        self.clock = clock

    @property
    def trust(self) -> TrustAnchors:
        """
        The trust anchors new handshakes are verified against.
        """
        return self._tls.trust

    @property
    def certificate(self) -> x509.Certificate:
        """
        The server certificate new handshakes present.
        """
        return self._tls.certificate

    def use(self, tls: ServerTLS) -> None:
        """
        Verify every later handshake with C{tls}; connections made already
        keep the context they were made with, and are judged by C{tls}'s
        trust as their handshake and login go on (L{TrustVerdict}).
        """
        self._tls = tls

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        """
        A new connection that requires a client certificate.
        """
        return self.connection(tlsProtocol, _VERIFY_MODE)

    def optional_certificate(self) -> IOpenSSLServerConnectionCreator:
        """
        A connection creator for the same context and checks that lets a
        client without a certificate finish its handshake (the admin
        interface answers it 401 in words), while a certificate that is
        presented and refused still ends the handshake.
        """
        return _OptionalCertificate(self)

    def connection(
        self, tlsProtocol: TLSMemoryBIOProtocol, mode: int
    ) -> SSL.Connection:
        """
        A new connection verifying with C{mode}, whose verify callback
        tells the wrapped protocol, if it listens, why it refused a
        certificate, or how to judge the accepted chain again.
        """
        built_with = self._tls
        connection = SSL.Connection(built_with.context, None)
        observer = IHandshakeObserver(tlsProtocol.wrappedProtocol, None)
        verifier = _PeerVerifier(
            observer,
            self._leaf_check,
            TrustVerdict(self, built_with.trust),
            built_with.trust,
        )
        connection.set_verify(mode, verifier)
        return connection


@implementer(IOpenSSLServerConnectionCreator)
class _OptionalCertificate:
    """
    See L{VerifyingServerTLS.optional_certificate}.
    """

    def __init__(self, verifying: VerifyingServerTLS) -> None:
        self._verifying = verifying

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        return self._verifying.connection(tlsProtocol, SSL.VERIFY_PEER)
