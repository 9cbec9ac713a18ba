"""
What the README promises of the store, shown on the real daemon: a message
confirmed with 250 survives the daemon being killed with SIGKILL in the
middle of a stream of messages, is delivered after the restart, and once
acknowledged is never delivered again.
"""

from __future__ import annotations

import contextlib
import re
import select
import ssl
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.test_daemon import STARTUP_DEADLINE, Daemon, init_instance, lift_rate

SENT = 20_000
"""Messages alice sends in one stream: far more than the daemon can take
between the last reply read and the kill, so that it dies mid-stream."""

KILL_AFTER = 40
"""Replies alice reads before the daemon is killed; the rest are in flight."""

_PUSH = re.compile(r"(?:REDELIVERED )?MSG (\d+) \S+ alice (.*)")


def stream_until_killed(
    connection: ssl.SSLSocket, data: bytes, kill: Callable[[], None]
) -> set[int]:
    """
    Send C{data} while reading replies, on one thread (an SSL connection
    must not be read and written from two); once L{KILL_AFTER} replies have
    come, C{kill} the daemon, and read on until the connection ends.

    @return: the ids of every 250 read.
    """
    connection.setblocking(False)
    unsent = memoryview(data)
    buffer = b""
    confirmed: set[int] = set()
    killed = False
    while True:
        writers = [connection] if unsent and not killed else []
        readable, writable, _ = select.select(
            [connection], writers, [], STARTUP_DEADLINE
        )
        if not readable and not writable:
            raise AssertionError("the daemon neither read nor answered")
        if writable:
            with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                unsent = unsent[connection.send(unsent[:16384]) :]
        if not readable:
            continue
        try:
            chunk = connection.recv(65536)
            while connection.pending():
                chunk += connection.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            continue
        except OSError:
            return confirmed
        if not chunk:
            return confirmed
        *lines, buffer = (buffer + chunk).split(b"\n")
        confirmed.update(int(line.split()[1]) for line in lines if line[:4] == b"250 ")
        if len(confirmed) >= KILL_AFTER and not killed:
            kill()
            killed = True


class CrashTests(SynchronousTestCase):
    daemon_flags: tuple[str, ...] = ()
    """What each daemon is started with besides its instance: none for
    SQLite in the data directory."""

    def test_kill_9_loses_no_confirmed_message(self) -> None:
        """
        alice sends a burst of messages to bob, who is offline; the daemon
        is SIGKILLed after some of the 250s.  After a restart, bob gets
        every message whose 250 alice saw, in order; he acknowledges them;
        after another kill and restart he gets none of them again.
        """
        directory = init_instance(self)
        lift_rate(directory)
        daemon = self.start_daemon(directory)
        alice = daemon.client("alice")
        with alice:
            with alice.makefile("rb") as lines:
                self.assertIn(b"you are alice", lines.readline())
            stream = b"".join(b"MSG bob message %d\n" % n for n in range(SENT))
            confirmed = stream_until_killed(alice, stream, daemon.process.kill)
        daemon.process.wait()
        self.assertGreaterEqual(len(confirmed), KILL_AFTER)
        self.assertLess(len(confirmed), SENT, "the kill came after the stream")

        received = self.log_in_as_bob(self.start_daemon(directory), confirmed)
        self.assertEqual(list(received), sorted(received))
        self.assertLessEqual(confirmed, set(received))
        # Each id carries the text sent with it: ids were given in order.
        for message_id, text in received.items():
            self.assertEqual(text, f"message {message_id - 1}")

        self.assertEqual(self.log_in_as_bob(self.start_daemon(directory), set()), {})

    def start_daemon(self, directory: Path) -> Daemon:
        return Daemon(self, directory, *self.daemon_flags)

    def log_in_as_bob(self, daemon: Daemon, expected: set[int]) -> dict[int, str]:
        """
        Log in as bob, take messages until every expected one has come,
        acknowledge every message he has, and kill the daemon.

        @return: the text of each message received, by id.
        """
        bob = daemon.client("bob")
        received: dict[int, str] = {}
        with bob, bob.makefile("rb") as lines:
            self.assertIn(b"you are bob", lines.readline())
            # Answered after the first page of what waited for bob: the
            # store works in order, and that page was asked for at login.
            bob.sendall(b"HISTORY carol 1\n")
            reply = self.take_pushes(lines, received)
            self.assertEqual(reply, b"211 0 messages\n")
            while not expected <= set(received):
                match = _PUSH.fullmatch(lines.readline().decode().rstrip("\n"))
                self.assertIsNotNone(match)
                received[int(match.group(1))] = match.group(2)
            # Every id alice could have had is at most SENT.
            bob.sendall(f"ACK UPTO {SENT}\n".encode())
            reply = self.take_pushes(lines, received)
            self.assertTrue(reply.startswith(b"200 acknowledged "), reply)
        daemon.process.kill()
        daemon.process.wait()
        return received

    def take_pushes(self, lines, received: dict[int, str]) -> bytes:  # type: ignore[no-untyped-def]
        """
        Record the pushes before the next reply, and return that reply.
        """
        line = lines.readline()
        while line.startswith((b"MSG ", b"REDELIVERED ")):
            match = _PUSH.fullmatch(line.decode().rstrip("\n"))
            received[int(match.group(1))] = match.group(2)
            line = lines.readline()
        return line


class MembershipTests(SynchronousTestCase):
    daemon_flags: tuple[str, ...] = ()
    """What each daemon is started with besides its instance."""

    def start_daemon(self, directory: Path) -> Daemon:
        return Daemon(self, directory, *self.daemon_flags)

    def test_membership_and_what_was_missed_outlive_a_kill(self) -> None:
        """
        Room membership is the identity's and lasts: bob joins #ops and
        leaves; alice says three things there; the daemon is SIGKILLed and
        restarted; bob's next session is in #ops, gets the three, in
        order, before anything newer, and WHO #ops names both members.
        """
        directory = init_instance(self)
        daemon = self.start_daemon(directory)
        with daemon.client("bob") as bob, bob.makefile("rb") as lines:
            lines.readline()
            bob.sendall(b"JOIN #ops\n")
            self.assertEqual(lines.readline(), b"200 joined #ops\n")
        with daemon.client("alice") as alice, alice.makefile("rb") as lines:
            lines.readline()
            alice.sendall(b"JOIN #ops\n")
            self.assertEqual(lines.readline(), b"200 joined #ops\n")
            for n in range(3):
                alice.sendall(b"SAY #ops said %d\n" % n)
                self.assertTrue(lines.readline().startswith(b"250 "))
        daemon.process.kill()
        daemon.process.wait()
        daemon = self.start_daemon(directory)
        with daemon.client("bob") as bob, bob.makefile("rb") as lines:
            self.assertIn(b"you are bob", lines.readline())
            bob.sendall(b"WHO #ops\n")
            said = [lines.readline().decode().split(" ", 5) for _ in range(3)]
            self.assertEqual(
                [(words[0], words[3], words[5]) for words in said],
                [("SAY", "#ops", f"said {n}\n") for n in range(3)],
            )
            self.assertEqual(
                [lines.readline() for _ in range(3)],
                [b"211-alice\n", b"211-bob\n", b"211 2 in #ops\n"],
            )
