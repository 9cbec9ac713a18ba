"""
A handshake that straddles a reload, over real TLS in memory: the client's
Finished is held back while the operator revokes its certificate (or drops
its CA, or trusts it anew) and reloads, by RELOAD or SIGHUP, then let go.
The trust in force when the handshake completes, and again at login, is
what judges it, on the line port and the admin port, under TLS 1.2 and 1.3.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import TLSVersion
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump
from twisted.trial.unittest import SynchronousTestCase

from secmsg.client.tls import client_tls_options
from secmsg.daemon.auth import CertificateChecker, ICertificateCredential
from secmsg.daemon.identity import IdentityRule
from secmsg.daemon.service import SecmsgService
from secmsg.daemon.store.memory import MemoryStore
from tests.certs import CertificateAuthority, Pair
from tests.harness import Instance, LineClient, capture_log
from tests.tls_records import CHANGE_CIPHER_SPEC, split_records

VERSIONS = (TLSVersion.TLSv1_2, TLSVersion.TLSv1_3)


class _QuietHttpClient(Protocol):
    """
    An HTTPS client that sends its request only when told, so that the
    client's last handshake flight holds nothing but the handshake.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason

    def post(self, path: str, body: bytes) -> None:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.transport.write(head.encode() + body)


class ParkedHandshake:
    """
    A client's handshake run up to its last record, the Finished, which is
    held back until L{release}.
    """

    def __init__(self, instance: Instance, pump: IOPump) -> None:
        self._instance = instance
        self._pump = pump
        self._parked = self._run_until_last_flight()

    def _run_until_last_flight(self) -> bytes:
        for _ in range(10):
            self._pump.pump()
            written = b"".join(self._pump.clientIO.stream)
            records = split_records(written)
            if any(record[0] == CHANGE_CIPHER_SPEC for record in records):
                # The client's last flight: all of it goes to the server but
                # its last record, so that the server has judged the
                # certificate and waits for the Finished.
                self._pump.clientIO.stream = [b"".join(records[:-1])]
                self._pump.pump()
                return records[-1]
        raise AssertionError("the client never sent its last flight")

    def release(self) -> None:
        self._pump.clientIO.stream.append(self._parked)
        self._instance.flush()


class StraddlingHandshakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.log = capture_log(self)
        self.instance = Instance(self)
        self.ca = self.instance.ca
        self.alice = self.ca.issue("alice")

    def park(
        self, pair: Pair, version: TLSVersion, client: Protocol, admin: bool = False
    ) -> ParkedHandshake:
        options = client_tls_options(
            "localhost", self.ca.pem, pair.certificate_pem, pair.key_pem, version
        )
        server = self.instance.daemon.admin if admin else None
        pump = self.instance.connect_protocol(client, options, server)
        return ParkedHandshake(self.instance, pump)

    def revoke_alice(self) -> None:
        self.ca.revoke(self.alice)
        self.instance.write("crl.pem", self.ca.crl_pem())

    def reload_by_command(self) -> None:
        admin = self.instance.connect(self.ca.issue("admin"))
        admin.send("RELOAD")
        self.instance.flush()
        self.assertTrue(admin.take()[-1].startswith("200 reloaded"))

    def reload_by_signal(self) -> None:
        service = SecmsgService(
            None,
            None,
            None,
            self.instance.clock,
            self.instance.daemon.reloader.reload,
            MemoryStore(),
        )
        service.reload_on_signal()
        self.assertTrue(any("reload on SIGHUP: reloaded" in line for line in self.log))

    def each_case(self) -> list[tuple[TLSVersion, Callable[[], None]]]:
        return [
            (version, reload)
            for version in VERSIONS
            for reload in (self.reload_by_command, self.reload_by_signal)
        ]

    def test_revoked_during_the_handshake_is_refused_on_the_line_port(self) -> None:
        """
        A handshake whose certificate is revoked by a reload between the
        server's judging it and the client's Finished ends without a
        greeting, with CLOSED revoked, and the refusal is recorded.
        """
        for version, reload in self.each_case():
            with self.subTest(version=version, reload=reload.__name__):
                self.setUp()
                client = LineClient(())
                parked = self.park(self.alice, version, client)
                self.revoke_alice()
                reload()
                parked.release()
                client.send("WHOAMI")
                self.instance.flush()
                self.assertFalse(client.greeted)
                self.assertEqual(client.lines, ["CLOSED revoked"])
                self.assertIsNotNone(client.lost)
                refusals = [line for line in self.log if "at its handshake" in line]
                self.assertEqual(len(refusals), 1)
                self.assertIn("revoked", refusals[0])

    def test_revoked_during_the_handshake_is_refused_on_the_admin_port(self) -> None:
        """
        The same on the admin interface: the request with the revoked
        certificate gets no answer, and the message is not sent.
        """
        for version, reload in self.each_case():
            with self.subTest(version=version, reload=reload.__name__):
                self.setUp()
                bob = self.instance.connect(self.ca.issue("bob"))
                bob.take()
                client = _QuietHttpClient()
                parked = self.park(self.alice, version, client, admin=True)
                self.revoke_alice()
                reload()
                parked.release()
                if client.lost is None:
                    client.post("/v1/messages", b'{"to": "bob", "text": "hi"}')
                    self.instance.flush()
                self.assertNotIn(b"200 OK", client.received)
                self.assertIsNotNone(client.lost)
                self.assertEqual(bob.take(), [])
                self.assertTrue(any("revoked" in line for line in self.log))

    def test_ca_dropped_during_the_handshake_is_refused(self) -> None:
        """
        A reload that removes the CA of a handshake under way refuses it
        with the reason, as it closes that CA's live sessions.
        """
        other = CertificateAuthority("another CA")
        self.instance.write("ca.pem", self.ca.pem + other.pem)
        self.instance.write("crl.pem", self.ca.crl_pem() + other.crl_pem())
        self.reload_by_command()
        for version in VERSIONS:
            with self.subTest(version=version):
                client = LineClient(())
                parked = self.park(other.issue("carol"), version, client)
                self.instance.write("ca.pem", self.ca.pem)
                self.instance.write("crl.pem", self.ca.crl_pem())
                self.reload_by_command()
                parked.release()
                self.assertFalse(client.greeted)
                self.assertEqual(client.lines, ["CLOSED unknown CA"])
                self.instance.write("ca.pem", self.ca.pem + other.pem)
                self.instance.write("crl.pem", self.ca.crl_pem() + other.crl_pem())
                self.reload_by_command()

    def test_a_reload_that_changes_nothing_for_it_lets_it_in(self) -> None:
        """
        A handshake across a reload that does not concern its certificate
        is judged by the new trust and greeted: the recheck refuses only
        what the trust in force refuses.
        """
        for version in VERSIONS:
            with self.subTest(version=version):
                client = LineClient(())
                parked = self.park(self.alice, version, client)
                self.ca.revoke(self.ca.issue("mallory"))
                self.instance.write("crl.pem", self.ca.crl_pem())
                self.reload_by_command()
                parked.release()
                self.assertTrue(client.greeted)

    def test_a_login_after_a_reload_is_judged_by_it(self) -> None:
        """
        A connection whose handshake completed before the reload but whose
        login had not (the portal answers later) is judged again at login.
        """
        waiting = _HoldLogins(self.instance)
        client = self.instance.connect(self.alice)
        self.revoke_alice()
        self.reload_by_signal()
        waiting.release()
        self.instance.flush()
        self.assertFalse(client.greeted)
        self.assertEqual(client.lines, ["CLOSED revoked"])


class _HoldLogins:
    """
    Makes the daemon's portal answer logins only when told, as a checker
    that asks a remote service would.
    """

    credentialInterfaces = (ICertificateCredential,)

    def __init__(self, instance: Instance) -> None:
        self._checker = CertificateChecker(IdentityRule())
        self._held: list[defer.Deferred[None]] = []
        instance.daemon.portal.registerChecker(self)

    def requestAvatarId(
        self, credentials: ICertificateCredential
    ) -> defer.Deferred[str]:
        waiter: defer.Deferred[None] = defer.Deferred()
        self._held.append(waiter)
        return waiter.addCallback(lambda _: self._checker.requestAvatarId(credentials))

    def release(self) -> None:
        for waiter in self._held:
            waiter.callback(None)
