"""
Who gets in: real TLS handshakes against the assembled daemon, in memory,
under TLS 1.2 and TLS 1.3.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from cryptography import x509
from twisted.internet.ssl import TLSVersion
from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon.identity import IdentityField
from secmsg.tap import build_daemon
from tests.certs import SERVER_AUTH, CertificateAuthority, self_signed
from tests.harness import Instance, capture_log


class HandshakeTests:
    """
    Each refusal case, for one TLS version; subclasses pick the version.
    """

    tls_version: TLSVersion

    def setUp(self) -> None:
        self.log = capture_log(self)
        self.instance = Instance(self)
        self.ca = self.instance.ca

    def trust_intermediate(self) -> CertificateAuthority:
        """
        An intermediate CA below the test CA, added to the CA bundle (where
        the CRLs it signs can be checked against it).
        """
        intermediate = self.ca.intermediate("secmsg issuing CA")
        self.instance.write("ca.pem", self.ca.pem + intermediate.pem)
        return intermediate

    def assertRefused(self, pair, reason: str) -> None:
        """
        The client gets no greeting and not a byte of application data, and
        the daemon logs the refusal once, with the reason in our words.
        """
        client = self.instance.connect(pair, self.tls_version, early=(b"PING\n",))
        self.assertEqual(client.lines, [])
        self.assertIsNotNone(client.lost)
        refusals = [line for line in self.log if "refused handshake" in line]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn(f": {reason}", refusals[0])
        self.assertIn("127.0.0.1:", refusals[0])

    def test_good_certificate_is_greeted(self) -> None:
        """
        A certificate from the configured CA with clientAuth gets the
        greeting naming its identity and roles.
        """
        client = self.instance.connect(self.ca.issue("alice"), self.tls_version)
        self.assertEqual(
            client.lines,
            [
                "200 secmsg 0.1.0 ready; you are alice (roles: user)"
                "; protocol 1.0; capabilities store,ack-upto,history,"
                "rooms,broadcast,presence"
                "; rate 1000000/s, burst 3000000, 3000000 left"
            ],
        )
        self.assertIsNone(client.lost)

    def test_lines_sent_before_login_are_answered_after_greeting(self) -> None:
        """
        What a client pipelines right after its side of the handshake is held
        and answered, in order, after the greeting.
        """
        client = self.instance.connect(
            self.ca.issue("alice"), self.tls_version, early=(b"PING\nWHO\n",)
        )
        self.assertEqual(
            client.lines,
            [
                "200 secmsg 0.1.0 ready; you are alice (roles: user)"
                "; protocol 1.0; capabilities store,ack-upto,history,"
                "rooms,broadcast,presence"
                "; rate 1000000/s, burst 3000000, 3000000 left",
                "200 PONG",
                "211-alice",
                "211 1 online",
            ],
        )

    def test_no_certificate_refused(self) -> None:
        """
        A client that presents no certificate is refused.
        """
        self.assertRefused(None, "no certificate")

    def test_other_ca_refused(self) -> None:
        """
        A certificate from a CA the daemon does not trust is refused.
        """
        self.assertRefused(
            CertificateAuthority("another CA").issue("alice"), "unknown CA"
        )

    def test_look_alike_ca_refused(self) -> None:
        """
        A CA with the same name as ours but another key does not pass.
        """
        impostor = CertificateAuthority(self.ca.name)
        self.assertRefused(impostor.issue("alice"), "unknown CA")

    def test_self_signed_refused(self) -> None:
        """
        A self-signed certificate naming a real identity is refused.
        """
        self.assertRefused(self_signed("alice"), "unknown CA")

    def test_expired_refused(self) -> None:
        """
        A certificate past its validity window is refused as expired.
        """
        pair = self.ca.issue(
            "alice", valid_from=timedelta(days=-30), valid_for=timedelta(days=29)
        )
        self.assertRefused(pair, "expired")

    def test_not_yet_valid_refused(self) -> None:
        """
        A certificate whose window has not begun is refused.
        """
        pair = self.ca.issue("alice", valid_from=timedelta(days=1))
        self.assertRefused(pair, "not yet valid")

    def test_revoked_refused(self) -> None:
        """
        A certificate on the configured CRL is refused.
        """
        pair = self.ca.issue("alice")
        self.ca.revoke(pair)
        self.instance.write("crl.pem", self.ca.crl_pem())
        self.instance.daemon.reloader.reload()
        self.assertRefused(pair, "revoked")

    def test_server_auth_only_refused(self) -> None:
        """
        A certificate whose extended key usage is serverAuth only is refused
        for its key usage.
        """
        self.assertRefused(
            self.ca.issue("alice", usages=SERVER_AUTH), "wrong key usage"
        )

    def test_no_extended_key_usage_refused(self) -> None:
        """
        A certificate with no extended key usage at all is refused too:
        clientAuth must be named.
        """
        self.assertRefused(self.ca.issue("alice", usages=None), "wrong key usage")

    def test_ca_certificate_as_client_refused(self) -> None:
        """
        A certificate that claims to be a CA is no client certificate, even
        with clientAuth: it could sign certificates for anyone.
        """
        self.assertRefused(self.ca.issue("alice", ca=True), "wrong key usage")

    def test_chain_through_intermediate_accepted(self) -> None:
        """
        A leaf under an intermediate CA gets in when both the root's CRL and
        the intermediate's are configured and neither revokes.
        """
        intermediate = self.trust_intermediate()
        self.instance.write("crl.pem", self.ca.crl_pem() + intermediate.crl_pem())
        self.instance.daemon.reloader.reload()
        client = self.instance.connect(intermediate.issue("alice"), self.tls_version)
        self.assertTrue(client.greeted)

    def test_revoked_intermediate_refused(self) -> None:
        """
        A leaf under an intermediate CA that the root has revoked is refused,
        though the leaf itself is on no CRL.
        """
        intermediate = self.trust_intermediate()
        self.ca.revoked.append(intermediate.pair.certificate.serial_number)
        self.instance.write("crl.pem", self.ca.crl_pem() + intermediate.crl_pem())
        self.instance.daemon.reloader.reload()
        self.assertRefused(intermediate.issue("alice"), "revoked")

    def test_intermediate_without_crl_refused(self) -> None:
        """
        Revocation is checked for every CA of the chain: an intermediate
        whose own CRL is missing leaves its leaves' status unknown.
        """
        intermediate = self.trust_intermediate()
        self.instance.daemon.reloader.reload()
        self.assertRefused(intermediate.issue("alice"), "revocation status unknown")

    def test_handshake_spanning_a_reload_is_judged_by_the_new_crl(self) -> None:
        """
        A connection accepted before a RELOAD that revokes its certificate,
        whose handshake completes after it, is refused all the same.
        """
        pair = self.ca.issue("bob")
        client = self.instance.connect(pair, self.tls_version, complete=False)
        self.ca.revoke(pair)
        self.instance.write("crl.pem", self.ca.crl_pem())
        self.instance.daemon.reloader.reload()
        self.instance.flush()
        self.assertFalse(client.greeted)
        refusals = [line for line in self.log if "refused handshake" in line]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn(": revoked", refusals[0])

    def test_identity_not_a_name_token_refused(self) -> None:
        """
        A certificate whose CN holds a space is refused for its identity.
        """
        self.assertRefused(self.ca.issue("alice smith"), "identity not a name token")

    def test_identity_with_control_character_refused_and_escaped(self) -> None:
        """
        A CN with an escape sequence is refused, and the log shows it escaped.
        """
        self.assertRefused(self.ca.issue("alice\x1b[2J"), "identity not a name token")
        self.assertFalse(any("\x1b" in line for line in self.log))

    def test_missing_identity_refused(self) -> None:
        """
        A certificate with no CN at all is refused for its identity.
        """
        self.assertRefused(self.ca.issue(None), "identity not a name token")


class TLS12HandshakeTests(HandshakeTests, SynchronousTestCase):
    tls_version = TLSVersion.TLSv1_2


class TLS13HandshakeTests(HandshakeTests, SynchronousTestCase):
    tls_version = TLSVersion.TLSv1_3


class PolicyLoginTests(SynchronousTestCase):
    """
    Logins the policy refuses after a good handshake.
    """

    def test_unlisted_identity_refused_when_no_default_roles(self) -> None:
        """
        With default_roles = [], an identity the policy does not list gets
        a CLOSED line saying why, and the daemon logs it.
        """
        log = capture_log(self)
        policy = 'default_roles = []\n[roles.user]\ncommands = ["PING"]\n'
        instance = Instance(self, policy=policy)
        client = instance.connect(instance.ca.issue("mallory"))
        self.assertEqual(
            client.lines, ["CLOSED login refused: the policy gives mallory no role"]
        )
        self.assertIsNotNone(client.lost)
        self.assertTrue(any("refused login" in line for line in log))

    def test_unlisted_identity_gets_default_roles(self) -> None:
        """
        An identity not listed gets the default roles.
        """
        instance = Instance(self)
        client = instance.connect(instance.ca.issue("carol"))
        self.assertEqual(
            client.lines,
            [
                "200 secmsg 0.1.0 ready; you are carol (roles: guest)"
                "; protocol 1.0; capabilities store,ack-upto,history,"
                "rooms,broadcast,presence"
                "; rate 1000000/s, burst 3000000, 3000000 left"
            ],
        )

    def test_san_email_identity(self) -> None:
        """
        With identity = san-email, the SAN e-mail address is the identity.
        """
        instance = Instance(self)
        pair = instance.ca.issue(
            "Carol Example", names=[x509.RFC822Name("carol@example.org")]
        )
        instance.daemon = build_daemon(
            dataclasses.replace(instance.settings(), identity=IdentityField.SAN_EMAIL),
            instance.clock,
            instance.store,
        )
        client = instance.connect(pair)
        self.assertEqual(
            client.lines,
            [
                "200 secmsg 0.1.0 ready; you are carol@example.org (roles: guest)"
                "; protocol 1.0; capabilities store,ack-upto,history,"
                "rooms,broadcast,presence"
                "; rate 1000000/s, burst 3000000, 3000000 left"
            ],
        )
