"""
A client certificate that chains to the daemon's CA, and that OpenSSL reads
but cryptography does not, over real TLS in memory under TLS 1.2 and 1.3:
refused in words, never a traceback.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL.crypto import X509, X509Store, X509StoreContext, X509StoreContextError
from twisted.internet.ssl import TLSVersion
from twisted.trial.unittest import SynchronousTestCase

from tests.certs import CertificateAuthority, Pair
from tests.harness import Instance, capture_log

STAND_IN = x509.ObjectIdentifier("2.5.29.99")
"""An extension OID of the same length as the SAN's, patched into it."""


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    encoded = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def resigned_der(ca: CertificateAuthority, pair: Pair, old: bytes, new: bytes) -> bytes:
    """
    C{pair} with C{old} replaced by C{new} (of the same length) in its
    to-be-signed part, signed again by C{ca}: what a CA that issued such
    bytes would have sent.
    """
    certificate = pair.certificate
    tbs = certificate.tbs_certificate_bytes
    assert old in tbs, old
    tbs = tbs.replace(old, new, 1)
    der = certificate.public_bytes(serialization.Encoding.DER)
    after_tbs = der[
        der.index(certificate.tbs_certificate_bytes)
        + len(certificate.tbs_certificate_bytes) :
    ]
    algorithm = after_tbs[: 2 + after_tbs[1]]
    signature = ca.pair.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    body = tbs + algorithm + _tlv(0x03, b"\x00" + signature)
    return _tlv(0x30, body)


def resigned(ca: CertificateAuthority, pair: Pair, old: bytes, new: bytes) -> Pair:
    """
    L{resigned_der}, loaded as the pair a client presents.
    """
    der = resigned_der(ca, pair, old, new)
    return Pair(x509.load_der_x509_certificate(der), pair.key, pair.chain)


@dataclass(frozen=True)
class RawPair(Pair):
    """
    A pair whose certificate is presented as DER that cryptography does
    not load at all (it stands in as the certificate it was made from).
    """

    der: bytes = b""

    @property
    def certificate_pem(self) -> bytes:
        body = base64.encodebytes(self.der).decode("ascii")
        return (
            f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()
        )


def held_twice(ca: CertificateAuthority) -> Pair:
    """
    A leaf of C{ca} that holds its SAN extension twice.
    """
    pair = ca.issue(
        "alice",
        names=[x509.RFC822Name("alice@example.org")],
        extensions=(x509.UnrecognizedExtension(STAND_IN, b"\x30\x00"),),
    )
    return resigned(ca, pair, b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x11")


REFUSAL = "certificate rejected (its version, names or extensions do not parse)"


class UnparsablePeerCertificateTests:
    """
    Each certificate of the CA that cryptography cannot parse, for one TLS
    version; subclasses pick the version.
    """

    tls_version: TLSVersion

    def setUp(self) -> None:
        self.log = capture_log(self)
        self.instance = Instance(self)
        self.ca = self.instance.ca

    def assertRefusedInWords(self, pair: Pair) -> None:
        """
        The client gets no greeting; the daemon logs one refusal in words
        that names the certificate by its SHA-256, and no traceback.
        """
        client = self.instance.connect(pair, self.tls_version, early=(b"PING\n",))
        self.assertEqual(client.lines, [])
        self.assertIsNotNone(client.lost)
        refusals = [line for line in self.log if "refused handshake" in line]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn(REFUSAL, refusals[0])
        self.assertIn("(a certificate that does not parse; sha256 ", refusals[0])
        self.assertFalse(
            [
                line
                for line in self.log
                if "Traceback" in line or "internal error" in line
            ]
        )

    def test_subject_of_tag_14_refused(self) -> None:
        """
        A leaf whose CN is a string of tag 14 is refused in words.
        """
        pair = self.ca.issue("alice")
        self.assertRefusedInWords(
            resigned(self.ca, pair, b"\x0c\x05alice", b"\x0e\x05alice")
        )

    def test_issuer_of_tag_14_refused(self) -> None:
        """
        A leaf that names its CA's subject with a string of tag 14 is
        refused in words (OpenSSL finds no issuer for it either, see
        L{OpenSSLVerdictTests}).
        """
        pair = self.ca.issue("alice")
        issuer = self.ca.pair.certificate.subject.public_bytes()
        strange = issuer.replace(b"\x0c", b"\x0e", 1)
        self.assertRefusedInWords(resigned(self.ca, pair, issuer, strange))

    def test_extension_held_twice_refused(self) -> None:
        """
        A leaf that holds its SAN extension twice is refused in words
        (OpenSSL refuses it too, see L{OpenSSLVerdictTests}).
        """
        self.assertRefusedInWords(held_twice(self.ca))

    def test_san_that_does_not_parse_refused(self) -> None:
        """
        A leaf whose SAN holds an e-mail address of a byte that is not
        ASCII, which OpenSSL takes and cryptography does not, is refused
        in words.
        """
        pair = self.ca.issue("alice", names=[x509.RFC822Name("a@example.org")])
        self.assertRefusedInWords(
            resigned(
                self.ca, pair, b"\x81\x0da@example.org", b"\x81\x0d\xff@example.org"
            )
        )

    def test_unknown_version_refused(self) -> None:
        """
        A leaf of X.509 version 38, which OpenSSL reads and cryptography
        does not load, is refused in words, not left to raise
        InvalidVersion.
        """
        pair = self.ca.issue("alice")
        der = resigned_der(
            self.ca, pair, b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x26"
        )
        self.assertRefusedInWords(RawPair(pair.certificate, pair.key, pair.chain, der))

    def test_reload_after_the_refusal_rechecks_only_good_sessions(self) -> None:
        """
        Such a certificate never becomes a session, so a reload's recheck
        of the live sessions meets only certificates that parse: the
        RELOAD succeeds, the good session lives on, and nothing is logged
        as a traceback.
        """
        alice = self.instance.connect(self.ca.issue("alice"), self.tls_version)
        self.assertTrue(alice.greeted)
        pair = self.ca.issue("mallory", names=[x509.RFC822Name("a@example.org")])
        self.assertRefusedInWords(
            resigned(
                self.ca, pair, b"\x81\x0da@example.org", b"\x81\x0d\xff@example.org"
            )
        )
        admin = self.instance.connect(self.ca.issue("admin"), self.tls_version)
        admin.send("RELOAD")
        self.instance.flush()
        self.assertTrue(admin.take()[-1].startswith("200 reloaded"))
        self.assertIsNone(alice.lost)
        self.assertFalse([line for line in self.log if "Traceback" in line])


class TLS12UnparsablePeerCertificateTests(
    UnparsablePeerCertificateTests, SynchronousTestCase
):
    tls_version = TLSVersion.TLSv1_2


class TLS13UnparsablePeerCertificateTests(
    UnparsablePeerCertificateTests, SynchronousTestCase
):
    tls_version = TLSVersion.TLSv1_3


class OpenSSLVerdictTests(SynchronousTestCase):
    """
    What OpenSSL itself makes of the certificates it refuses before the
    daemon's checks could have raised on them: before the daemon parsed
    every peer certificate first, these two were refused as "unknown CA".
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority()

    def verdict(self, pair: Pair) -> int:
        store = X509Store()
        store.add_cert(X509.from_cryptography(self.ca.pair.certificate))
        context = X509StoreContext(store, X509.from_cryptography(pair.certificate))
        error = self.assertRaises(X509StoreContextError, context.verify_certificate)
        code: int = error.errors[0]
        return code

    def test_openssl_finds_no_issuer_for_an_extension_held_twice(self) -> None:
        """
        OpenSSL takes a certificate holding an extension twice as invalid
        and builds no chain for it: the key usage check never saw one.
        """
        self.assertEqual(
            self.verdict(held_twice(self.ca)),
            Binding.lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        )

    def test_openssl_finds_no_issuer_named_with_tag_14(self) -> None:
        """
        OpenSSL does not match an issuer written with a string of tag 14
        to the CA's subject: the issuer check never saw one.
        """
        pair = self.ca.issue("alice")
        issuer = self.ca.pair.certificate.subject.public_bytes()
        strange = resigned(self.ca, pair, issuer, issuer.replace(b"\x0c", b"\x0e", 1))
        self.assertEqual(
            self.verdict(strange),
            Binding.lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        )
