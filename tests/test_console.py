"""
The console's completion, driven without a terminal, and the console
itself through a pseudo-terminal against a real daemon: Tab completes a
command in the first word, an identity or a room where the grammar has
one and nothing in free text; a message that waited at login prints after
the banner; a daemon stopped and started again is connected to again.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime

import pexpect
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.client.completion import (
    IDENTITY,
    ROOM,
    CommandCompleter,
    Names,
    argument_kinds,
)
from secmsg.client.console import NAMES_REFRESH, _Refresher
from tests.harness import TERMINAL_CONTROLS
from tests.test_client_daemon import secmsg as run_secmsg
from tests.test_daemon import BIN, STARTUP_DEADLINE, Daemon, init_instance


def replies(*lines: str) -> list[wire.ReplyLine]:
    parsed = [wire.parse_server_line(line) for line in lines]
    return [line for line in parsed if isinstance(line, wire.ReplyLine)]


class CompletionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.names = Names()
        self.names.take_who(replies("211-alice", "211-bob", "211 2 online"))
        self.names.take_rooms(replies("211-#ops 2", "211 1 rooms"))
        self.asked: list[frozenset[str]] = []
        self.completer = CommandCompleter(
            ["HELP", "MSG", "JOIN", "HISTORY", "/quit"], self.names, self.asked.append
        )

    def offered(self, typed: str) -> list[str]:
        document = Document(typed)
        found = self.completer.get_completions(document, CompleteEvent())
        return [completion.text for completion in found]

    def test_grammar_names_identities_and_rooms(self) -> None:
        """
        The kinds of argument come from each command's usage line.
        """
        self.assertEqual(argument_kinds("MSG", 0), {IDENTITY})
        self.assertEqual(argument_kinds("msg", 1), frozenset())
        self.assertEqual(argument_kinds("SAY", 0), {ROOM})
        self.assertEqual(argument_kinds("WHO", 0), {ROOM})
        self.assertEqual(argument_kinds("KICK", 0), {IDENTITY})
        self.assertEqual(argument_kinds("KICK", 1), frozenset())
        self.assertEqual(argument_kinds("HISTORY", 0), {IDENTITY, ROOM})
        self.assertEqual(argument_kinds("ACK", 0), frozenset())
        self.assertEqual(argument_kinds("NOSUCH", 0), frozenset())

    def test_command_names_only_in_the_first_word(self) -> None:
        """
        The first word completes to commands, case aside; after MSG alice
        nothing is offered, so Tab cannot write HELP into the message.
        """
        self.assertEqual(self.offered("h"), ["HELP", "HISTORY"])
        self.assertEqual(self.offered("  /q"), ["/quit"])
        self.assertEqual(self.offered("MSG alice "), [])
        self.assertEqual(self.offered("MSG alice hel"), [])
        self.assertEqual(self.offered("KICK bob bo"), [])

    def test_identities_and_rooms_where_the_grammar_has_them(self) -> None:
        """
        An identity after MSG, a room after JOIN, either after HISTORY;
        the console is told which kinds were asked for, to refresh them.
        """
        self.assertEqual(self.offered("MSG "), ["alice", "bob"])
        self.assertEqual(self.offered("msg  b"), ["bob"])
        self.assertEqual(self.offered("JOIN #"), ["#ops"])
        self.assertEqual(self.offered("HISTORY "), ["#ops", "alice", "bob"])
        self.assertEqual(self.asked[0], {IDENTITY})

    def test_only_valid_names_are_kept(self) -> None:
        """
        A WHO or ROOMS item that is no identity or room (an escape
        sequence from a hostile server) is never offered; a message's
        sender and room are kept beside what WHO listed.
        """
        names = Names()
        names.take_who(replies("211-\x1b]0;x\x07", "211-carol", "211 2 online"))
        names.take_rooms(replies("211-#a\x1b[2J 1", "211 1 rooms"))
        self.assertEqual((names.identities, names.rooms), ({"carol"}, set()))
        say = wire.parse_server_line("SAY 7 2026-06-01T09:29:00Z #tea dave hi")
        assert isinstance(say, wire.PushLine)
        names.saw(say)
        self.assertEqual(
            names.of(frozenset([IDENTITY, ROOM])), ["#tea", "carol", "dave"]
        )


class _Session:
    """
    Records the commands sent; each is answered when the test says.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, defer.Deferred[list[wire.ReplyLine]]]] = []

    def command(self, line: bytes) -> defer.Deferred[list[wire.ReplyLine]]:
        answered: defer.Deferred[list[wire.ReplyLine]] = defer.Deferred()
        self.sent.append((line, answered))
        return answered


class RefreshTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.session = _Session()
        self.names = Names()
        self.refresh = _Refresher(
            self.session,
            self.names,
            ["HELP", "WHO", "MSG"],
            lambda: datetime.fromtimestamp(self.clock.seconds(), UTC),
        )

    def test_who_asked_at_most_every_interval(self) -> None:
        """
        Completing an identity asks WHO, whose answer is kept; asking again
        within NAMES_REFRESH seconds sends nothing, and after it, WHO again.
        ROOMS, which the policy does not grant here, is never asked.
        """
        self.refresh(frozenset([IDENTITY, ROOM]))
        ((line, answered),) = self.session.sent
        self.assertEqual(line, b"WHO")
        answered.callback(replies("211-carol", "211 1 online"))
        self.assertEqual(self.names.identities, {"carol"})
        self.clock.advance(NAMES_REFRESH - 1)
        self.refresh(frozenset([IDENTITY]))
        self.assertEqual(len(self.session.sent), 1)
        self.clock.advance(1)
        self.refresh(frozenset([IDENTITY]))
        self.assertEqual([sent for sent, _ in self.session.sent], [b"WHO", b"WHO"])

    def test_refused_who_changes_nothing(self) -> None:
        """
        An error reply to WHO leaves the names as they were.
        """
        self.names.take_who(replies("211-bob", "211 1 online"))
        self.refresh(frozenset([IDENTITY]))
        self.session.sent[0][1].callback(replies("503 try later"))
        self.assertEqual(self.names.identities, {"bob"})


class ConsoleAgainstDaemonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = init_instance(self)
        self.daemon = Daemon(self, self.directory)
        self.address = f"localhost:{self.daemon.port}"

    def as_user(self, name: str) -> list[str]:
        return ["--instance", str(self.directory), "--as", name]

    def secmsg(self, *argv: str, stdin: str = "") -> str:
        result = run_secmsg(*argv, stdin=stdin)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def console(self, name: str) -> pexpect.spawn:
        console = pexpect.spawn(
            str(BIN / "secmsg"),
            ["connect", self.address, *self.as_user(name)],
            encoding="utf-8",
            timeout=STARTUP_DEADLINE,
            dimensions=(24, 100),
            # No cursor position requests: the pseudo-terminal never answers.
            env={**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"},
        )
        self.addCleanup(console.close, force=True)
        return console

    def test_a_daemon_started_again_is_connected_to_again(self) -> None:
        """
        At the daemon's shutdown the terminal says it is connecting again,
        refuses a line typed meanwhile, and once the daemon is started
        again on the same port, connects and shows the message sent while
        it was away; stopped again, Ctrl-C while it waits ends it (130).
        """
        bob = self.console("bob")
        bob.expect("commands: ")
        bob.expect("bob>")
        self.daemon.stop()
        bob.expect("server shutting down; connecting again in ")
        bob.send("PING\r")
        bob.expect("not sent: connecting again")
        # Held still, so that it cannot log in before the message waits.
        os.kill(bob.pid, signal.SIGSTOP)
        try:
            self.daemon = Daemon(self, self.directory, "--port", str(self.daemon.port))
            self.secmsg(
                "send", self.address, *self.as_user("alice"), "--to", "bob", "back"
            )
        finally:
            os.kill(bob.pid, signal.SIGCONT)
        bob.expect("connected again as bob")
        bob.expect(r"\] alice to you: back")
        self.daemon.stop()
        bob.expect("connecting again in ")
        bob.sendcontrol("c")
        bob.expect(pexpect.EOF)
        bob.close()
        self.assertEqual(bob.exitstatus, 130)

    def test_waiting_message_after_the_banner_and_tab_in_free_text(self) -> None:
        """
        A message that waited for bob prints after the commands line; Tab
        completes its sender after MSG and adds nothing after the name, so
        the text bob types is the text alice gets.
        """
        self.secmsg("send", self.address, *self.as_user("alice"), "--to", "bob", "hi")
        console = self.console("bob")
        console.expect("you are bob")
        console.expect("commands: ")
        console.expect(r"\] alice to you: hi")
        console.expect("bob>")
        console.send("MSG al\t")
        # The terminal may redraw between what was typed and what Tab
        # added, so escape sequences may stand between any two letters.
        console.expect(TERMINAL_CONTROLS.join("alice"))
        console.send(" \tback\r")
        console.expect(r"sent \(id")
        console.send("/quit\r")
        console.expect(pexpect.EOF)
        got = self.secmsg("connect", self.address, *self.as_user("alice"), stdin="")
        self.assertRegex(got, r"\nMSG \d+ \S+Z bob back\n")
