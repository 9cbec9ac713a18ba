"""
RELOAD: new CRL, CA bundle and policy applied to live sessions over real
TLS, or nothing changed when a new file is bad.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.certs import CertificateAuthority
from tests.harness import POLICY, Instance, capture_log


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.log = capture_log(self)
        self.instance = Instance(self)
        self.ca = self.instance.ca
        self.bob_pair = self.ca.issue("bob")
        self.admin = self.instance.connect(self.ca.issue("admin"))
        self.bob = self.instance.connect(self.bob_pair)
        self.admin.take()
        self.bob.take()

    def reload(self) -> list[str]:
        self.admin.send("RELOAD")
        self.instance.flush()
        return self.admin.take()

    def test_new_crl_closes_revoked_session(self) -> None:
        """
        After a RELOAD with a CRL that revokes bob, his open session gets
        CLOSED revoked and ends, and his next handshake is refused.
        """
        self.ca.revoke(self.bob_pair)
        self.instance.write("crl.pem", self.ca.crl_pem())
        self.assertEqual(
            self.reload(),
            [
                "200 reloaded policy, CA bundle and CRL; 2 sessions checked; "
                "closed bob (revoked)"
            ],
        )
        self.assertEqual(self.bob.take(), ["CLOSED revoked"])
        self.assertIsNotNone(self.bob.lost)
        again = self.instance.connect(self.bob_pair)
        self.assertFalse(again.greeted)

    def test_new_policy_applies_to_live_session_at_once(self) -> None:
        """
        A demoted identity loses its commands in its open session.
        """
        self.bob.send("MSG admin hi")
        self.instance.flush()
        self.assertEqual(self.bob.take(), ["250 1"])
        self.instance.write(
            "policy.toml", POLICY.replace('bob = ["user"]', "").encode()
        )
        self.reload()
        self.bob.send("MSG admin hi")
        self.instance.flush()
        self.assertEqual(
            self.bob.take(),
            ["403 MSG not permitted for bob: not granted by role guest"],
        )

    def test_policy_that_refuses_identity_closes_its_session(self) -> None:
        """
        An identity the new policy admits to no role is closed with a reason.
        """
        policy = POLICY.replace('default_roles = ["guest"]', "default_roles = []")
        self.instance.write(
            "policy.toml", policy.replace('bob = ["user"]', "").encode()
        )
        self.assertIn("closed bob (refused by the new policy)", self.reload()[0])
        self.assertEqual(self.bob.take(), ["CLOSED refused by the new policy"])

    def test_dropped_ca_stops_being_trusted(self) -> None:
        """
        A CA removed from the bundle is trusted no more, by live sessions or
        new handshakes.
        """
        other = CertificateAuthority("another CA")
        self.instance.write("ca.pem", self.ca.pem + other.pem)
        self.instance.write("crl.pem", self.ca.crl_pem() + other.crl_pem())
        self.reload()
        admin = self.instance.connect(other.issue("admin"))
        self.instance.write("ca.pem", other.pem)
        self.instance.write("crl.pem", other.crl_pem())
        admin.send("RELOAD")
        self.instance.flush()
        self.assertEqual(
            admin.take()[1:],
            [
                "200 reloaded policy, CA bundle and CRL; 3 sessions checked; "
                "closed admin (unknown CA); closed bob (unknown CA)"
            ],
        )
        self.assertEqual(self.bob.take(), ["CLOSED unknown CA"])
        self.assertFalse(self.instance.connect(self.bob_pair).greeted)

    def test_bad_file_changes_nothing(self) -> None:
        """
        A RELOAD whose policy is invalid says why in a 5xx reply and the
        log, and the old policy, CRL and CA bundle stay in force whole.
        """
        self.ca.revoke(self.bob_pair)
        self.instance.write("crl.pem", self.ca.crl_pem())
        self.instance.write("policy.toml", b'[roles.a]\ninherits = ["a"]\n')
        reply = self.reload()
        self.assertEqual(len(reply), 1)
        self.assertTrue(
            reply[0].startswith("500 reload failed, configuration unchanged: ")
        )
        self.assertIn("inheritance cycle: a -> a", reply[0])
        self.assertTrue(any("configuration unchanged" in line for line in self.log))
        self.assertEqual(self.bob.take(), [])
        self.assertTrue(self.instance.connect(self.bob_pair).greeted)

    def test_crl_from_another_ca_is_refused(self) -> None:
        """
        A CRL that no trusted CA signed is a bad file, not a new trust.
        """
        self.instance.write("crl.pem", CertificateAuthority(self.ca.name).crl_pem())
        reply = self.reload()
        self.assertIn("is not signed by a CA in the CA bundle", reply[0])
        self.assertTrue(reply[0].startswith("500 "))
