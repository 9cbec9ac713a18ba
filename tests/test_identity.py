"""
From certificate to identity, for each field an operator may choose.
"""

from __future__ import annotations

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from secmsg.errors import CertificateRefused, RefusalReason
from secmsg.identity import IdentityField, IdentityRule
from tests.certs import CertificateAuthority


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
