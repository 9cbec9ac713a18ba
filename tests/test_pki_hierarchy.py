"""
A root CA over an issuing CA: C{secmsg pki init --root}, then
C{init --intermediate --root-dir}, so that the root's key can go offline.
The daemon's own verification, over real TLS in memory, accepts a client
certificate of the issuing CA given the issuing CA's C{ca.pem} and
C{crl.pem} alone, and refuses one that either CA's CRL revokes.
"""

from __future__ import annotations

import io
import sys
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID
from OpenSSL.crypto import X509
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.trial.unittest import SynchronousTestCase

from secmsg.cli import main as cli
from secmsg.client.tls import client_tls_options, describe_tls_failure
from secmsg.errors import AuthorityError
from secmsg.pki import certificates as pki
from secmsg.pki.authority import (
    ROOT_CRL_DAYS,
    create_authority,
    create_issuing_authority,
    open_authority,
    take_root_crl,
)
from secmsg.pki.requests import Request
from tests.certs import Pair, now
from tests.harness import Instance, LineClient, capture_log, temporary_directory
from tests.test_authority import NOW
from tests.test_signing_requests import snapshot


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def constraints(certificate: x509.Certificate) -> x509.BasicConstraints:
    return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value


def presenting(
    pair: Pair, issuing: x509.Certificate, server_ca_pem: bytes
) -> IOpenSSLClientConnectionCreator:
    """
    Client options that present C{pair} with its issuing CA after it, as
    a TLS client may (the secmsg client presents its certificate alone),
    trusting C{server_ca_pem} for the daemon's certificate.
    """
    return optionsForClientTLS(
        "localhost",
        trustRoot=Certificate.loadPEM(server_ca_pem),
        clientCertificate=PrivateCertificate.loadPEM(
            pair.certificate_pem + pair.key_pem
        ),
        extraCertificateOptions={"extraCertChain": [X509.from_cryptography(issuing)]},
    )


class TwoLevels:
    """
    A root and an issuing CA under it, made with secmsg's own CA tool at
    C{moment}.
    """

    def __init__(self, testcase: SynchronousTestCase, moment: datetime) -> None:
        self.moment = moment
        base = temporary_directory(testcase)
        self.root, self.issuing = base / "root", base / "issuing"
        create_authority(self.root, name("test root"), moment, root=True)
        with open_authority(self.root) as root:
            create_issuing_authority(self.issuing, root, name("test issuing"), moment)

    def issue(
        self, user: str, request: Request | None = None, issuing: Path | None = None
    ) -> Pair:
        """
        A client certificate of the issuing CA (or what C{request} asks
        for), with its key; of the issuing CA in C{issuing}, if given.
        """
        with open_authority(issuing or self.issuing) as authority:
            issuance = authority.issue(request or Request(user), self.moment)
        key = serialization.load_pem_private_key(
            (issuance.certificate.with_suffix(".key")).read_bytes(), None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError("secmsg makes ECDSA keys unless told otherwise")
        certificate = x509.load_pem_x509_certificate(issuance.certificate.read_bytes())
        return Pair(certificate, key)

    def sibling(self, common_name: str) -> Path:
        """
        Another issuing CA under the same root, in a directory of its own.
        """
        directory = self.issuing.with_name(common_name)
        with open_authority(self.root) as root:
            create_issuing_authority(directory, root, name(common_name), self.moment)
        return directory

    def bundle(self) -> list[x509.Certificate]:
        """
        The issuing CA's ca.pem: itself, then the root.
        """
        return x509.load_pem_x509_certificates((self.issuing / "ca.pem").read_bytes())

    def crls(self) -> list[x509.CertificateRevocationList]:
        data = (self.issuing / "crl.pem").read_bytes()
        marker = b"-----BEGIN X509 CRL-----"
        return [
            x509.load_pem_x509_crl(marker + part) for part in data.split(marker)[1:]
        ]


class HierarchyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.levels = TwoLevels(self, NOW)

    def test_root_may_sign_one_level_of_cas_and_the_issuing_ca_none(self) -> None:
        """
        The root has path length 1; the issuing CA path length 0, is signed
        by the root, and is listed in the root's inventory as issuing.
        """
        issuing, root = self.levels.bundle()
        self.assertEqual(constraints(root).path_length, 1)
        self.assertEqual(constraints(issuing).path_length, 0)
        issuing.verify_directly_issued_by(root)
        with open_authority(self.levels.root) as authority:
            kinds = [(r.name, r.kind) for r in authority.inventory.records]
        self.assertEqual(kinds, [("ca", "ca"), ("test issuing", "issuing")])

    def test_issuing_ca_files_hold_what_the_daemon_needs(self) -> None:
        """
        ca.pem holds the issuing CA then the root; crl.pem holds the
        issuing CA's CRL then the root's, each signed by its CA.
        """
        issuing, root = self.levels.bundle()
        crls = self.levels.crls()
        self.assertEqual([crl.issuer for crl in crls], [issuing.subject, root.subject])
        self.assertTrue(crls[0].is_signature_valid(issuing.public_key()))
        self.assertTrue(crls[1].is_signature_valid(root.public_key()))

    def test_leaf_verifies_to_the_root_alone(self) -> None:
        """
        cryptography's own client verifier, trusting the root only, accepts
        a leaf of the issuing CA with the issuing CA as its intermediate.
        """
        issuing, root = self.levels.bundle()
        leaf = self.levels.issue("alice").certificate
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store([root]))
            .time(NOW + timedelta(hours=1))
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        chain = verifier.verify(leaf, [issuing]).chain
        self.assertEqual(chain, [leaf, issuing, root])

    def test_root_signs_no_leaf_and_no_third_level(self) -> None:
        """
        A root refuses to issue a leaf; an issuing CA cannot be the root of
        another; an issuing CA may not share its root's name.
        """
        before = snapshot(self.levels.root)
        with (
            self.assertRaises(AuthorityError) as caught,
            open_authority(self.levels.root) as root,
        ):
            root.issue(Request("alice"), NOW)
        self.assertIn("signs issuing CAs only", str(caught.exception))
        elsewhere = temporary_directory(self) / "third"
        with (
            self.assertRaises(AuthorityError) as caught,
            open_authority(self.levels.issuing) as issuing,
        ):
            create_issuing_authority(elsewhere, issuing, name("third"), NOW)
        self.assertIn("is not a root CA", str(caught.exception))
        with (
            self.assertRaises(AuthorityError) as caught,
            open_authority(self.levels.root) as root,
        ):
            create_issuing_authority(elsewhere, root, name("test root"), NOW)
        self.assertIn("other than its root's", str(caught.exception))
        self.assertEqual(snapshot(self.levels.root), before)
        self.assertFalse(elsewhere.exists())

    def test_a_new_root_crl_is_taken_and_an_older_one_refused(self) -> None:
        """
        crl --root-crl puts the root's new CRL after the issuing CA's own;
        a CRL older than the one in use, or not the root's, is refused.
        """
        old_root_crl = (self.levels.root / "crl.pem").read_bytes()
        with open_authority(self.levels.root) as root:
            root.sign_crl(NOW)
        with open_authority(self.levels.issuing) as issuing:
            self.assertEqual(take_root_crl(issuing, self.levels.root / "crl.pem"), 2)
            issuing.sign_crl(NOW)
        self.assertEqual(
            self.levels.crls()[1]
            .extensions.get_extension_for_class(x509.CRLNumber)
            .value.crl_number,
            2,
        )
        stale = temporary_directory(self) / "old.pem"
        stale.write_bytes(old_root_crl)
        for path, words in [
            (stale, "older than the root's CRL in use"),
            (self.levels.issuing / "crl.pem", "not a CRL signed by the root"),
        ]:
            with (
                self.assertRaises(AuthorityError) as caught,
                open_authority(self.levels.issuing) as issuing,
            ):
                take_root_crl(issuing, path)
            self.assertIn(words, str(caught.exception))

    def test_crl_of_the_issuing_ca_says_when_the_roots_runs_out(self) -> None:
        """
        secmsg pki crl of an issuing CA (the weekly job's) says when the
        root's CRL it holds runs out, and how to bring a new one in.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        directory = str(self.levels.issuing)
        self.assertEqual(cli.main(["pki", "--dir", directory, "crl"]), 0)
        due = NOW + timedelta(days=ROOT_CRL_DAYS)
        self.assertIn(
            f"the root's CRL in it runs out {due:%Y-%m-%d}: before then",
            out.getvalue(),
        )
        self.assertIn(f"pki --dir {directory} crl --root-crl FILE", out.getvalue())


class DaemonAcceptsTwoLevelsTests(SynchronousTestCase):
    """
    The daemon, configured with the issuing CA's ca.pem and crl.pem, over
    real TLS in memory; its verification code is the one it always runs.
    """

    def setUp(self) -> None:
        # OpenSSL checks a handshake's certificates against the machine's
        # clock, so this PKI is made around it, valid for months either side.
        self.levels = TwoLevels(self, now())
        self.log = capture_log(self)
        self.instance = Instance(self)
        self.configure()

    def configure(self) -> None:
        """
        Give the daemon the issuing CA's two files, as docs/operations.md
        tells the operator to, and reload.
        """
        self.instance.write("ca.pem", (self.levels.issuing / "ca.pem").read_bytes())
        self.instance.write("crl.pem", (self.levels.issuing / "crl.pem").read_bytes())
        self.instance.daemon.reloader.reload()

    def assertRefused(self, pair: Pair, reason: str) -> None:
        client = self.instance.connect(pair, early=(b"PING\n",))
        self.assertEqual(client.lines, [])
        refusals = [line for line in self.log if "refused handshake" in line]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn(f": {reason}", refusals[0])

    def test_client_of_the_issuing_ca_is_greeted(self) -> None:
        """
        A client certificate of the issuing CA gets in, whether the client
        sends the issuing CA along or only its own certificate.
        """
        alice = self.levels.issue("alice")
        self.assertTrue(self.instance.connect(alice).greeted)
        issuing = self.levels.bundle()[0]
        client = LineClient(())
        self.instance.connect_protocol(
            client, presenting(alice, issuing, self.instance.ca.pem)
        )
        self.instance.flush()
        self.assertTrue(client.greeted)

    def test_server_of_the_issuing_ca_presents_its_chain(self) -> None:
        """
        A server certificate of the issuing CA is written with the issuing
        CA after it, so that a client trusting the root alone, or the
        issuing CA's ca.pem, verifies the daemon and is greeted.
        """
        names = pki.Names(dns=("localhost",))
        server = self.levels.issue("localhost", Request("localhost", True, names))
        written = self.levels.issuing / "servers" / "localhost.pem"
        self.assertEqual(len(x509.load_pem_x509_certificates(written.read_bytes())), 2)
        self.instance.write("server.pem", written.read_bytes())
        self.instance.write("server.key", server.key_pem)
        self.instance.daemon.reloader.reload()
        alice = self.levels.issue("alice")
        root_pem = (self.levels.root / "ca.pem").read_bytes()
        for trusted in (root_pem, (self.levels.issuing / "ca.pem").read_bytes()):
            options = client_tls_options(
                "localhost", trusted, alice.certificate_pem, alice.key_pem
            )
            client = LineClient(())
            self.instance.connect_protocol(client, options)
            self.instance.flush()
            self.assertTrue(client.greeted)

    def test_revoked_by_the_issuing_ca_is_refused(self) -> None:
        """
        A certificate the issuing CA revokes is refused once its crl.pem
        is loaded, and another of its certificates still gets in.
        """
        alice, bob = self.levels.issue("alice"), self.levels.issue("bob")
        with open_authority(self.levels.issuing) as issuing:
            issuing.revoke("alice", "key-compromise", now())
        self.configure()
        self.assertRefused(alice, "revoked")
        self.assertTrue(self.instance.connect(bob).greeted)

    def test_issuing_ca_revoked_by_the_root_is_refused(self) -> None:
        """
        When the root revokes the issuing CA and its new CRL is taken in,
        every certificate under the issuing CA is refused.
        """
        alice = self.levels.issue("alice")
        with open_authority(self.levels.root) as root:
            root.revoke("test issuing", "ca-compromise", now())
        with open_authority(self.levels.issuing) as issuing:
            take_root_crl(issuing, self.levels.root / "crl.pem")
            issuing.sign_crl(now())
        self.configure()
        self.assertRefused(alice, "revoked")


class SiblingIssuingCATests(SynchronousTestCase):
    """
    Two issuing CAs under one root, over real TLS in memory: a daemon given
    one's ca.pem (which holds the root too) accepts the client certificates
    that CA issued, and not those of its sibling, with or without CRLs.
    """

    FOREIGN = (
        "unknown CA (not issued directly by a CA of the CA bundle "
        "(its issuer is CN=test sibling)"
    )

    def setUp(self) -> None:
        self.levels = TwoLevels(self, now())
        sibling = self.levels.sibling("test sibling")
        stranger = self.levels.issue("alice", issuing=sibling)
        self.stranger = stranger
        self.stranger_ca = x509.load_pem_x509_certificates(
            (sibling / "ca.pem").read_bytes()
        )[0]
        self.alice = self.levels.issue("alice")
        self.log = capture_log(self)

    def daemon(self, crl: bool) -> Instance:
        """
        A daemon given the first issuing CA's ca.pem and, if C{crl}, its
        crl.pem (a daemon may have no CRL configured).
        """
        instance = Instance(self) if crl else Instance(self, crl=None)
        instance.write("ca.pem", (self.levels.issuing / "ca.pem").read_bytes())
        instance.write("crl.pem", (self.levels.issuing / "crl.pem").read_bytes())
        instance.daemon.reloader.reload()
        return instance

    def assertForeignRefused(self, instance: Instance, client_words: str) -> None:
        """
        The sibling's alice, sending her CA along as a TLS client may (the
        secmsg client sends its certificate alone), is refused in words:
        the log's, and the client's from the TLS alert.
        """
        options = presenting(self.stranger, self.stranger_ca, instance.ca.pem)
        client = LineClient((b"PING\n",))
        instance.connect_protocol(client, options)
        instance.flush()
        self.assertEqual(client.lines, [])
        refusals = [line for line in self.log if "refused handshake" in line]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn(f": {self.FOREIGN}", refusals[0])
        assert client.lost is not None
        refused, words = describe_tls_failure(client.lost, "localhost")
        self.assertEqual(
            (refused, words),
            (True, f"the server refused our certificate: {client_words}"),
        )

    def test_sibling_certificate_refused_without_crls(self) -> None:
        """
        With no CRL configured, the sibling's alice is refused for her
        issuer, and the daemon's own CA's alice is greeted.
        """
        instance = self.daemon(crl=False)
        # OpenSSL accepted the chain; the refusal is the daemon's own, whose
        # alert tells the client to read the log, as for other such.
        self.assertForeignRefused(instance, "rejected; the server's log says why")
        self.assertTrue(instance.connect(self.alice).greeted)

    def test_sibling_certificate_refused_with_crls_for_its_issuer(self) -> None:
        """
        With the CRLs configured, the sibling's alice is refused for her
        issuer, not merely as of unknown revocation status; the daemon's
        own CA's alice is greeted.
        """
        instance = self.daemon(crl=True)
        self.assertForeignRefused(instance, "unknown CA")
        self.assertTrue(instance.connect(self.alice).greeted)

    def test_session_closed_when_its_issuer_leaves_the_bundle(self) -> None:
        """
        A reload to a bundle of the root alone closes a session whose
        certificate the issuing CA signed, though its chain still verifies
        to the root: the root issues no client certificates.
        """
        instance = self.daemon(crl=False)
        alice = instance.connect(self.alice)
        self.assertTrue(alice.greeted)
        instance.write("ca.pem", (self.levels.root / "ca.pem").read_bytes())
        instance.daemon.reloader.reload()
        instance.flush()
        self.assertEqual(alice.take()[-1], "CLOSED unknown CA")
