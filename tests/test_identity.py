"""
From certificate to identity, for each field an operator may choose.
"""

from __future__ import annotations

import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon.identity import (
    SUBJECT_SHOWN,
    AttributeMatch,
    IdentityField,
    IdentityRule,
    describe_subject,
    fingerprint,
)
from secmsg.errors import CertificateRefused, RefusalReason
from secmsg.wire import escape_controls
from tests.certs import CertificateAuthority


def units(*values: str) -> tuple[x509.NameAttribute, ...]:
    """
    Organizational units for a subject, in the order given.
    """
    return tuple(
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, v) for v in values
    )


def cut_note(certificate: x509.Certificate) -> str:
    """
    How a description that was cut ends: the length the whole description
    would have had, and the SHA-256 of the subject's DER, which an operator
    can compute from the certificate.
    """
    whole = escape_controls(certificate.subject.rfc4514_string())
    digest = hashlib.sha256(certificate.subject.public_bytes()).hexdigest()
    return f"… (cut from {len(whole):,} characters; sha256 {digest})"


class IdentityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority()

    def identity(self, field: IdentityField, **kwargs: object) -> str:
        pair = self.ca.issue(kwargs.pop("cn", "someone"), **kwargs)
        return IdentityRule(field).identity_of(pair.certificate)

    def assertRefused(
        self, field: IdentityField, detail: str, **kwargs: object
    ) -> None:
        error = self.assertRaises(CertificateRefused, self.identity, field, **kwargs)
        self.assertEqual(error.reason, RefusalReason.BAD_IDENTITY)
        self.assertIn(detail, error.detail)

    def test_common_name(self) -> None:
        """
        By default the subject CN is the identity.
        """
        self.assertEqual(
            self.identity(IdentityField.CN, cn="alice.o+x@y-z"), "alice.o+x@y-z"
        )

    def test_san_email(self) -> None:
        """
        With san-email, the one SAN e-mail address is the identity.
        """
        names = [x509.RFC822Name("ann@example.org")]
        self.assertEqual(
            self.identity(IdentityField.SAN_EMAIL, names=names), "ann@example.org"
        )

    def test_san_uri_must_be_a_name_token(self) -> None:
        """
        A SAN URI is an identity only if it is itself a name token, which a
        URI with a scheme is not; it is refused rather than rewritten.
        """
        names = [x509.UniformResourceIdentifier("spiffe://example.org/bot")]
        self.assertRefused(
            IdentityField.SAN_URI, "san-uri 'spiffe://example.org/bot'", names=names
        )

    def test_missing_or_ambiguous_field(self) -> None:
        """
        No value, or two values, is refused: an identity must be unambiguous.
        """
        self.assertRefused(IdentityField.SAN_EMAIL, "0 san-email values")
        names = [x509.RFC822Name("a@example.org"), x509.RFC822Name("b@example.org")]
        self.assertRefused(IdentityField.SAN_EMAIL, "2 san-email values", names=names)

    def test_too_long(self) -> None:
        """
        64 characters is the most an identity may have.
        """
        fits = "a" * 52 + "@example.org"
        names = [x509.RFC822Name(fits)]
        self.assertEqual(self.identity(IdentityField.SAN_EMAIL, names=names), fits)
        names = [x509.RFC822Name("a" + fits)]
        self.assertRefused(IdentityField.SAN_EMAIL, "san-email", names=names)

    def test_malformed_san_extension_is_a_refusal(self) -> None:
        """
        A certificate whose SAN extension does not parse is refused for its
        identity in words, for the SAN fields, and matches no policy rule
        on SANs; its CN still names it.
        """
        certificate = self.ca.issue(
            "mallory", names=[x509.RFC822Name("mallory@example.org")]
        ).certificate
        broken = x509.load_der_x509_certificate(
            certificate.public_bytes(serialization.Encoding.DER).replace(
                b"\x81\x13mallory@example.org", b"\x18\x13mallory@example.org"
            )
        )
        for field in (IdentityField.SAN_EMAIL, IdentityField.SAN_URI):
            error = self.assertRaises(
                CertificateRefused, IdentityRule(field).identity_of, broken
            )
            self.assertEqual(error.reason, RefusalReason.BAD_IDENTITY)
            self.assertEqual(error.detail, f"its {field.value} field does not parse")
        self.assertEqual(IdentityRule(IdentityField.CN).identity_of(broken), "mallory")
        match = AttributeMatch(san_email_domain="example.org")
        self.assertFalse(match.matches(broken))

    def test_duplicate_extension_is_a_refusal(self) -> None:
        """
        A certificate that holds one extension twice is refused for its
        SAN identity in words, and matches no policy rule on SANs.
        """
        stand_in = x509.ObjectIdentifier("2.5.29.99")
        pair = self.ca.issue("mallory", names=[x509.RFC822Name("mallory@example.org")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(pair.certificate.subject)
            .issuer_name(pair.certificate.issuer)
            .public_key(pair.key.public_key())
            .serial_number(1)
            .not_valid_before(pair.certificate.not_valid_before_utc)
            .not_valid_after(pair.certificate.not_valid_after_utc)
            .add_extension(
                x509.SubjectAlternativeName([x509.RFC822Name("mallory@example.org")]),
                False,
            )
            .add_extension(x509.UnrecognizedExtension(stand_in, b"\x30\x00"), False)
        )
        der = builder.sign(self.ca.pair.key, hashes.SHA256()).public_bytes(
            serialization.Encoding.DER
        )
        twice = x509.load_der_x509_certificate(
            der.replace(b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x11")
        )
        error = self.assertRaises(
            CertificateRefused, IdentityRule(IdentityField.SAN_EMAIL).identity_of, twice
        )
        self.assertEqual(error.detail, "its san-email field does not parse")
        self.assertFalse(AttributeMatch(san_email_domain="example.org").matches(twice))

    def test_subject_that_does_not_parse_is_a_refusal(self) -> None:
        """
        A certificate whose subject OpenSSL reads but cryptography does not
        (a string of an unexpected tag), as any peer may present, is refused
        for its identity in words, and described by its fingerprint.
        """
        der = self.ca.issue("alice").certificate.public_bytes(
            serialization.Encoding.DER
        )
        broken = x509.load_der_x509_certificate(
            der.replace(b"\x0c\x05alice", b"\x0e\x05alice")
        )
        shown = describe_subject(broken)
        self.assertEqual(
            shown,
            "(a subject that does not parse; certificate sha256 "
            f"{fingerprint(broken)})",
        )
        error = self.assertRaises(
            CertificateRefused, IdentityRule(IdentityField.CN).identity_of, broken
        )
        self.assertEqual(
            (error.subject, error.detail), (shown, "its cn field does not parse")
        )


class SubjectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority()

    def test_subject_of_many_units_is_cut_with_its_length_and_hash(self) -> None:
        """
        A subject of 1,200 units is described by its first fields, whole,
        then how long it was and the hash of the whole: bounded for every
        log line and audit record it goes into, and still matched to its
        certificate.
        """
        pair = self.ca.issue("alice", subject=units(*["engineering"] * 1200))
        whole = pair.certificate.subject.rfc4514_string()
        shown = describe_subject(pair.certificate)
        note = cut_note(pair.certificate)
        self.assertTrue(shown.endswith(note), shown)
        kept = shown.removesuffix(note)
        self.assertTrue(kept.startswith("CN=alice,OU=engineering,"))
        self.assertLessEqual(len(kept), SUBJECT_SHOWN)
        self.assertTrue(whole.startswith(kept + ",OU=engineering"))
        self.assertIn("cut from 18,008 characters", note)

    def test_subject_at_the_bound_is_whole_and_one_past_it_is_cut(self) -> None:
        """
        A subject of exactly the bound is described as it is; one character
        more and the description is cut.
        """
        padding = SUBJECT_SHOWN - len("CN=alice,OU=")
        fits = self.ca.issue("alice", subject=units("u" * padding)).certificate
        self.assertEqual(describe_subject(fits), "CN=alice,OU=" + "u" * padding)
        over = self.ca.issue("alice", subject=units("u" * (padding + 1))).certificate
        self.assertEqual(describe_subject(over), "CN=alice" + cut_note(over))

    def test_one_long_field_is_cut_inside_it_never_inside_an_escape(self) -> None:
        """
        A subject whose first field alone passes the bound is cut inside
        that field, between escapes: an escape cut in half would read as
        another character.
        """
        pair = self.ca.issue(None, subject=units("\x1b" * 400))
        shown = describe_subject(pair.certificate)
        kept = shown.removesuffix(cut_note(pair.certificate))
        self.assertRegex(kept, r"^OU=(\\x1b)+$")
        self.assertGreater(len(kept), SUBJECT_SHOWN - len("\\x1b"))
        self.assertLessEqual(len(kept), SUBJECT_SHOWN)
        self.assertIsNone(re.search("\x1b", shown))
