"""
C{secmsg listen}'s listener against the real daemon in memory, on a
L{Clock}: a message is written and flushed before it is acknowledged, a
writer that fails means no acknowledgement, the session is kept alive,
and a lost session is mended by connecting again after a growing wait.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.client.api import KEEPALIVE_INTERVAL, Client
from secmsg.client.backoff import STEADY, Backoff
from secmsg.client.jsonlines import json_line, message_record, server_line_record
from secmsg.client.listener import Listener
from secmsg.client.protocol import (
    ClientProtocol,
    ExitStatus,
    Greeting,
    SessionEnded,
)
from secmsg.client.received import Message, show_message
from tests.harness import Instance

WHEN = datetime(2026, 6, 1, 9, 30, 5, tzinfo=UTC)


class RecordingClient(Client):
    """
    A client that notes each acknowledgement in the test's log of events,
    beside the writer's writes and flushes.
    """

    def __init__(
        self,
        events: list[str],
        session: ClientProtocol,
        greeting: Greeting,
        clock: IReactorTime,
    ) -> None:
        super().__init__(session, greeting, clock, 30.0)
        self.events = events

    async def ack(self, message_id: int) -> None:
        self.events.append(f"ack {message_id}")
        await super().ack(message_id)


class Writer:
    """
    Standard output as the listener sees it, noting each write and flush;
    C{failure} is raised by the flush, after the write has gone;
    C{after_flush} is called once a flush is done.
    """

    def __init__(
        self,
        events: list[str],
        failure: OSError | None = None,
        after_flush: Callable[[], None] = lambda: None,
    ) -> None:
        self.events = events
        self.failure = failure
        self.after_flush = after_flush
        self.lines: list[str] = []

    def write(self, text: str, /) -> object:
        self.events.append("write")
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        if self.failure is not None:
            raise self.failure
        self.events.append("flush")
        self.after_flush()


class ListenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.instance = Instance(self)
        self.clock = self.instance.clock
        self.bob = self.instance.ca.issue("bob")
        self.events: list[str] = []
        self.reports: list[str] = []
        self.dials = 0
        self.refusals: list[SessionEnded] = []
        self.sessions: list[ClientProtocol] = []

    async def dial(self) -> Client:
        """
        Log in as bob over TLS in memory, unless a refusal is queued.
        """
        self.dials += 1
        if self.refusals:
            raise self.refusals.pop(0)
        session = self.instance.connect_client(self.clock, self.bob)
        self.sessions.append(session)
        # As api.start does, with a client that notes its acknowledgements.
        greeting = await session.greeted
        session.keep_alive(KEEPALIVE_INTERVAL)
        return RecordingClient(self.events, session, greeting, self.clock)

    def listen(
        self, writer: Writer, backoff: Backoff | None = None
    ) -> defer.Deferred[ExitStatus]:
        listener = Listener(
            self.dial,
            writer,
            lambda message: json_line(message_record(message)),
            self.clock,
            self.reports.append,
            backoff=backoff or Backoff(fraction=lambda: 0.0),
        )
        running = defer.Deferred.fromCoroutine(listener.run())
        self.instance.flush()
        return running

    def send_to_bob(self, text: str = "hello bob") -> None:
        alice = self.instance.connect(self.instance.ca.issue("alice"))
        alice.send(f"MSG bob {text}")
        self.instance.flush()

    def waiting_for_bob(self) -> list[str]:
        """
        What a new session of bob is sent at login: what is still his.
        """
        again = self.instance.connect(self.bob)
        return [line for line in again.take() if not line.startswith("200 ")]

    def test_a_message_is_acknowledged_only_after_its_line_is_flushed(self) -> None:
        """
        The line is written, then flushed, then the message acknowledged;
        once acknowledged, a new session is not sent it again.
        """
        writer = Writer(self.events)
        self.listen(writer)
        self.send_to_bob()
        self.assertEqual(self.events, ["write", "flush", "ack 1"])
        record = json.loads(writer.lines[0])
        self.assertEqual(
            {key: record[key] for key in ("id", "kind", "sender", "room", "text")},
            {
                "id": 1,
                "kind": "direct",
                "sender": "alice",
                "room": None,
                "text": "hello bob",
            },
        )
        self.assertFalse(record["redelivered"])
        self.assertEqual(self.waiting_for_bob(), [])

    def test_a_writer_that_fails_before_flushing_means_no_ack(self) -> None:
        """
        A line written but not flushed (the disk is full) is not
        acknowledged: the listener stops, says why, and the message is
        sent again at the next login.
        """
        writer = Writer(self.events, OSError(errno.ENOSPC, "No space left on device"))
        running = self.listen(writer)
        self.send_to_bob()
        self.assertEqual(self.successResultOf(running), ExitStatus.FAILED)
        self.assertEqual(self.events, ["write"])
        self.assertIn(
            "secmsg: cannot write to standard output: No space left on device",
            self.reports,
        )
        waiting = self.waiting_for_bob()
        self.assertEqual(len(waiting), 1)
        self.assertTrue(waiting[0].startswith("REDELIVERED MSG 1 "))

    def test_a_broken_pipe_stops_quietly_without_ack(self) -> None:
        """
        A reader that has gone (EPIPE) ends the listener with status 0 and
        no words, and the message is not acknowledged.
        """
        writer = Writer(self.events, BrokenPipeError(errno.EPIPE, "Broken pipe"))
        running = self.listen(writer)
        self.send_to_bob()
        self.assertEqual(self.successResultOf(running), ExitStatus.OK)
        self.assertEqual(self.reports, ["secmsg: listening as bob"])
        self.assertNotIn("ack 1", self.events)
        self.assertEqual(len(self.waiting_for_bob()), 1)

    def test_a_line_written_is_not_written_again_when_redelivered(self) -> None:
        """
        A session lost before its ACK was answered: the message comes again
        at the next login, and is acknowledged without a second line.
        """

        def lose_the_first_session() -> None:
            if len(self.sessions) == 1:
                self.sessions[0].transport.abortConnection()

        writer = Writer(self.events, after_flush=lose_the_first_session)
        self.listen(writer)
        self.send_to_bob()
        self.clock.advance(0.5)
        self.instance.flush()
        self.assertEqual(self.dials, 2)
        self.assertEqual(len(writer.lines), 1)
        self.assertEqual(self.events, ["write", "flush", "ack 1", "ack 1"])
        self.assertEqual(self.waiting_for_bob(), [])

    def test_pushes_it_does_not_know_are_ignored(self) -> None:
        """
        A presence line or notice a newer daemon sends is passed over, and
        the messages after it are handed on as usual.
        """
        writer = Writer(self.events)
        running = self.listen(writer)
        self.sessions[0].dataReceived(b"JOINED #lobby carol\nONLINE carol\n")
        self.sessions[0].dataReceived(b"NOTICE something new\n")
        self.send_to_bob()
        self.assertNoResult(running)
        self.assertEqual(len(writer.lines), 1)
        self.assertEqual(self.events, ["write", "flush", "ack 1"])

    def test_the_session_is_kept_alive(self) -> None:
        """
        A listener that only reads is still on its first session an hour
        later, past the daemon's fifteen-minute idle timeout.
        """
        running = self.listen(Writer(self.events))
        for _ in range(60):
            self.clock.advance(60)
            self.instance.flush()
        self.assertNoResult(running)
        self.assertEqual(self.dials, 1)
        self.assertNoResult(self.sessions[0].ended)

    def test_it_connects_again_after_growing_waits(self) -> None:
        """
        While the daemon cannot be reached the waits double (from half a
        second, at the least jitter) and each failure is said; once
        logged in for a minute, the next loss waits the shortest time
        again.
        """
        self.refusals = [
            SessionEnded(ExitStatus.CONNECTION, "cannot connect: refused.")
            for _ in range(3)
        ]
        self.listen(Writer(self.events))
        for wait, dials in [(0.5, 2), (1.0, 3), (2.0, 4)]:
            self.assertEqual(self.dials, dials - 1)
            self.clock.advance(wait - 0.01)
            self.assertEqual(self.dials, dials - 1)
            self.clock.advance(0.01)
            self.instance.flush()
            self.assertEqual(self.dials, dials)
        self.assertEqual(
            [report for report in self.reports if "again" in report],
            [
                f"secmsg: cannot connect: refused; connecting again in {wait} s"
                for wait in ("0.5", "1.0", "2.0")
            ],
        )
        # A session closed at once goes on growing the wait (to 4 s)...
        self.instance.daemon.sessions.close_all("server shutting down")
        self.instance.flush()
        self.clock.advance(3.99)
        self.assertEqual(self.dials, 4)
        self.clock.advance(0.01)
        self.instance.flush()
        self.assertEqual(self.dials, 5)
        # ...and one that lasted a minute starts it again from the shortest.
        self.clock.advance(STEADY)
        self.instance.flush()
        self.instance.daemon.sessions.close_all("server shutting down")
        self.instance.flush()
        self.clock.advance(0.5)
        self.instance.flush()
        self.assertEqual(self.dials, 6)
        self.send_to_bob()
        self.assertEqual(self.events, ["write", "flush", "ack 1"])

    def test_a_kick_or_a_refused_certificate_is_not_mended(self) -> None:
        """
        An operator's KICK ends the listener with status 1 and the words,
        and a refused certificate with status 4: it does not come back.
        """
        running = self.listen(Writer(self.events))
        admin = self.instance.connect(self.instance.ca.issue("admin"))
        admin.send("KICK bob enough")
        self.instance.flush()
        self.assertEqual(self.successResultOf(running), ExitStatus.FAILED)
        self.assertIn("secmsg: kicked by admin: enough", self.reports)
        self.clock.advance(120)
        self.assertEqual(self.dials, 1)
        self.refusals = [
            SessionEnded(ExitStatus.CERTIFICATE_REFUSED, "refused: revoked")
        ]
        refused = self.listen(Writer(self.events))
        self.assertEqual(self.successResultOf(refused), ExitStatus.CERTIFICATE_REFUSED)
        self.assertEqual(self.reports[-1], "secmsg: refused: revoked")


class BackoffTests(SynchronousTestCase):
    def test_waits_double_up_to_the_cap_within_their_jitter(self) -> None:
        """
        Each wait is between half and all of a ceiling that doubles from
        one second to sixty; after a success it starts again.
        """
        least = Backoff(fraction=lambda: 0.0)
        most = Backoff(fraction=lambda: 0.999999)
        ceilings = [1, 2, 4, 8, 16, 32, 60, 60]
        self.assertEqual(
            [least.next_wait() for _ in ceilings], [ceiling / 2 for ceiling in ceilings]
        )
        for ceiling in ceilings:
            self.assertAlmostEqual(most.next_wait(), ceiling, places=3)
        least.reset()
        self.assertEqual(least.next_wait(), 0.5)


class LineFormTests(SynchronousTestCase):
    def test_a_plain_line_is_the_terminal_s_escaped(self) -> None:
        """
        Without --json a message is the terminal client's line: who, where,
        when, and its text with escape sequences shown, not acted on.
        """
        message = Message(
            3, "2026-06-01T09:29:00Z", "room", "eve", "#ops", "\x1b[2Jhi", True
        )
        self.assertEqual(
            show_message(message, WHEN),
            "[09:29:00] #ops <eve> \\x1b[2Jhi (again)",
        )

    @given(st.text())
    def test_a_json_line_drives_no_terminal_and_keeps_the_text(self, text: str) -> None:
        """
        Whatever a message holds, its JSON line is one line with nothing
        escape_controls would escape, and parses back to the same text.
        """
        message = Message(7, "2026-06-01T09:29:00Z", "direct", "eve", None, text, False)
        line = json_line(message_record(message))
        self.assertEqual(wire.escape_controls(line), line)
        self.assertNotIn("\n", line)
        self.assertEqual(json.loads(line)["text"], text)

    def test_server_lines_as_json(self) -> None:
        """
        Replies carry their code and whether they are the last line; a
        message push carries the listener's fields; a push of a kind this
        client does not know is passed on by its word.
        """
        self.assertEqual(
            server_line_record("211-alice"),
            {"reply": 211, "final": False, "text": "alice"},
        )
        self.assertEqual(
            server_line_record("REDELIVERED SAY 4 2026-06-01T09:29:00Z #ops eve hi"),
            {
                "push": "SAY",
                "id": 4,
                "time": "2026-06-01T09:29:00Z",
                "kind": "room",
                "sender": "eve",
                "room": "#ops",
                "text": "hi",
                "redelivered": True,
            },
        )
        self.assertEqual(
            server_line_record("JOINED #ops carol"),
            {"push": "JOINED", "text": "#ops carol"},
        )
        self.assertEqual(
            server_line_record("\x1b[2J hello"), {"push": None, "text": "\x1b[2J hello"}
        )
