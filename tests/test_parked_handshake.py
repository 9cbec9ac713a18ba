"""
A handshake held open across a reload, against the real daemon: a client
sends its second flight but for its last record, the Finished; the operator
revokes its certificate and sends SIGHUP; then the client sends Finished.
That certificate must not get a session on the line port, nor have a
request answered on the admin port, under TLS 1.3 or TLS 1.2.

The client is Python's ssl module over memory BIOs and a plain loopback
socket, so that the test decides which bytes go on the wire and when.  The
daemon runs as C{twistd secmsg} with both ports, on a PKI made in the test.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.certs import CertificateAuthority, Pair
from tests.harness import temporary_directory
from tests.test_daemon import Daemon
from tests.tls_records import (
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    content_type,
    split_records,
)

DEADLINE = 5.0
"""Seconds one step of a case may take against a daemon on loopback; a
bound that fails the test rather than hang it, not a timing."""

CONFIG = """\
interface = "127.0.0.1"
cert = "server.pem"
key = "server.key"
ca = "ca.pem"
crl = "crl.pem"
policy = "policy.toml"
data-dir = "data"
"""

POLICY = """\
default_roles = ["user"]

[roles.user]
commands = ["HELP", "WHOAMI", "PING", "QUIT", "MSG"]

[identities]
bob = ["user"]
"""

MESSAGE = json.dumps({"to": "bob", "text": "hi"}).encode()
POST_MESSAGE = (
    b"POST /v1/messages HTTP/1.1\r\n"
    b"Host: localhost\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(MESSAGE)).encode() + b"\r\n"
    b"Connection: close\r\n"
    b"\r\n" + MESSAGE
)


class ParkedClient:
    """
    A TLS client on a loopback socket that runs its side of the handshake
    up to its second flight and sends that flight but its last record, the
    Finished, which it keeps until L{send_parked}.

    Under TLS 1.3 the client's handshake is complete in its own eyes once
    it has written that flight; under TLS 1.2 it still waits for the
    server's ChangeCipherSpec and Finished, which L{read_until} takes.

    @ivar address: the client's end, as the daemon's log and audit trail
        name it.
    @ivar flight: the records of the second flight, the Finished last.
    @ivar received: the application data the daemon sent.
    @ivar ended: how the connection ended, in words, or L{None} while it
        lasts.
    """

    def __init__(
        self, port: int, ca: Path, pair: tuple[Path, Path], version: ssl.TLSVersion
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = context.maximum_version = version
        context.load_verify_locations(ca)
        context.load_cert_chain(*pair)
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname="localhost"
        )
        self._version = version
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        host, local_port = self._socket.getsockname()
        self.address = f"{host}:{local_port}"
        self.handshake_done = False
        self.received = b""
        self.ended: str | None = None
        self.flight: list[bytes] = []
        self._parked = self._park()

    def close(self) -> None:
        self._socket.close()

    def _park(self) -> bytes:
        self._handshake_step()
        self._send_pending()
        deadline = time.monotonic() + DEADLINE
        # Under TLS 1.3 the flight is written once the server's Finished is
        # read; under TLS 1.2, at once when its ServerHelloDone is.
        while not (self.handshake_done or self._outgoing.pending):
            if not self._receive(deadline):
                raise AssertionError(f"no server flight: {self.ended}")
            self._handshake_step()
        self.flight = split_records(self._outgoing.read())
        self._check_finished_is_last()
        self._socket.sendall(b"".join(self.flight[:-1]))
        return self.flight[-1]

    def _check_finished_is_last(self) -> None:
        """
        Make sure that what is held back is the Finished and nothing more:
        OpenSSL writes each handshake message in a record of its own.
        """
        types = [content_type(record) for record in self.flight]
        if self._version is ssl.TLSVersion.TLSv1_3:
            # Certificate, CertificateVerify and Finished, encrypted.
            ok = types.count(APPLICATION_DATA) >= 3 and types[-1] == APPLICATION_DATA
        else:
            ok = types[-2:] == [CHANGE_CIPHER_SPEC, HANDSHAKE]
        if not ok:
            raise AssertionError(f"unexpected second flight, record types {types}")

    def _handshake_step(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return
        self.handshake_done = True

    def _send_pending(self) -> None:
        data = self._outgoing.read()
        if not data or self.ended is not None:
            return
        try:
            self._socket.sendall(data)
        except OSError as error:
            self.ended = f"send failed: {error}"

    def _receive(self, deadline: float) -> bool:
        """
        Feed what the socket brings to the TLS object; false once the
        connection has ended or the deadline has passed.
        """
        self._socket.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self._socket.recv(65536)
        except TimeoutError:
            return False
        except OSError as error:
            self.ended = f"receive failed: {error}"
            return False
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        return True

    def send_parked(self, then: bytes) -> None:
        """
        Send the Finished held back, then the application data C{then}:
        under TLS 1.3 in the same write, as a client may once its side of
        the handshake is done; under TLS 1.2 once the daemon's Finished has
        been read, if it comes.
        """
        self._outgoing.write(self._parked)
        if not self.handshake_done:
            self._send_pending()
            self.read_until(lambda client: client.handshake_done)
        if self.ended is None and self.handshake_done:
            self._tls.write(then)
        self._send_pending()

    def read_until(self, done: Callable[[ParkedClient], bool]) -> None:
        """
        Finish the handshake if it is not yet, and read what the daemon
        sends into L{received} until C{done} holds, the connection ends
        (L{ended} says how) or the deadline passes.
        """
        deadline = time.monotonic() + DEADLINE
        while self.ended is None and not done(self):
            try:
                if not self.handshake_done:
                    self._tls.do_handshake()
                    self.handshake_done = True
                    continue
                data = self._tls.read(65536)
                if not data:
                    # The ssl module answers close_notify with no bytes.
                    self.ended = "closed by the daemon"
                self.received += data
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.ended = "closed by the daemon"
            except ssl.SSLError as error:
                self.ended = f"TLS error: {error}"
            finally:
                self._send_pending()
            if self.ended is None and not self._receive(deadline):
                return

    @property
    def lines(self) -> list[str]:
        """
        The whole lines received.
        """
        whole = self.received[: self.received.rfind(b"\n") + 1]
        return whole.decode("utf-8", "replace").splitlines()

    @property
    def successes(self) -> list[str]:
        """
        The lines that say something was done: the greeting and every 2xx
        reply.
        """
        return [line for line in self.lines if line.startswith("2")]


@dataclass
class ParkingInstance:
    """
    A daemon with the line and admin ports, on a PKI made here, whose CRL
    the test can change before it sends SIGHUP.
    """

    directory: Path
    ca: CertificateAuthority
    daemon: Daemon
    admin_port: int

    @classmethod
    def start(cls, testcase: SynchronousTestCase) -> ParkingInstance:
        directory = temporary_directory(testcase)
        ca = CertificateAuthority()
        server = ca.server()
        for name, data in [
            ("server.pem", server.certificate_pem),
            ("server.key", server.key_pem),
            ("ca.pem", ca.pem),
            ("crl.pem", ca.crl_pem()),
            ("policy.toml", POLICY.encode()),
            ("secmsg.toml", CONFIG.encode()),
        ]:
            (directory / name).write_bytes(data)
        daemon = Daemon(testcase, directory, "--admin-port", "0")
        line = daemon.wait_for("admin interface listening on https://")
        instance = cls(directory, ca, daemon, int(line.rsplit(":", 1)[1].rstrip("/")))
        # twistd logs that it listens before its reactor runs, and the
        # daemon takes SIGHUP as a reload only from then on; an answer
        # says it runs.
        instance.probe()
        return instance

    def issue(self, name: str) -> tuple[Pair, tuple[Path, Path]]:
        """
        A client certificate for C{name}, and the files that hold it.
        """
        pair = self.ca.issue(name)
        certificate, key = (
            self.directory / f"{name}.pem",
            self.directory / f"{name}.key",
        )
        certificate.write_bytes(pair.certificate_pem)
        key.write_bytes(pair.key_pem)
        return pair, (certificate, key)

    def revoke(self, pair: Pair) -> None:
        """
        Write a CRL that lists C{pair}; the daemon reads it at its next
        reload.
        """
        self.ca.revoke(pair)
        (self.directory / "crl.pem").write_bytes(self.ca.crl_pem())

    def reload(self) -> str:
        """
        Send SIGHUP and wait for the daemon to log the reload's outcome.
        """
        self.daemon.process.send_signal(signal.SIGHUP)
        line = self.daemon.wait_for("reload on SIGHUP")
        if "failed" in line:
            raise AssertionError(line)
        return line

    def park(
        self, port: int, files: tuple[Path, Path], version: ssl.TLSVersion
    ) -> ParkedClient:
        """
        A client that has sent all of its second flight but the Finished,
        once the daemon has read that flight.
        """
        client = ParkedClient(port, self.directory / "ca.pem", files, version)
        self.probe()
        return client

    def probe(self) -> None:
        """
        Make one request without a certificate on the admin port and read
        its answer (a 401, which the audit trail does not record).

        The daemon's reactor reads every socket that is ready in a turn,
        and this takes several turns, so by its answer the daemon has read
        whatever was sent to it before: the parked flight, whose
        certificate it has judged by then.
        """
        context = ssl.create_default_context(cafile=self.directory / "ca.pem")
        raw = socket.create_connection(("127.0.0.1", self.admin_port), DEADLINE)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = tls.recv(65536)
        if not answer.startswith(b"HTTP/1.1 401 "):
            raise AssertionError(f"the probe got {answer!r}")

    def records(self) -> list[dict[str, Any]]:
        """
        The audit trail so far (it is written unbuffered).
        """
        trail = self.directory / "data" / "audit.log"
        return [json.loads(line) for line in trail.read_text().splitlines()]

    def wait_for_record(self, match: Callable[[dict[str, Any]], bool]) -> dict:
        """
        The first audit record that C{match} accepts, waiting a bounded
        time for it.
        """
        deadline = time.monotonic() + DEADLINE
        while True:
            found = [record for record in self.records() if match(record)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no such audit record in {self.records()}")
            time.sleep(0.02)


def refused_as_revoked(address: str) -> Callable[[dict[str, Any]], bool]:
    """
    Whether an audit record refuses the connection from C{address} as
    revoked (at the handshake or at login: the record's event may be
    either).
    """
    return lambda record: (
        record.get("peer") == address
        and record["event"] != "login"
        and "revoked" in str(record.get("reason", ""))
    )


class _ParkingCase(SynchronousTestCase):
    """
    A daemon of its own for each test, and a client that parks on it.
    """

    def setUp(self) -> None:
        self.instance = ParkingInstance.start(self)

    def park(
        self, name: str, port: int, version: ssl.TLSVersion
    ) -> tuple[Pair, ParkedClient]:
        pair, files = self.instance.issue(name)
        client = self.instance.park(port, files, version)
        self.addCleanup(client.close)
        return pair, client

    def assert_refused_as_revoked(self, client: ParkedClient) -> None:
        """
        The connection ended, the audit trail says it was refused as
        revoked and holds no login from it.
        """
        self.assertIsNotNone(client.ended, "the connection did not end")
        self.instance.wait_for_record(refused_as_revoked(client.address))
        logins = [
            record
            for record in self.instance.records()
            if record["event"] == "login" and record.get("peer") == client.address
        ]
        self.assertEqual(logins, [])


class ParkedLineHandshakeTests(_ParkingCase):
    """
    The line port: a Finished held back across a reload.
    """

    def assert_revoked_while_parked_is_refused(self, version: ssl.TLSVersion) -> None:
        pair, client = self.park("carol", self.instance.daemon.port, version)
        self.instance.revoke(pair)
        self.instance.reload()
        client.send_parked(b"WHOAMI\nMSG bob hi\n")
        client.read_until(lambda c: any(line.startswith("250 ") for line in c.lines))
        self.assertEqual(client.successes, [], "the revoked client got a session")
        self.assert_refused_as_revoked(client)

    def assert_parked_across_reload_is_greeted(self, version: ssl.TLSVersion) -> None:
        _, client = self.park("dave", self.instance.daemon.port, version)
        self.instance.reload()
        client.send_parked(b"WHOAMI\n")
        client.read_until(lambda c: "211 you are dave" in c.lines)
        self.assertEqual(
            [client.lines[0][:40], client.lines[1]],
            ["200 secmsg 0.1.0 ready; you are dave (ro", "211-identity dave"],
        )

    def assert_judged_before_finished(self, version: ssl.TLSVersion) -> None:
        pair, files = self.instance.issue("erin")
        self.instance.revoke(pair)
        self.instance.reload()
        client = ParkedClient(
            self.instance.daemon.port,
            self.instance.directory / "ca.pem",
            files,
            version,
        )
        self.addCleanup(client.close)
        # The Finished stays parked: the refusal comes without it.
        client.read_until(lambda c: False)
        self.assertIn("certificate revoked", str(client.ended))
        self.assert_refused_as_revoked(client)

    def test_revoked_while_parked_is_refused_under_tls13(self) -> None:
        """
        A TLS 1.3 client whose certificate is revoked by a SIGHUP between
        its second flight and its Finished gets no greeting and no answer
        to what it sends behind the Finished; its connection ends, refused
        as revoked in the audit trail.
        """
        self.assert_revoked_while_parked_is_refused(ssl.TLSVersion.TLSv1_3)

    def test_revoked_while_parked_is_refused_under_tls12(self) -> None:
        """
        The same under TLS 1.2, whose Finished follows ChangeCipherSpec.
        """
        self.assert_revoked_while_parked_is_refused(ssl.TLSVersion.TLSv1_2)

    def test_parked_across_reload_is_greeted_under_tls13(self) -> None:
        """
        The control: the same parking across a SIGHUP that revokes nothing
        gets a session that answers, so the parking client works and a
        reload alone refuses nobody.
        """
        self.assert_parked_across_reload_is_greeted(ssl.TLSVersion.TLSv1_3)

    def test_parked_across_reload_is_greeted_under_tls12(self) -> None:
        """
        The control under TLS 1.2.
        """
        self.assert_parked_across_reload_is_greeted(ssl.TLSVersion.TLSv1_2)

    def test_certificate_judged_before_finished_under_tls13(self) -> None:
        """
        The daemon refuses a certificate revoked before the handshake from
        the flight the parking client sends, without its Finished: the
        verify callback has run by then, so the SIGHUP of the tests above
        falls after it, in the window they test.  (The admin port's
        connections come from the same connection creator.)
        """
        self.assert_judged_before_finished(ssl.TLSVersion.TLSv1_3)

    def test_certificate_judged_before_finished_under_tls12(self) -> None:
        """
        The same under TLS 1.2.
        """
        self.assert_judged_before_finished(ssl.TLSVersion.TLSv1_2)


class ParkedAdminHandshakeTests(_ParkingCase):
    """
    The admin port: a Finished held back across a reload, then a request.
    """

    def post_after_parking(
        self, name: str, version: ssl.TLSVersion, revoke: bool
    ) -> ParkedClient:
        pair, client = self.park(name, self.instance.admin_port, version)
        if revoke:
            self.instance.revoke(pair)
        self.instance.reload()
        client.send_parked(POST_MESSAGE)
        # One request a connection: the daemon closes it after its answer.
        client.read_until(lambda c: False)
        return client

    def test_revoked_while_parked_posts_nothing_under_tls13(self) -> None:
        """
        A TLS 1.3 client of the admin port whose certificate is revoked by
        a SIGHUP between its second flight and its Finished never gets 200
        for the POST /v1/messages it sends behind the Finished; its
        connection ends, refused as revoked in the audit trail.
        """
        self.assert_revoked_while_parked_posts_nothing(ssl.TLSVersion.TLSv1_3)

    def test_revoked_while_parked_posts_nothing_under_tls12(self) -> None:
        """
        The same under TLS 1.2.
        """
        self.assert_revoked_while_parked_posts_nothing(ssl.TLSVersion.TLSv1_2)

    def test_parked_across_reload_posts_under_tls13(self) -> None:
        """
        The control: the same parking across a SIGHUP that revokes nothing
        has its message posted.
        """
        self.assert_parked_across_reload_posts(ssl.TLSVersion.TLSv1_3)

    def test_parked_across_reload_posts_under_tls12(self) -> None:
        """
        The control under TLS 1.2.
        """
        self.assert_parked_across_reload_posts(ssl.TLSVersion.TLSv1_2)

    def assert_revoked_while_parked_posts_nothing(
        self, version: ssl.TLSVersion
    ) -> None:
        client = self.post_after_parking("carol", version, revoke=True)
        self.assertFalse(
            client.received.startswith(b"HTTP/1.1 200 "),
            f"the revoked client got {client.received!r}",
        )
        self.assert_refused_as_revoked(client)

    def assert_parked_across_reload_posts(self, version: ssl.TLSVersion) -> None:
        client = self.post_after_parking("dave", version, revoke=False)
        self.assertEqual(
            client.received.split(b"\r\n", 1)[0], b"HTTP/1.1 200 OK", client.received
        )
        self.assertTrue(client.received.endswith(b'{"id": 1}\n'), client.received)
