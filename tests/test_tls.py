"""
The server context itself: how it is built, apart from any handshake.
"""

from __future__ import annotations

import base64
import functools
import gc
import types
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon.tls import TLSFiles, _PeerVerifier, load_server_tls
from secmsg.daemon.trust import TrustAnchors, load_crls
from secmsg.errors import ConfigurationError
from secmsg.pem import certificates_in
from tests.certs import CertificateAuthority, now
from tests.harness import Instance, temporary_directory


class ServerContextTests(SynchronousTestCase):
    def test_idle_connections_release_their_record_buffers(self) -> None:
        """
        The context frees each connection's read and write buffers while it
        has nothing buffered: an idle session must not hold them.
        """
        settings = Instance(self).settings()
        files = TLSFiles(settings.cert, settings.key, settings.ca, settings.crl)
        context = load_server_tls(files, now(), False).context
        # Setting no bits changes nothing and answers the mode in force.
        self.assertTrue(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)


class TrustFileTests(SynchronousTestCase):
    def test_unsigned_crl_issuer_is_named_escaped(self) -> None:
        """
        A CRL no CA of the bundle signed is refused naming its issuer
        escaped, since whoever wrote the CRL chose that name and the words
        go to the log, check-config and the RELOAD reply.
        """
        stranger = CertificateAuthority("evil\x1b]0;owned\x07\u200b")
        path = temporary_directory(self) / "crl.pem"
        path.write_bytes(stranger.crl_pem())
        error = self.assertRaises(
            ConfigurationError,
            load_crls,
            path,
            [CertificateAuthority().pair.certificate],
        )
        self.assertEqual(
            error.problem,
            "CRL of CN=evil\\x1b]0\\;owned\\x07\\u200b is not signed by a CA in "
            "the CA bundle",
        )

    def test_ca_whose_public_key_does_not_parse_is_refused(self) -> None:
        """
        A CA bundle holding a certificate whose public key is no valid key
        is refused as a bad file, not left to raise ValueError when a CRL
        is checked against it.
        """
        ca = CertificateAuthority().pair
        point = ca.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        pem = ca.certificate.public_bytes(serialization.Encoding.PEM)
        der = ca.certificate.public_bytes(serialization.Encoding.DER)
        broken = x509.load_der_x509_certificate(der.replace(point, b"\x05" + point[1:]))
        path = temporary_directory(self) / "ca.pem"
        path.write_bytes(pem + broken.public_bytes(serialization.Encoding.PEM))
        error = self.assertRaises(
            ConfigurationError,
            certificates_in,
            path.read_bytes(),
            path,
            "CA certificate",
        )
        self.assertEqual(
            error.problem, "CA certificate 2 in it has a public key that does not parse"
        )

    def test_ca_that_openssl_cannot_read_is_refused(self) -> None:
        """
        A CA certificate that cryptography loads but OpenSSL refuses (its
        subject a VisibleString, which OpenSSL does not take in a name) is
        refused as a bad file, not left to fail when the TLS context is
        built at start or RELOAD.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "CA", _ASN1Type.VisibleString)]
        )
        ca = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now())
            .not_valid_after(now() + timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        pem = ca.public_bytes(serialization.Encoding.PEM)
        path = temporary_directory(self) / "ca.pem"
        error = self.assertRaises(
            ConfigurationError, certificates_in, pem, path, "CA certificate"
        )
        self.assertEqual(
            error.problem,
            "CA certificate 1 in it is encoded in a way OpenSSL refuses to read",
        )

    def test_ca_whose_names_do_not_parse_is_refused(self) -> None:
        """
        A CA certificate whose subject and issuer OpenSSL reads but
        cryptography does not (a name string of an unexpected tag) is
        refused as a bad file, not left to raise ValueError when a CRL's
        issuer is compared with it.
        """
        der = CertificateAuthority("CA").pair.certificate.public_bytes(
            serialization.Encoding.DER
        )
        broken = x509.load_der_x509_certificate(
            der.replace(b"\x0c\x02CA", b"\x0e\x02CA")
        )
        pem = broken.public_bytes(serialization.Encoding.PEM)
        path = temporary_directory(self) / "ca.pem"
        error = self.assertRaises(
            ConfigurationError, certificates_in, pem, path, "CA certificate"
        )
        self.assertEqual(
            error.problem,
            "CA certificate 1 in it has a name or an extension that does not parse",
        )

    def test_certificate_of_unknown_version_is_refused(self) -> None:
        """
        A CA bundle holding a certificate of an X.509 version that does
        not exist is refused as not holding a CA certificate, not left to
        raise cryptography's InvalidVersion.
        """
        der = CertificateAuthority().pair.certificate.public_bytes(
            serialization.Encoding.DER
        )
        strange = der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x26", 1)
        body = base64.encodebytes(strange).decode("ascii")
        pem = f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"
        path = temporary_directory(self) / "ca.pem"
        error = self.assertRaises(
            ConfigurationError, certificates_in, pem.encode(), path, "CA certificate"
        )
        self.assertEqual(error.problem, "no PEM CA certificate in it")

    def test_crl_that_openssl_cannot_read_is_refused(self) -> None:
        """
        A CRL that cryptography loads and finds signed by a CA of the
        bundle, but whose issuer is written as a VisibleString, which
        OpenSSL refuses in a name, is refused as a bad file rather than
        left to fail when the TLS context is built.
        """
        ca = CertificateAuthority("CA")
        issuer = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "CA", _ASN1Type.VisibleString)]
        )
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer)
            .last_update(now() - timedelta(hours=1))
            .next_update(now() + timedelta(days=1))
            .sign(ca.pair.key, hashes.SHA256())
        )
        path = temporary_directory(self) / "crl.pem"
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        error = self.assertRaises(
            ConfigurationError, load_crls, path, [ca.pair.certificate]
        )
        self.assertEqual(
            error.problem, "a CRL in it is encoded in a way OpenSSL refuses to read"
        )

    def test_crl_whose_issuer_does_not_parse_is_refused(self) -> None:
        """
        A CRL whose issuer OpenSSL reads but cryptography does not is
        refused as a CRL that does not parse, not a ValueError.
        """
        ca = CertificateAuthority("CA")
        der = x509.load_pem_x509_crl(ca.crl_pem()).public_bytes(
            serialization.Encoding.DER
        )
        broken = x509.load_der_x509_crl(der.replace(b"\x0c\x02CA", b"\x0e\x02CA"))
        path = temporary_directory(self) / "crl.pem"
        path.write_bytes(broken.public_bytes(serialization.Encoding.PEM))
        error = self.assertRaises(
            ConfigurationError, load_crls, path, [ca.pair.certificate]
        )
        self.assertEqual(error.problem, "a CRL in it does not parse")

    def test_crl_of_unknown_version_is_refused(self) -> None:
        """
        A CRL of a version that does not exist is refused as a CRL that
        does not parse, not left to raise cryptography's InvalidVersion.
        """
        ca = CertificateAuthority()
        der = x509.load_pem_x509_crl(ca.crl_pem()).public_bytes(
            serialization.Encoding.DER
        )
        strange = der.replace(b"\x02\x01\x01", b"\x02\x01\x26", 1)
        body = base64.encodebytes(strange).decode("ascii")
        path = temporary_directory(self) / "crl.pem"
        path.write_text(f"-----BEGIN X509 CRL-----\n{body}-----END X509 CRL-----\n")
        error = self.assertRaises(
            ConfigurationError, load_crls, path, [ca.pair.certificate]
        )
        self.assertEqual(error.problem, "a CRL in it does not parse")


class PeerVerifierTests(SynchronousTestCase):
    def test_accepted_chains_share_their_issuers_and_keep_their_leaves(
        self,
    ) -> None:
        """
        The verify callback hands each accepted chain to its connection,
        parsed once; two connections' chains through the same CA hold one
        copy of it, equal to the CA each was verified against, and each its
        own leaf, so that thousands of sessions do not keep a copy each.
        """
        root = CertificateAuthority()
        trust = TrustAnchors((root.pair.certificate,), ())
        leaves = [root.issue(name).certificate for name in ("alice", "bob")]
        chains = []
        for leaf in leaves:
            observer = _RecordingObserver()
            verifier = _PeerVerifier(
                observer, lambda leaf: None, _AcceptingVerdict(), trust
            )
            for depth, certificate in [(1, root.pair.certificate), (0, leaf)]:
                self.assertTrue(
                    verifier(None, X509.from_cryptography(certificate), 0, depth, 1)
                )
            self.assertEqual(observer.refused, [])
            chains.extend(observer.accepted)
        self.assertEqual([chain[0] for chain in chains], leaves)
        self.assertIs(chains[0][1], chains[1][1])
        self.assertEqual(chains[0][1], root.pair.certificate)

    def test_an_issuer_outside_the_bundle_is_checked_by_its_signature(
        self,
    ) -> None:
        """
        A chain whose leaf is issued by a certificate that only names a CA
        of the bundle (same subject, another key) is refused: only a CA
        certificate of the bundle itself lets the signature check go.
        """
        ca = CertificateAuthority("secmsg test CA")
        impostor = CertificateAuthority("secmsg test CA")
        trust = TrustAnchors((ca.pair.certificate,), ())
        leaf = impostor.issue("alice").certificate
        refusal = trust.chain_issuer_refusal([leaf, impostor.pair.certificate])
        self.assertIsNotNone(refusal)
        self.assertIsNone(
            trust.chain_issuer_refusal(
                [ca.issue("alice").certificate, ca.pair.certificate]
            )
        )

    def test_each_pass_judges_only_its_own_chain(self) -> None:
        """
        A verifier keeps no certificate once a pass has reached the leaf: a
        later pass on the same connection is judged on the chain it was
        shown, not with CAs left over from a longer one.
        """
        root = CertificateAuthority()
        intermediate = root.intermediate("secmsg issuing CA")
        verdict = _RecordingVerdict()
        trust = TrustAnchors((root.pair.certificate, intermediate.pair.certificate), ())
        verifier = _PeerVerifier(None, lambda leaf: None, verdict, trust)
        first = [
            intermediate.issue("alice").certificate,
            intermediate.pair.certificate,
            root.pair.certificate,
        ]
        second = [root.issue("bob").certificate, root.pair.certificate]
        for chain in [first, second]:
            # OpenSSL calls from the anchor down to the leaf.
            for depth in reversed(range(len(chain))):
                certificate = X509.from_cryptography(chain[depth])
                self.assertTrue(verifier(None, certificate, 0, depth, 1))
        self.assertEqual(verdict.judged, [first, second])

    def test_a_judged_chain_is_not_kept(self) -> None:
        """
        Once a pass has judged the chain, no certificate is reachable from
        the callback that pyOpenSSL keeps for the connection's lifetime (it
        wraps the verifier with C{functools.wraps}): an idle session must
        not hold copies of its chain in the verifier, only the trust's CAs.
        """
        root = CertificateAuthority()
        chain = [root.issue("alice").certificate, root.pair.certificate]
        trust = TrustAnchors((root.pair.certificate,), ())
        verifier = _PeerVerifier(None, lambda leaf: None, _AcceptingVerdict(), trust)

        @functools.wraps(verifier)
        def callback(*arguments: object) -> bool:
            return verifier(*arguments)

        for depth in reversed(range(len(chain))):
            certificate = X509.from_cryptography(chain[depth])
            self.assertTrue(callback(None, certificate, 0, depth, 1))
        self.assertEqual(_certificates_reachable(callback), list(trust.cas))


class _RecordingObserver:
    """
    Keeps what a verifier tells its connection.
    """

    def __init__(self) -> None:
        self.accepted: list[list[x509.Certificate]] = []
        self.refused: list[object] = []

    def certificate_accepted(
        self, chain: list[x509.Certificate], verdict: object
    ) -> None:
        self.accepted.append(chain)

    def certificate_refused(self, refusal: object) -> None:
        self.refused.append(refusal)


class _AcceptingVerdict:
    """
    Stands in for a L{secmsg.daemon.tls.TrustVerdict} whose trust has not changed:
    accepts every chain and keeps none.
    """

    def again(self, chain: list[x509.Certificate]) -> None:
        return None


class _RecordingVerdict(_AcceptingVerdict):
    """
    An accepting verdict that keeps each chain it was asked to judge.
    """

    def __init__(self) -> None:
        self.judged: list[list[x509.Certificate]] = []

    def again(self, chain: list[x509.Certificate]) -> None:
        self.judged.append(chain)


def _certificates_reachable(start: object) -> list[x509.Certificate]:
    """
    The certificates reachable from C{start} through the references the
    garbage collector sees, short of classes, modules and the globals of
    functions.
    """
    found, seen, todo = [], set(), [start]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, x509.Certificate):
            found.append(item)
        elif isinstance(item, types.FunctionType):
            # What a function holds for itself, not its module's globals.
            todo.extend([*(item.__closure__ or ()), vars(item)])
        elif not isinstance(item, type | types.ModuleType | types.CodeType):
            todo.extend(gc.get_referents(item))
    return found
