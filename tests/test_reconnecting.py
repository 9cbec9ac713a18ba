"""
The terminal's session against the real daemon in memory, on a L{Clock}:
a shutdown or a lost connection is mended by connecting again after the
listener's growing waits, and what waited is then shown once; a KICK, a
refused certificate or identity, and the user's QUIT are not mended; a
line typed meanwhile is refused in words.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from secmsg.client.backoff import Backoff, Reconnection
from secmsg.client.display import help_commands
from secmsg.client.protocol import ClientProtocol, ExitStatus, Greeting, SessionEnded
from secmsg.client.reconnecting import BYE, NotConnected, ReconnectingSession
from secmsg.errors import ConfigurationError
from secmsg.wire import PushLine
from tests.harness import Instance


class ReconnectingSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.instance = Instance(self)
        self.clock = self.instance.clock
        self.bob = self.instance.ca.issue("bob")
        self.sessions: list[ClientProtocol] = []
        self.refusals: list[SessionEnded | ConfigurationError] = []
        self.shown: list[PushLine] = []
        self.reports: list[str] = []
        self.on_show = lambda push: None
        self.terminal = ReconnectingSession(
            self.dial,
            self.clock,
            self.begin,
            self.show,
            self.reports.append,
            Reconnection(self.clock, Backoff(fraction=lambda: 0.0)),
        )

    def dial(self) -> defer.Deferred[ClientProtocol]:
        """
        Connect as bob over TLS in memory, unless a refusal is queued.
        """
        if self.refusals:
            refusal = self.refusals.pop(0)
            if isinstance(refusal, ConfigurationError):
                raise refusal
            return defer.fail(refusal)
        session = self.instance.connect_client(self.clock, self.bob)
        self.sessions.append(session)
        return defer.succeed(session)

    async def begin(self, session: ClientProtocol, _: Greeting) -> list[str]:
        # As the console does: what HELP grants decides whether to ACK.
        return help_commands(await session.command(b"HELP"))

    def show(self, push: PushLine) -> None:
        self.shown.append(push)
        self.on_show(push)

    def start(self) -> None:
        """
        The first session, greeted and begun, as the console starts it.
        """
        session = self.successResultOf(self.dial())
        self.instance.flush()
        greeting = self.successResultOf(session.greeted)
        began = defer.Deferred.fromCoroutine(self.terminal.attach(session, greeting))
        self.instance.flush()
        self.successResultOf(began)

    def send_to_bob(self, text: str) -> None:
        alice = self.instance.connect(self.instance.ca.issue("alice"))
        alice.send(f"MSG bob {text}")
        self.instance.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.instance.flush()

    def messages_shown(self) -> list[str]:
        return [push.fields[-1] for push in self.shown if push.kind == "MSG"]

    def waiting_for_bob(self) -> list[str]:
        again = self.instance.connect(self.bob)
        return [line for line in again.take() if not line.startswith("200 ")]

    def test_a_shutdown_is_mended_and_what_waited_is_shown(self) -> None:
        """
        At the server's shutdown the terminal says so and when it tries
        again; a line typed meanwhile is refused, not sent later; once
        connected again it shows the message sent while it was away, and
        acknowledges it.
        """
        self.start()
        self.instance.daemon.sessions.close_all("server shutting down")
        self.instance.flush()
        self.assertEqual(
            self.reports,
            [
                "the server closed the session: server shutting down; "
                "connecting again in 0.5 s"
            ],
        )
        self.assertFalse(self.terminal.connected)
        self.failureResultOf(self.terminal.command(b"WHO"), NotConnected)
        self.send_to_bob("while you were away")
        self.advance(0.49)
        self.assertEqual(len(self.sessions), 1)
        self.advance(0.01)
        self.assertEqual(len(self.sessions), 2)
        self.assertEqual(self.reports[-1], "connected again as bob")
        self.assertTrue(self.terminal.connected)
        self.assertEqual(self.messages_shown(), ["while you were away"])
        self.assertNoResult(self.terminal.over)
        self.assertEqual(self.waiting_for_bob(), [])

    def test_waits_grow_while_the_daemon_is_away(self) -> None:
        """
        A lost connection, then connections refused: the waits double from
        half a second (at the least jitter), and each failure is said.
        """
        self.start()
        self.refusals = [
            SessionEnded(ExitStatus.CONNECTION, "cannot connect: refused.")
            for _ in range(2)
        ]
        self.sessions[0].transport.abortConnection()
        self.instance.flush()
        for wait in (0.5, 1.0, 2.0):
            self.assertEqual(len(self.sessions), 1)
            self.advance(wait)
        self.assertEqual(len(self.sessions), 2)
        self.assertEqual(
            [report.rsplit("; ", 1)[1] for report in self.reports[:3]],
            [f"connecting again in {wait} s" for wait in ("0.5", "1.0", "2.0")],
        )
        self.assertEqual(
            self.reports[1], "cannot connect: refused; connecting again in 1.0 s"
        )
        self.assertTrue(self.terminal.connected)

    def test_which_endings_are_mended(self) -> None:
        """
        A shutdown, an idle timeout and a lost connection are mended; a
        KICK, a certificate the reload refused and an identity the new
        policy refuses are not, and end the terminal with their status.
        """
        for closing, mended, status in [
            (b"CLOSED server shutting down\n", True, None),
            (b"CLOSED idle for 900 s\n", True, None),
            (b"", True, None),
            (b"KICKED admin enough\n", False, ExitStatus.FAILED),
            (b"CLOSED revoked\n", False, ExitStatus.CERTIFICATE_REFUSED),
            (
                b"CLOSED refused by the new policy\n",
                False,
                ExitStatus.CERTIFICATE_REFUSED,
            ),
        ]:
            self.setUp()
            self.start()
            self.sessions[0].dataReceived(closing)
            self.sessions[0].transport.abortConnection()
            self.instance.flush()
            self.advance(120)
            self.assertEqual(len(self.sessions), 2 if mended else 1, closing)
            if mended:
                self.assertNoResult(self.terminal.over)
            else:
                self.assertEqual(
                    self.successResultOf(self.terminal.over).status, status
                )
                self.assertEqual(self.reports, [], closing)

    def test_a_refusal_at_login_again_ends_it(self) -> None:
        """
        Connecting again to a daemon that now refuses our certificate says
        why and ends the terminal with status 4, trying no more.
        """
        self.start()
        self.refusals = [
            SessionEnded(
                ExitStatus.CERTIFICATE_REFUSED,
                "the server refused our certificate: revoked",
            )
        ]
        self.instance.daemon.sessions.close_all("server shutting down")
        self.instance.flush()
        self.advance(0.5)
        ending = self.successResultOf(self.terminal.over)
        self.assertEqual(ending.status, ExitStatus.CERTIFICATE_REFUSED)
        self.assertEqual(
            self.reports[-1], "the server refused our certificate: revoked"
        )
        self.advance(120)
        self.assertEqual(len(self.sessions), 1)

    def test_a_key_file_unusable_at_the_next_dial_ends_it(self) -> None:
        """
        Our files are read again at each dial: one now unusable ends the
        terminal with status 1 and the words naming it, trying no more.
        """
        self.start()
        self.refusals = [ConfigurationError("bob.key", "no such file")]
        self.instance.daemon.sessions.close_all("server shutting down")
        self.instance.flush()
        self.advance(0.5)
        self.assertEqual(
            self.successResultOf(self.terminal.over).status, ExitStatus.FAILED
        )
        self.assertEqual(self.reports[-1], "bob.key: no such file")
        self.advance(120)
        self.assertEqual(len(self.sessions), 1)

    def test_quit_is_not_mended(self) -> None:
        """
        After the user's QUIT the terminal is over, with status 0, and
        connects no more.
        """
        self.start()
        self.terminal.command(b"QUIT")
        self.instance.flush()
        self.assertEqual(self.successResultOf(self.terminal.over).status, ExitStatus.OK)
        self.advance(120)
        self.assertEqual(len(self.sessions), 1)

    def test_quit_or_stop_while_waiting_connects_no_more(self) -> None:
        """
        QUIT typed while connecting again ends the terminal at once with
        status 0; so does stop (Ctrl-C) with what it is given.
        """
        for leave in ("QUIT", "stop"):
            self.setUp()
            self.start()
            self.instance.daemon.sessions.close_all("server shutting down")
            self.instance.flush()
            if leave == "QUIT":
                self.failureResultOf(self.terminal.command(b"quit"), SessionEnded)
                expected = BYE
            else:
                expected = SessionEnded(ExitStatus.INTERRUPTED, "interrupted")
                self.terminal.stop(expected)
            self.assertIs(self.successResultOf(self.terminal.over), expected)
            self.advance(120)
            self.assertEqual(len(self.sessions), 1)

    def test_a_message_shown_is_not_shown_again(self) -> None:
        """
        A session lost before the ACK of a message shown reached the
        daemon: the message comes again at the next login, and is
        acknowledged on that session without being shown twice.
        """

        def lose_the_first_session(push: PushLine) -> None:
            if push.kind == "MSG" and len(self.sessions) == 1:
                self.sessions[0].transport.abortConnection()

        self.on_show = lose_the_first_session
        self.start()
        self.send_to_bob("once")
        self.assertEqual(
            self.waiting_for_bob()[0].split(" ")[:3], ["REDELIVERED", "MSG", "1"]
        )
        self.advance(0.5)
        self.assertEqual(len(self.sessions), 2)
        self.assertEqual(self.messages_shown(), ["once"])
        self.assertEqual(self.waiting_for_bob(), [])
