"""
RELOAD: new CRL, CA bundle and policy applied to live sessions over real
TLS, or nothing changed when a new file is bad.
"""

from __future__ import annotations

from datetime import timedelta

from OpenSSL.crypto import X509StoreContext
from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon import trust
from secmsg.daemon.service import CRLFreshnessService
from tests.certs import CertificateAuthority
from tests.harness import POLICY, Instance, capture_log


class AdminAndBob(SynchronousTestCase):
    """
    A daemon in memory with an admin and bob logged in over real TLS.
    """

    def setUp(self) -> None:
        self.log = capture_log(self)
        self.instance = Instance(self)
        self.ca = self.instance.ca
        self.bob_pair = self.ca.issue("bob")
        self.admin = self.instance.connect(self.ca.issue("admin"))
        self.bob = self.instance.connect(self.bob_pair)
        self.admin.take()
        self.bob.take()

    def ask(self, line: str) -> list[str]:
        """
        The admin's reply to C{line}.
        """
        self.admin.send(line)
        self.instance.flush()
        return self.admin.take()

    def reload(self) -> list[str]:
        return self.ask("RELOAD")


class ReloadTests(AdminAndBob):
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

    def test_sessions_sharing_a_certificate_are_verified_once(self) -> None:
        """
        A reload verifies each distinct certificate of the live sessions
        once, not once a session (at half a millisecond each, a reload of
        10,000 sessions held them all up for seconds), and every session
        of a revoked certificate is closed all the same.
        """
        others = [self.instance.connect(self.bob_pair) for _ in range(2)]
        for session in others:
            session.take()
        verified = []

        def counting(*arguments: object) -> X509StoreContext:
            verified.append(arguments)
            return X509StoreContext(*arguments)

        self.patch(trust, "X509StoreContext", counting)
        self.ca.revoke(self.bob_pair)
        self.instance.write("crl.pem", self.ca.crl_pem())
        self.assertIn("4 sessions checked", self.reload()[0])
        self.assertEqual(len(verified), 2)
        for session in [self.bob, *others]:
            self.assertEqual(session.take(), ["CLOSED revoked"])

    def test_renewed_server_certificate_is_served_after_reload(self) -> None:
        """
        A RELOAD re-reads the server's own certificate and key: the next
        handshake presents the renewed certificate, with no restart, and
        the open sessions carry on.
        """
        renewed = self.ca.server()
        self.instance.write("server.pem", renewed.certificate_pem)
        self.instance.write("server.key", renewed.key_pem)
        self.assertEqual(self.reload()[0][:4], "200 ")
        carol = self.instance.connect(self.ca.issue("carol"))
        self.assertTrue(carol.greeted)
        served = carol.transport.getHandle().get_peer_certificate()
        self.assertEqual(
            served.to_cryptography().serial_number,
            renewed.certificate.serial_number,
        )
        self.assertEqual(self.bob.take(), [])
        self.assertIsNone(self.bob.lost)

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


class DryRunTests(AdminAndBob):
    def test_dry_run_reports_and_changes_nothing(self) -> None:
        """
        RELOAD DRY lists whom a reload would close and whose rights it would
        change, and changes nothing: bob keeps his session and his MSG.
        """
        self.ca.revoke(self.ca.issue("nobody"))
        self.instance.write(
            "policy.toml", POLICY.replace('bob = ["user"]', "").encode()
        )
        reply = self.ask("RELOAD DRY")
        self.assertEqual(len(reply), 2)
        self.assertRegex(
            reply[0],
            r"^211-bob \(127\.0\.0\.1:\d+\) roles user -> guest; "
            r"loses HISTORY,JOIN,MSG,PART,ROOMS,SAY$",
        )
        self.assertEqual(
            reply[1], "211 a reload would change 1 of 2 sessions; nothing changed"
        )
        self.bob.send("MSG admin still here")
        self.instance.flush()
        self.assertEqual(self.bob.take(), ["250 1"])

    def test_dry_run_names_sessions_it_would_close(self) -> None:
        """
        A revocation shows as a session to close, and bob stays.
        """
        self.ca.revoke(self.bob_pair)
        self.instance.write("crl.pem", self.ca.crl_pem())
        reply = self.ask("RELOAD DRY")
        self.assertRegex(reply[0], r"^211-close bob \(127\.0\.0\.1:\d+\): revoked$")
        self.assertEqual(self.bob.take(), [])
        self.assertIsNone(self.bob.lost)

    def test_reload_that_takes_join_away_takes_the_session_out(self) -> None:
        """
        bob demoted to a role without JOIN is taken out of his rooms too,
        rather than left in one he could not leave.
        """
        self.bob.send("JOIN #general")
        self.instance.flush()
        self.bob.take()
        self.instance.write(
            "policy.toml", POLICY.replace('bob = ["user"]', 'bob = ["guest"]').encode()
        )
        self.ask("RELOAD")
        self.assertEqual(
            self.bob.take(),
            ["NOTICE you have left #general: the policy no longer lets you join it"],
        )
        self.assertEqual(self.ask("ROOMS"), ["211 0 rooms"])

    def test_reload_takes_sessions_out_of_rooms_they_may_no_longer_join(self) -> None:
        """
        A new room rule that shuts bob out of #ops-db takes him out, with a
        notice, and keeps the admin in.
        """
        self.bob.send("JOIN #ops-db")
        self.admin.send("JOIN #ops-db")
        self.instance.flush()
        self.instance.write(
            "policy.toml",
            (POLICY + '[[rooms]]\npattern = "#ops-*"\njoin = ["admin"]\n').encode(),
        )
        self.admin.take()
        # The admin, still in the room, is told that bob has left it.
        parted, reply = self.ask("RELOAD")
        self.assertEqual(parted, "PARTED #ops-db bob")
        self.assertIn("rights changed in 1 session", reply)
        self.assertEqual(
            self.bob.take()[-1],
            "NOTICE you have left #ops-db: the policy no longer lets you join it",
        )
        self.assertEqual(self.ask("WHO #ops-db"), ["211-admin", "211 1 in #ops-db"])

    def test_reload_parts_only_where_it_takes_a_right_away(self) -> None:
        """
        A reload takes an identity out of a room only through a session
        that could join it before and may not now: bob, who joined while
        he could and came back under a policy that shuts him out (another
        certificate of his might still get in), stays a member through a
        reload that changes nothing for his session.
        """
        self.bob.send("JOIN #ops-db")
        self.instance.flush()
        self.bob.transport.loseConnection()
        self.instance.flush()
        self.instance.write(
            "policy.toml",
            (POLICY + '[[rooms]]\npattern = "#ops-*"\njoin = ["admin"]\n').encode(),
        )
        self.assertNotIn("rights changed", self.reload()[-1])
        again = self.instance.connect(self.bob_pair)
        again.take()
        self.assertNotIn("rights changed", self.reload()[-1])
        self.assertEqual(again.take(), [])
        self.assertEqual(self.ask("WHO #ops-db"), ["211-bob", "211 1 in #ops-db"])

    def test_reload_that_takes_away_reading_stops_pushes_at_once(self) -> None:
        """
        A room rule that lets bob stay in #news but no longer read it: the
        next message there does not reach him, although which rule decides
        #news was remembered from the messages before.
        """
        self.bob.send("JOIN #news")
        self.ask("JOIN #news")
        self.assertEqual(self.ask("SAY #news one"), ["250 1"])
        self.assertEqual(self.bob.take()[-1][-len("admin one") :], "admin one")
        self.instance.write(
            "policy.toml",
            (
                POLICY + '[[rooms]]\npattern = "#news"\njoin = ["user"]\n'
                'read = ["admin"]\n'
            ).encode(),
        )
        self.reload()
        self.assertEqual(self.ask("SAY #news two"), ["250 2"])
        self.assertEqual(self.bob.take(), [])
        self.assertEqual(
            self.ask("WHO #news"), ["211-admin", "211-bob", "211 2 in #news"]
        )


class StaleCRLTests(SynchronousTestCase):
    """
    A CRL past its next update: by default the daemon keeps serving and
    warns; with stale-crl = refuse it refuses what the CRL covers.
    """

    def stale(self, instance: Instance) -> None:
        instance.write(
            "crl.pem", instance.ca.crl_pem(next_update=timedelta(minutes=-30))
        )

    def test_stale_crl_keeps_serving_and_warns(self) -> None:
        """
        After a reload with a stale CRL, valid certificates still log in,
        revoked ones listed in it are still refused, and the reply and the
        hourly check both warn.
        """
        log = capture_log(self)
        instance = Instance(self)
        admin = instance.connect(instance.ca.issue("admin"))
        revoked = instance.ca.issue("mallory")
        instance.ca.revoke(revoked)
        self.stale(instance)
        admin.send("RELOAD")
        instance.flush()
        (reply,) = admin.take()[1:]
        self.assertIn(
            "warning: the CRL of CN=secmsg test CA is past its next update", reply
        )
        self.assertIn("still serving", reply)
        self.assertTrue(instance.connect(instance.ca.issue("alice")).greeted)
        self.assertFalse(instance.connect(revoked).greeted)
        self.assertIn("revoked", log[-1])
        CRLFreshnessService(
            instance.daemon.tls, instance.clock, instance.daemon.reloader.recheck
        ).check()
        self.assertIn("is past its next update", log[-1])

    def test_live_session_rechecked_against_a_stale_crl(self) -> None:
        """
        At a reload with a stale CRL, a session it revokes is closed and the
        others stay.
        """
        instance = Instance(self)
        admin = instance.connect(instance.ca.issue("admin"))
        bob_pair = instance.ca.issue("bob")
        bob = instance.connect(bob_pair)
        instance.ca.revoke(bob_pair)
        self.stale(instance)
        admin.send("RELOAD")
        instance.flush()
        self.assertIn("closed bob (revoked)", admin.take()[-1])
        self.assertEqual(bob.take()[-1], "CLOSED revoked")

    def test_refuse_mode_refuses_what_a_stale_crl_covers(self) -> None:
        """
        With stale-crl = refuse, a certificate under a stale CRL is refused
        as revocation status unknown.
        """
        log = capture_log(self)
        instance = Instance(self, refuse_on_stale_crl=True)
        self.stale(instance)
        instance.daemon.reloader.reload()
        self.assertFalse(instance.connect(instance.ca.issue("alice")).greeted)
        self.assertIn("revocation status unknown", log[-1])

    def test_refuse_mode_closes_live_sessions_when_the_crl_goes_stale(self) -> None:
        """
        With stale-crl = refuse, the hourly check closes the sessions a CRL
        that has gone stale covers, as their new handshakes would be.
        """
        instance = Instance(self, refuse_on_stale_crl=True)
        alice = instance.connect(instance.ca.issue("alice"))
        alice.take()
        self.stale(instance)
        instance.daemon.reloader.reload()
        self.assertEqual(alice.take(), [])
        CRLFreshnessService(
            instance.daemon.tls, instance.clock, instance.daemon.reloader.recheck
        ).check()
        instance.flush()
        self.assertEqual(alice.take(), ["CLOSED revocation status unknown"])

    def test_recheck_under_a_stale_crl_still_needs_every_crl(self) -> None:
        """
        A live session under an intermediate CA is closed at a reload whose
        CRL file holds only the intermediate's CRL, stale: the root's CRL
        is missing, as a new handshake would find.
        """
        instance = Instance(self)
        intermediate = instance.ca.intermediate("secmsg issuing CA")
        instance.write("ca.pem", instance.ca.pem + intermediate.pem)
        instance.write("crl.pem", instance.ca.crl_pem() + intermediate.crl_pem())
        admin = instance.connect(instance.ca.issue("admin"))
        instance.daemon.reloader.reload()
        bob = instance.connect(intermediate.issue("bob"))
        self.assertTrue(bob.greeted)
        instance.write(
            "crl.pem", intermediate.crl_pem(next_update=timedelta(minutes=-30))
        )
        admin.send("RELOAD")
        instance.flush()
        self.assertEqual(bob.take()[-1], "CLOSED revocation status unknown")
