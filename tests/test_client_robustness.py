"""
What the client does with a broken or hostile server, over real TLS in
memory on the test clock: a greeting or reply it cannot make sense of, a
message time at the calendar's edge, a server that goes silent, and the
run that fails unexpectedly.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import IOPump
from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.cli.backup import BackupOptions
from secmsg.cli.connection import is_host
from secmsg.client import completion, protocol
from secmsg.client.api import Client, start
from secmsg.client.completion import Names
from secmsg.client.display import show_reply
from secmsg.client.profile_files import add_profile, read_profiles
from secmsg.client.profiles import Profile, Settings, format_profile, parse_profiles
from secmsg.client.protocol import (
    CLOSE_GRACE,
    ClientProtocol,
    ExitStatus,
    SessionEnded,
)
from secmsg.client.script import run_scripted
from secmsg.client.tls import client_tls_options
from secmsg.errors import ConfigurationError, Malformed
from tests.harness import Instance, temporary_directory

GREETING = b"200 secmsg 0.1.0 ready; you are alice (roles: user)\n"


class _Scripted(Protocol):
    """
    A server that greets with C{greeting} and answers each line it hears
    with what C{answer} makes of it (nothing, for a silent server).
    """

    def __init__(
        self, greeting: bytes, answer: Callable[[bytes], bytes] = lambda line: b""
    ) -> None:
        self.greeting = greeting
        self.answer = answer
        self.heard: list[bytes] = []
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.heard.append(line)
            self.transport.write(self.answer(line))


class _HostileServerCase(SynchronousTestCase):
    """
    A client session against a L{_Scripted} server, over TLS in memory.
    """

    def setUp(self) -> None:
        self.instance = Instance(self)
        self.alice = self.instance.ca.issue("alice")

    pump: IOPump

    def session(self, server: Protocol, timeout: float = 30) -> ClientProtocol:
        session = ClientProtocol(self.instance.clock, "localhost", timeout)
        options = client_tls_options(
            "localhost",
            self.instance.ca.pem,
            self.alice.certificate_pem,
            self.alice.key_pem,
        )
        pair = self.instance.ca.server()
        certificate = PrivateCertificate.loadPEM(pair.certificate_pem + pair.key_pem)
        factory = TLSMemoryBIOFactory(
            certificate.options(),
            False,
            Factory.forProtocol(lambda: server),
            self.instance.clock,
        )
        self.pump = self.instance.connect_protocol(session, options, factory)
        self.instance.flush()
        return session

    def mute_the_server(self) -> None:
        """
        From now on nothing the server sends arrives, its TLS close_notify
        included, though the connection stays open: a server gone silent.
        """
        server = self.pump.serverIO
        server.write = lambda data: None  # type: ignore[method-assign]
        server.loseConnection = lambda: None  # type: ignore[method-assign]

    def client(self, server: Protocol, timeout: float = 30) -> Client:
        started = defer.Deferred.fromCoroutine(
            start(self.instance.clock, self.session(server, timeout), timeout, None)
        )
        self.instance.flush()
        return self.successResultOf(started)


class HostileGreetingTests(SynchronousTestCase):
    def test_a_rate_of_thousands_of_digits_is_no_rate(self) -> None:
        """
        Guards against a greeting whose burst has more digits than Python
        converts, which raised ValueError out of the scripted mode.
        """
        greeting = "secmsg ready; you are a (roles: r); rate 1/s, burst " + "9" * 5000
        self.assertIsNone(wire.parse_greeting_rate(greeting + ", 1 left"))

    def test_an_absurd_rate_is_clamped(self) -> None:
        """
        Guards against a greeting's tiny rate holding a script's first
        command back for days, and a huge burst being believed.
        """
        greeting = "secmsg ready; you are a (roles: r); "
        self.assertEqual(
            wire.parse_greeting_rate(greeting + "rate 0.000001/s, burst 1, 0 left"),
            (wire.SLOWEST_GREETING_RATE, 1, 0),
        )
        self.assertEqual(
            wire.parse_greeting_rate(greeting + "rate 5/s, burst 999999999, 999 left"),
            (5.0, wire.LARGEST_GREETING_BURST, 999),
        )


class HostileIdentityTests(_HostileServerCase):
    def test_a_greeting_naming_no_identity_is_refused(self) -> None:
        """
        Guards against an identity with invisible or bidirectional
        characters from the greeting reaching the console's prompt (and a
        program's L{Client.identity}) raw.
        """
        for name in ("al\u202eice", "bob\u200b", "\x1b[2Jeve"):
            greeting = f"200 secmsg ready; you are {name} (roles: user)\n"
            session = self.session(_Scripted(greeting.encode()))
            ending = self.failureResultOf(session.greeted, SessionEnded).value
            self.assertEqual(ending.status, ExitStatus.FAILED)
            self.assertIn("which is not an identity's name", ending.words)
            self.assertEqual(wire.escape_controls(ending.words), ending.words)


class HostileReplyTests(_HostileServerCase):
    def test_a_sent_reply_without_an_id_is_malformed(self) -> None:
        """
        Guards against a 250 reply whose first word is not a number raising
        ValueError out of L{Client.send}.
        """
        client = self.client(_Scripted(GREETING, lambda line: b"250 soon\n"))
        sent = defer.Deferred.fromCoroutine(client.send("bob", "hi"))
        self.instance.flush()
        failure = self.failureResultOf(sent, Malformed)
        self.assertIn("gives no message id: soon", str(failure.value))


class SilentServerTests(_HostileServerCase):
    def test_a_script_unanswered_within_the_timeout_exits_3(self) -> None:
        """
        Guards against the scripted mode waiting forever for the reply of a
        server that greets and then goes silent.
        """
        session = self.session(_Scripted(GREETING), timeout=3)
        err = io.StringIO()

        def attach(feeder: Protocol) -> None:
            feeder.makeConnection(StringTransport())
            feeder.dataReceived(b"WHO\n")
            feeder.connectionLost()

        ran = defer.Deferred.fromCoroutine(
            run_scripted(
                session, attach, io.StringIO(), err, self.instance.clock, print, 3
            )
        )
        self.instance.flush()
        self.mute_the_server()
        self.instance.clock.advance(3)
        self.instance.flush()
        self.assertNoResult(ran)
        self.instance.clock.advance(CLOSE_GRACE)
        self.instance.flush()
        ending = self.failureResultOf(ran, SessionEnded).value
        self.assertEqual(ending.status, ExitStatus.CONNECTION)
        self.assertEqual(ending.words, "no reply from the server within 3 seconds")

    def test_closing_drops_a_server_that_never_closes_tls(self) -> None:
        """
        Guards against a closed session waiting forever for the close_notify
        of a server that keeps the connection open without a word, which
        kept listen from exiting on SIGTERM.
        """
        session = self.session(_Scripted(GREETING))
        self.mute_the_server()
        session.close()
        self.instance.flush()
        self.instance.clock.advance(CLOSE_GRACE - 1)
        self.instance.flush()
        self.assertNoResult(session.ended)
        self.instance.clock.advance(1)
        self.instance.flush()
        ending = self.successResultOf(session.ended)
        self.assertEqual((ending.status, ending.words), (ExitStatus.OK, "bye"))

    def test_a_program_s_close_ends_though_the_server_is_silent(self) -> None:
        """
        Guards against L{Client.close} bounding only its QUIT and then
        waiting forever for a silent server to close TLS.
        """
        client = self.client(_Scripted(GREETING), timeout=3)
        self.mute_the_server()
        closed = defer.Deferred.fromCoroutine(client.close())
        # Three seconds for QUIT, then a grace of the timeout's three.
        self.instance.clock.advance(3)
        self.instance.flush()
        self.instance.clock.advance(2)
        self.instance.flush()
        self.assertNoResult(closed)
        self.instance.clock.advance(1)
        self.instance.flush()
        self.successResultOf(closed)


def _long_listing(line: bytes) -> bytes:
    """
    A ROOMS reply of five rooms, and a PING's reply.
    """
    if line == b"ROOMS":
        return b"".join(b"210-#r%d 1\n" % n for n in range(5)) + b"210 5 rooms\n"
    return b"200 PONG\n"


class LongReplyTests(_HostileServerCase):
    def test_an_over_long_reply_is_cut_and_the_session_goes_on(self) -> None:
        """
        Guards against one reply of more lines than the client keeps (a
        user in very many rooms) ending the session: the rest is read and
        counted, and the next command is answered.
        """
        self.patch(protocol, "MAX_REPLY_LINES", 3)
        session = self.session(_Scripted(GREETING, _long_listing))
        rooms = session.command(b"ROOMS")
        self.instance.flush()
        reply = self.successResultOf(rooms)
        self.assertEqual(
            [line.text for line in reply], ["#r0 1", "#r1 1", "#r2 1", "5 rooms"]
        )
        self.assertEqual(reply.cut, 2)
        self.assertEqual(show_reply(reply, reply.cut)[-1], "  (2 more lines not shown)")
        pinged = session.command(b"PING")
        self.instance.flush()
        self.assertEqual(self.successResultOf(pinged)[-1].code, 200)
        self.assertFalse(session.ended.called)


class CompletionNamesTests(SynchronousTestCase):
    def test_names_are_capped_dropping_the_least_recently_seen(self) -> None:
        """
        Guards against the names kept for completion growing without end
        (a WHO of a million made one Tab take seconds).
        """
        self.patch(completion, "MAX_NAMES", 3)
        names = Names()
        names.take_who([wire.ReplyLine(210, n, False) for n in ("a", "b", "c", "3")])
        names.saw(wire.parse_server_line(f"MSG 7 {_SENT} a hi"))
        names.take_who(
            [wire.ReplyLine(210, "d", False), wire.ReplyLine(210, "1", True)]
        )
        self.assertEqual(names.identities, {"a", "c", "d"})


_SENT = "2026-06-01T09:29:00Z"


def _profile(cert: str) -> Profile:
    return Profile(
        "work", Settings("localhost", Path(cert), Path("/k.key"), Path("/ca.pem"))
    )


class ProfileWritingTests(SynchronousTestCase):
    def test_a_path_past_ascii_is_written_in_ascii_and_reads_back(self) -> None:
        """
        Guards against profile add writing characters raw that TOML then
        refuses to read (DEL, say), which broke the whole client.toml.
        """
        profile = _profile("/certs/caf\u00e9\u202e.pem")
        text = format_profile(profile)
        self.assertTrue(text.isascii())
        where = Path("/home/u/.config/secmsg/client.toml")
        self.assertEqual(parse_profiles(text, where), {"work": profile})

    def test_a_path_with_a_control_or_not_utf8_is_refused(self) -> None:
        """
        Guards against profile add writing a file it cannot read back (a
        DEL in a path) or crashing on a path that is not UTF-8: either is
        refused in words, and the file is left as it was.
        """
        path = temporary_directory(self) / "client.toml"
        add_profile(path, Profile("home", Settings("localhost")), replace=False)
        before = path.read_bytes()
        for cert in ("/c\x7f.pem", "/c\udcff.pem"):
            with self.assertRaises(ConfigurationError) as caught:
                add_profile(path, _profile(cert), replace=False)
            self.assertIn("holds a control character or bytes", str(caught.exception))
            self.assertTrue(str(caught.exception).isascii())
        self.assertEqual(path.read_bytes(), before)
        self.assertEqual(list(read_profiles(path)), ["home"])

    def test_an_ipv6_scope_is_an_interface_name(self) -> None:
        """
        Guards against a scoped IPv6 address taking any text after its %.
        """
        self.assertTrue(is_host("fe80::1%eth0"))
        self.assertTrue(is_host("fe80::1%2"))
        for bad in ("fe80::1%eth0 x", "fe80::1%\x1b[2J", "fe80::1%a/b", "fe80::1%"):
            self.assertFalse(is_host(bad), bad)


_FAILING_RUN = """
from secmsg.client.connect import run_reactor

async def work(reactor):
    raise RuntimeError("boom")

raise SystemExit(run_reactor(work, print))
"""


class UnexpectedFailureTests(SynchronousTestCase):
    def test_an_unexpected_failure_exits_1_not_interrupted(self) -> None:
        """
        Guards against an unexpected exception being reported as an
        interruption with status 130.
        """
        run = subprocess.run(
            [sys.executable, "-c", _FAILING_RUN],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(run.returncode, ExitStatus.FAILED, run.stderr)
        self.assertIn("secmsg: unexpected failure: boom", run.stdout)
        self.assertNotIn("interrupted", run.stdout)


class BackupServerNameTests(SynchronousTestCase):
    def test_backup_checks_no_profile_s_server_name(self) -> None:
        """
        Guards against backup --profile checking the admin interface's
        certificate against the profile's server-name, which is its
        messaging server's; --server-name on the command line still counts.
        """
        config = temporary_directory(self)
        files = temporary_directory(self)
        (config / "secmsg").mkdir()
        (config / "secmsg" / "client.toml").write_text(
            f'[work]\nserver = "chat.example:7500"\ncert = "{files}/a.pem"\n'
            f'key = "{files}/a.key"\nca = "{files}/ca.pem"\n'
            'server-name = "chat.internal"\n'
        )
        environment = {"XDG_CONFIG_HOME": str(config), "HOME": "/nowhere"}
        for extra, expected in [([], None), (["--server-name", "admin.x"], "admin.x")]:
            options = BackupOptions()
            options.environment = environment
            argv = ["--config", "d.toml", "--profile", "work", *extra, "nightly"]
            options.parseOptions(argv)
            self.assertEqual(options["server-name"], expected)
