"""
C{secmsg pki request} on the user's machine and C{secmsg pki sign} on the
CA's: the key never reaches the CA, and a request that asks for more than
the operator grants, or is not what it claims, is refused with one line
and changes nothing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from secmsg.errors import AuthorityError
from secmsg.pki import certificates as pki
from secmsg.pki.authority import create_authority, open_authority
from secmsg.pki.lifecycle import make_signing_request, sign_request
from secmsg.pki.requests import Grant, load_signing_request
from tests.harness import temporary_directory
from tests.test_authority import NOW, SUBJECT, run_cli


def snapshot(directory: Path) -> dict[str, bytes]:
    """
    Every file under C{directory} (but its lock) and what it holds.
    """
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def csr_for(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    attributes: list[x509.NameAttribute],
    extensions: tuple[x509.ExtensionType, ...] = (),
) -> x509.CertificateSigningRequest:
    """
    A signing request made with cryptography alone, good or bad.
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(attributes)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def cn(name: str) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.COMMON_NAME, name)


def ou(unit: str) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit)


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class SigningRequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = temporary_directory(self) / "ca"
        self.user = temporary_directory(self) / "user"
        create_authority(self.ca, SUBJECT, NOW)

    def sign(
        self, csr: x509.CertificateSigningRequest, grant: Grant | None = None
    ) -> x509.Certificate:
        with open_authority(self.ca) as authority:
            issuance = sign_request(authority, csr, grant or Grant(), NOW)
        self.assertIsNone(issuance.key)
        return x509.load_pem_x509_certificate(issuance.certificate.read_bytes())

    def test_request_writes_a_private_key_and_a_csr_for_it(self) -> None:
        """
        request writes NAME.key 0600 and NAME.csr, whose signature verifies
        and whose key is the one beside it.
        """
        key_path, csr_path = make_signing_request(self.user, "alice", units=("ops",))
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        csr = load_signing_request(csr_path)
        self.assertTrue(csr.is_signature_valid)
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        self.assertEqual(
            csr.public_key().public_bytes(der, public),
            key.public_key().public_bytes(der, public),
        )
        self.assertEqual(csr.subject.rfc4514_string(), "CN=alice,OU=ops")

    def test_request_refuses_to_overwrite_a_key(self) -> None:
        """
        A second request for the same name keeps the first key unless
        --force.
        """
        key_path, _ = make_signing_request(self.user, "alice")
        before = key_path.read_bytes()
        with self.assertRaises(AuthorityError) as caught:
            make_signing_request(self.user, "alice")
        self.assertIn("already exists", str(caught.exception))
        self.assertEqual(key_path.read_bytes(), before)
        make_signing_request(self.user, "alice", replace=True)
        self.assertNotEqual(key_path.read_bytes(), before)

    def test_signed_certificate_has_issues_profile_and_no_key_at_the_ca(self) -> None:
        """
        The certificate signed from a request is for the request's key, has
        the extensions issue gives a client certificate, and the CA
        directory gains a certificate but no private key.
        """
        _, csr_path = make_signing_request(self.user, "alice", units=("ops",))
        csr = load_signing_request(csr_path)
        before = set(snapshot(self.ca))
        certificate = self.sign(csr, Grant(units=("ops",)))
        added = set(snapshot(self.ca)) - before
        self.assertEqual(added, {"clients/alice.pem"})
        self.assertEqual(list(self.ca.rglob("*.key")), [self.ca / "ca.key"])
        self.assertEqual(certificate.public_key(), csr.public_key())
        self.assertEqual(certificate.subject.rfc4514_string(), "CN=alice,OU=ops")
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertEqual(list(usage.value), [ExtendedKeyUsageOID.CLIENT_AUTH])
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        )
        self.assertFalse(constraints.value.ca)

    def test_requested_extensions_are_decided_by_the_ca(self) -> None:
        """
        A request asking for serverAuth gets a client certificate all the
        same, and is told that its extension was ignored.
        """
        csr = csr_for(
            p256(),
            [cn("alice")],
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),),
        )
        with open_authority(self.ca) as authority:
            issuance = sign_request(authority, csr, Grant(), NOW)
        self.assertEqual(issuance.ignored, ("ExtendedKeyUsage",))
        certificate = x509.load_pem_x509_certificate(issuance.certificate.read_bytes())
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertEqual(list(usage.value), [ExtendedKeyUsageOID.CLIENT_AUTH])

    def test_granted_names_and_units_are_what_the_certificate_holds(self) -> None:
        """
        The operator's --ou and --san-email are in the certificate even
        when the request did not ask for them.
        """
        csr = csr_for(p256(), [cn("alice")])
        grant = Grant(units=("db",), names=pki.Names(emails=("alice@example.org",)))
        certificate = self.sign(csr, grant)
        self.assertEqual(certificate.subject.rfc4514_string(), "CN=alice,OU=db")
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        self.assertEqual(
            san.value.get_values_for_type(x509.RFC822Name), ["alice@example.org"]
        )

    def test_bad_requests_are_refused_and_change_nothing(self) -> None:
        """
        A request whose signature fails, whose CN is no name token or is
        missing or doubled, whose subject holds more than CN and OU, that
        asks to be a CA, holds a weak or foreign key, asks for an OU or a
        subject alternative name not granted, or does not parse, is refused
        in one line and the CA directory is as it was.
        """
        before = snapshot(self.ca)
        for csr, words in _bad_requests():
            with self.assertRaises(AuthorityError) as caught:
                self.sign(csr)
            self.assertIn(words, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))
        self.assertEqual(snapshot(self.ca), before)


def _tampered(csr: x509.CertificateSigningRequest) -> x509.CertificateSigningRequest:
    """
    C{csr} with one bit of its CN changed, its signature left as it was.
    """
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    where = bytes(der).index(b"alice")
    der[where] ^= 0x01
    return x509.load_der_x509_csr(bytes(der))


def _bad_requests() -> list[tuple[x509.CertificateSigningRequest, str]]:
    key = p256()
    return [
        (_tampered(csr_for(key, [cn("alice")])), "signature does not verify"),
        (csr_for(key, [cn("a b")]), "not a usable name"),
        (csr_for(key, [cn("../evil")]), "not a usable name"),
        (csr_for(key, []), "holds 0 CNs"),
        (csr_for(key, [cn("alice"), cn("bob")]), "holds 2 CNs"),
        (
            csr_for(
                key, [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x"), cn("alice")]
            ),
            "only a CN and OUs",
        ),
        (
            csr_for(
                key, [cn("alice")], (x509.BasicConstraints(ca=True, path_length=None),)
            ),
            "asks to be a CA",
        ),
        (csr_for(key, [cn("alice")], (_cert_sign_usage(),)), "asks to be a CA"),
        (csr_for(key, [ou("ops"), cn("alice")]), "asks for OU 'ops'"),
        (
            csr_for(
                key,
                [cn("alice")],
                (x509.SubjectAlternativeName([x509.RFC822Name("admin@example.org")]),),
            ),
            "--san-email 'admin@example.org'",
        ),
        (
            csr_for(
                key,
                [cn("alice")],
                (x509.SubjectAlternativeName([x509.DNSName("evil.example")]),),
            ),
            "only e-mail addresses and URIs",
        ),
        (
            csr_for(ec.generate_private_key(ec.SECP256K1()), [cn("alice")]),
            "ECDSA secp256k1",
        ),
        (
            csr_for(rsa.generate_private_key(65537, 2048), [cn("alice")]),
            "RSA 2048-bit",
        ),
        (csr_for(ed25519.Ed25519PrivateKey.generate(), [cn("alice")]), "a kind"),
        (
            csr_for(
                key,
                [cn("alice")],
                (
                    x509.UnrecognizedExtension(
                        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\1"
                    ),
                ),
            ),
            "the request is malformed",
        ),
    ]


def _cert_sign_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


class SigningRequestCommandLineTests(SynchronousTestCase):
    """
    The request flow as the user and the operator type it.
    """

    def setUp(self) -> None:
        self.ca = temporary_directory(self) / "ca"
        self.user = temporary_directory(self) / "user"

    def secmsg(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(self, *argv)

    def test_request_then_sign_with_out(self) -> None:
        """
        request, then sign --ou --out: the user gets a certificate for the
        key they kept, and nothing printed holds key material.
        """
        self.assertEqual(self.secmsg("pki", "init", str(self.ca))[0], 0)
        status, out, _ = self.secmsg(
            "pki", "request", "carol", "--dir", str(self.user), "--ou", "ops"
        )
        self.assertEqual(status, 0, out)
        self.assertIn("it stays on this machine", out)
        csr = str(self.user / "carol.csr")
        certificate = self.user / "carol.pem"
        status, out, err = self.secmsg(
            "pki", "--dir", str(self.ca), "sign", csr, "--ou", "ops",
            "--out", str(certificate), "--days", "30",
        )  # fmt: skip
        self.assertEqual(status, 0, err)
        self.assertIn("private key: none here", out)
        self.assertNotIn("BEGIN", out + err)
        issued = x509.load_pem_x509_certificate(certificate.read_bytes())
        key = serialization.load_pem_private_key(
            (self.user / "carol.key").read_bytes(), None
        )
        self.assertEqual(issued.public_key(), key.public_key())
        self.assertFalse((self.ca / "clients" / "carol.key").exists())

    def test_refused_request_is_one_line_and_changes_nothing(self) -> None:
        """
        sign on a request asking for an OU not granted exits 1 with one
        line that says how to grant it, and writes nothing.
        """
        self.secmsg("pki", "init", str(self.ca))
        self.secmsg("pki", "request", "carol", "--dir", str(self.user), "--ou", "ops")
        before = snapshot(self.ca)
        status, out, err = self.secmsg(
            "pki", "--dir", str(self.ca), "sign", str(self.user / "carol.csr")
        )
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("--ou 'ops'", err)
        self.assertEqual(snapshot(self.ca), before)

    def test_out_into_a_missing_directory_signs_nothing(self) -> None:
        """
        sign --out into a directory that does not exist is a usage error
        found before anything is signed.
        """
        self.secmsg("pki", "init", str(self.ca))
        self.secmsg("pki", "request", "carol", "--dir", str(self.user))
        before = snapshot(self.ca)
        status, _, err = self.secmsg(
            "pki", "--dir", str(self.ca), "sign", str(self.user / "carol.csr"),
            "--out", str(self.user / "missing" / "carol.pem"),
        )  # fmt: skip
        self.assertEqual(status, 2)
        self.assertIn("no such directory", err)
        self.assertEqual(snapshot(self.ca), before)

    def test_not_a_request_is_named(self) -> None:
        """
        A file that holds no CSR is refused, naming it.
        """
        self.secmsg("pki", "init", str(self.ca))
        other = self.user / "x.csr"
        self.user.mkdir(exist_ok=True)
        other.write_text("hello\n")
        status, _, err = self.secmsg("pki", "--dir", str(self.ca), "sign", str(other))
        self.assertEqual(status, 1)
        self.assertIn("holds no PEM certificate signing request", err)
