"""
The line protocol: framing, replies, authorization and routing, driven on
string transports.
"""

from __future__ import annotations

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from secmsg import wire
from secmsg.daemon.auth import ICertificateCredential
from secmsg.daemon.policy import ADMIN_ONLY_COMMANDS
from secmsg.daemon.protocol import CLOSE_GRACE
from secmsg.daemon.reload import ReloadReport
from secmsg.errors import ConfigurationError
from tests.harness import capture_log
from tests.sessions import STAMP, Network

GREETING = (
    "200 secmsg 0.1.0 ready; you are {} (roles: {}); "
    "protocol 1.0; capabilities store,ack-upto,history,rooms,broadcast,presence; "
    "rate 1000000/s, burst 3000000, 3000000 left"
)


class GreetingAndHelpTests(SynchronousTestCase):
    def test_greeting_names_identity_and_roles(self) -> None:
        """
        The first line a session gets is the greeting: who, with which
        roles, and at what rate it may send, so that a client can pace
        itself.
        """
        session = Network().connect("alice")
        self.assertEqual(session.take(), [GREETING.format("alice", "user")])

    def test_session_state_is_kept_out_of_a_dict_of_its_own(self) -> None:
        """
        A logged-in session's dictionary holds only what Twisted sets on a
        protocol; the rest is in slots, since a daemon holds thousands of
        idle sessions and a dictionary per session cost over a kilobyte.
        """
        session = Network().connect("alice")
        self.assertLessEqual(
            set(vars(session.protocol)), {"factory", "transport", "connected"}
        )

    def test_logged_in_session_keeps_a_fresh_copy_of_its_leaf(self) -> None:
        """
        From login on, a session keeps its leaf as a copy of the same
        certificate, not the one the verify callback parsed its names and
        extensions on: an idle session must not hold what checking parsed.
        """
        network = Network()
        verified = network.ca.issue("alice").certificate
        self.assertTrue(verified.extensions)  # parsed, as the verify callback does
        session = network.connect("alice", certificate=verified)
        self.assertIn("you are alice", session.take()[0])
        self.assertEqual(session.protocol.certificate, verified)
        self.assertIsNot(session.protocol.certificate, verified)
        self.assertIs(
            session.protocol.certificate_chain[0], session.protocol.certificate
        )

    def test_handshake_done_lets_go_of_the_verify_callback(self) -> None:
        """
        Once its handshake is done, a session's TLS connection holds no
        verify callback (nor the verifier and verdict behind it), which
        pyOpenSSL would otherwise keep for as long as the session lasts.
        """
        session = Network().connect("alice")
        self.assertIsNone(session.transport.verify_callback)

    def test_help_lists_exactly_the_permitted_commands(self) -> None:
        """
        HELP lists every line command of the avatar's set and nothing else,
        for each role of the policy.
        """
        network = Network()
        for identity in ("carol", "alice", "admin"):
            session = network.connect(identity)
            session.take()
            lines = session.send("HELP")
            listed = {line[4:].split()[0] for line in lines[:-1]}
            # METRICS has no line; the admin interface is where it is used.
            self.assertEqual(
                listed, set(session.protocol.avatar.commands) - ADMIN_ONLY_COMMANDS
            )
            self.assertEqual(lines[-1], f"211 {len(listed)} commands")
            self.assertTrue(all(line.startswith("211-") for line in lines[:-1]))

    def test_help_columns_line_up(self) -> None:
        """
        HELP's summaries start in one column, past the longest usage and
        two spaces, whatever the commands listed.
        """
        admin = Network().connect("admin")
        admin.take()
        lines = admin.send("HELP")[:-1]
        specs = [wire.COMMANDS[line[4:].split()[0]] for line in lines]
        columns = {
            line.index(spec.summary) for line, spec in zip(lines, specs, strict=True)
        }
        widest = max(len(spec.usage) for spec in specs)
        self.assertEqual(columns, {len("211-") + widest + 2})
        for line, spec in zip(lines, specs, strict=True):
            self.assertEqual(line[4:].split("  ")[0], spec.usage)

    def test_whoami_lists_certificate_and_grant(self) -> None:
        """
        WHOAMI shows identity, roles, commands, subject and expiry.
        """
        session = Network().connect("alice")
        session.take()
        lines = session.send("WHOAMI")
        self.assertEqual(lines[0], "211-identity alice")
        self.assertEqual(lines[1], "211-roles user")
        self.assertTrue(lines[2].startswith("211-commands HELP,WHOAMI,WHO,PING"))
        self.assertEqual(lines[3], "211-subject CN=alice")
        self.assertTrue(lines[5].startswith("211-expires 20"))
        self.assertEqual(lines[-1], "211 you are alice")


class AliceAndBob(SynchronousTestCase):
    """
    alice and bob logged in with their greetings read, the log captured.
    """

    def setUp(self) -> None:
        self.log = capture_log(self)
        self.network = Network()
        self.alice = self.network.connect("alice")
        self.bob = self.network.connect("bob")
        self.alice.take()
        self.bob.take()


class RefusalTests(AliceAndBob):
    def test_command_outside_the_role_is_403_and_logged(self) -> None:
        """
        A command outside the avatar's set is refused with 403 naming the
        verb, the identity and the rule, and the denial is logged.
        """
        self.assertEqual(
            self.alice.send("KICK bob"),
            ["403 KICK not permitted for alice: not granted by role user"],
        )
        self.assertEqual(self.bob.take(), [])
        self.assertTrue(any("denied KICK to alice" in line for line in self.log))

    def test_unknown_verb_is_405(self) -> None:
        """
        An unknown verb gets 405, echoed only when it is a plain word.
        """
        self.assertEqual(self.alice.send("FROB x"), ["405 unknown command FROB"])
        self.assertEqual(self.alice.send("FR0B x"), ["405 unknown command"])

    def test_malformed_arguments_are_400_with_usage(self) -> None:
        """
        Arguments that do not fit the usage get 400 with the usage.
        """
        self.assertEqual(
            self.alice.send("MSG bob"), ["400 usage: MSG <identity> <text>"]
        )
        self.assertEqual(self.alice.send("JOIN ops"), ["400 usage: JOIN #room"])
        self.assertEqual(self.alice.send("PING now"), ["400 usage: PING"])
        self.assertEqual(
            self.alice.send("MSG b@d!name hi"), ["400 usage: MSG <identity> <text>"]
        )

    def test_invalid_utf8_is_400(self) -> None:
        """
        A line that is not UTF-8 gets 400 and is not relayed.
        """
        self.assertEqual(self.alice.send(b"MSG bob caf\xe9\n"), ["400 invalid UTF-8"])
        self.assertEqual(self.bob.take(), [])

    def test_control_characters_are_400_and_never_relayed(self) -> None:
        """
        Text with an ANSI escape, a C1 control, DEL or a bidi override is
        refused and never reaches the recipient.
        """
        for text in ("\x1b[2J", "\u009b31m", "a\x7fb", "\u202eevil", "bell\x07"):
            reply = self.alice.send(f"MSG bob {text}".encode() + b"\n")
            self.assertEqual(reply, ["400 control characters are not allowed"])
        self.assertEqual(self.bob.take(), [])

    def test_tab_is_allowed_in_text(self) -> None:
        """
        TAB is the one C0 character text may hold.
        """
        self.assertEqual(self.alice.send("MSG bob a\tb"), ["250 1"])
        self.assertEqual(self.bob.take(), [f"MSG 1 {STAMP} alice a\tb"])

    def test_overlong_line_gets_one_413_and_session_stays_usable(self) -> None:
        """
        A line past the limit, even when it arrives in pieces, gets one 413;
        its rest is discarded and the next line is answered.
        """
        replies = []
        for _ in range(10):
            replies += self.alice.send(b"x" * 1000)
        replies += self.alice.send(b"tail\nPING\n")
        self.assertEqual(
            replies, ["413 line too long (at most 4096 bytes)", "200 PONG"]
        )

    def test_line_at_the_limit_is_accepted(self) -> None:
        """
        A line of exactly the limit, CRLF excluded, is a line like any other.
        """
        line = b"MSG bob " + b"y" * (wire.MAX_LINE_LENGTH - 8)
        self.assertEqual(self.alice.send(line + b"\r\n"), ["250 1"])

    def test_internal_error_is_500_and_session_survives(self) -> None:
        """
        A fault inside a handler gets 500, is logged, and the session goes on.
        """

        def broken(dry: bool) -> ReloadReport:
            raise RuntimeError("boom")

        network = Network(reload=broken)
        admin = network.connect("admin")
        admin.take()
        self.assertEqual(admin.send("RELOAD"), ["500 internal error"])
        self.assertEqual(admin.send("PING"), ["200 PONG"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failed_reload_is_5xx_with_reason(self) -> None:
        """
        A reload whose files are bad says why, and the session goes on.
        """

        def bad(dry: bool) -> ReloadReport:
            raise ConfigurationError("policy.toml", "inheritance cycle: a -> a")

        admin = Network(reload=bad).connect("admin")
        admin.take()
        self.assertEqual(
            admin.send("RELOAD"),
            [
                "500 reload failed, configuration unchanged: "
                "policy.toml: inheritance cycle: a -> a"
            ],
        )


class FramingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.alice = Network().connect("alice")
        self.alice.take()

    def test_pipelined_commands_answered_in_order(self) -> None:
        """
        Commands sent together get their replies in order, one each.
        """
        self.assertEqual(
            self.alice.send(b"ping\r\nWHO\nPING\n"),
            ["200 PONG", "211-alice", "211 1 online", "200 PONG"],
        )

    def test_blank_lines_are_ignored(self) -> None:
        """
        A blank line gets no reply.
        """
        self.assertEqual(self.alice.send(b"\n \r\n\t\nPING\n"), ["200 PONG"])

    def test_quit_closes_after_reply(self) -> None:
        """
        QUIT gets 221 and the server closes; later lines are not answered.
        """
        self.assertEqual(self.alice.send(b"QUIT\nPING\n"), ["221 bye"])
        self.assertTrue(self.alice.closed)

    def test_early_bytes_are_answered_after_greeting(self) -> None:
        """
        Bytes that arrive before login are held and answered after it.
        """
        session = Network().connect("alice", early=b"PING\nWHO\n")
        self.assertEqual(
            session.take(),
            [GREETING.format("alice", "user"), "200 PONG", "211-alice", "211 1 online"],
        )

    def test_too_many_early_bytes_drop_the_connection(self) -> None:
        """
        A peer that floods before its login completes is dropped, unanswered.
        """
        capture_log(self)
        network = Network()
        session = network.connect("alice", early=b"x" * 70000)
        self.assertEqual(session.take(), [])
        self.assertTrue(session.transport.disconnecting)


@implementer(ICredentialsChecker)
class PendingChecker:
    """
    A checker whose answer the test gives when it chooses, as a checker
    that looks identities up elsewhere would.
    """

    credentialInterfaces = (ICertificateCredential,)

    def __init__(self) -> None:
        self.pending: Deferred[str] = Deferred()

    def requestAvatarId(self, credentials: ICertificateCredential) -> Deferred[str]:
        return self.pending


class SlowLoginTests(SynchronousTestCase):
    def test_lines_wait_for_a_slow_login(self) -> None:
        """
        Lines that arrive while the login is under way get no answer until
        the greeting, then their replies in order.
        """
        checker = PendingChecker()
        session = Network(checker=checker).connect("alice")
        self.assertEqual(session.send("PING"), [])
        checker.pending.callback("alice")
        self.assertEqual(session.take(), [GREETING.format("alice", "user"), "200 PONG"])

    def test_peer_gone_before_login_completes_is_not_left_online(self) -> None:
        """
        A login that completes after its connection ended is logged out at
        once, leaving no ghost session in the hub.
        """
        checker = PendingChecker()
        network = Network(checker=checker)
        session = network.connect("alice")
        session.protocol.connectionLost(Failure(ConnectionDone()))
        checker.pending.callback("alice")
        self.assertEqual(network.hub.sessions(), [])
        self.assertEqual(session.take(), [])


class RoutingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.network = Network()
        self.alice = self.network.connect("alice")
        self.bob = self.network.connect("bob")
        self.bob2 = self.network.connect("bob")
        self.admin = self.network.connect("admin")
        for session in (self.alice, self.bob, self.bob2, self.admin):
            session.take()

    def test_msg_reaches_every_session_of_the_recipient(self) -> None:
        """
        MSG is accepted with 250 and its id, and each of the recipient's
        sessions gets it.
        """
        self.assertEqual(self.alice.send("MSG bob hello there"), ["250 1"])
        self.assertEqual(self.bob.take(), [f"MSG 1 {STAMP} alice hello there"])
        self.assertEqual(self.bob2.take(), [f"MSG 1 {STAMP} alice hello there"])
        self.assertEqual(self.admin.take(), [])

    def test_msg_to_unknown_identity_is_404(self) -> None:
        """
        An identity the policy does not name and that never logged in is
        not one messages are kept for.
        """
        self.assertEqual(
            self.alice.send("MSG carol hi"), ["404 no such identity carol"]
        )

    def test_say_reaches_members_but_the_sending_session(self) -> None:
        """
        SAY goes to every session of every member but the sending one:
        membership is the identity's, so bob's second session hears it
        too, and alice's own copy goes to no one else of hers.
        """
        self.assertEqual(self.alice.send("JOIN #Ops"), ["200 joined #ops"])
        self.assertEqual(self.bob.send("JOIN #ops"), ["200 joined #ops"])
        self.assertEqual(self.alice.take(), ["JOINED #ops bob"])
        self.assertEqual(self.bob2.send("JOIN #ops"), ["200 already in #ops"])
        self.assertEqual(self.alice.send("SAY #ops deploy at 5"), ["250 1"])
        line = f"SAY 1 {STAMP} #ops alice deploy at 5"
        self.assertEqual(self.bob.take(), [line])
        self.assertEqual(self.bob2.take(), [line])
        self.assertEqual(self.alice.take(), [])

    def test_say_by_non_member_is_403(self) -> None:
        """
        A session that has not joined cannot speak in the room.
        """
        self.alice.send("JOIN #ops")
        self.assertEqual(
            self.bob.send("SAY #ops hi"),
            ["403 SAY not permitted for bob: not a member of #ops"],
        )
        self.assertEqual(self.alice.take(), [])

    def test_rooms_who_and_part(self) -> None:
        """
        ROOMS counts members, WHO #room lists them, PART leaves.
        """
        self.alice.send("JOIN #ops")
        self.bob.send("JOIN #ops")
        self.bob2.send("JOIN #ops")
        self.bob.send("JOIN #dev")
        self.assertEqual(self.alice.take(), ["JOINED #ops bob"])
        self.assertEqual(
            self.alice.send("ROOMS"), ["211-#dev 1", "211-#ops 2", "211 2 rooms"]
        )
        self.assertEqual(
            self.alice.send("WHO #ops"), ["211-alice", "211-bob", "211 2 in #ops"]
        )
        self.assertEqual(self.bob.send("PART #dev"), ["200 left #dev"])
        self.assertEqual(self.bob.send("PART #dev"), ["404 you are not in #dev"])
        self.assertEqual(self.alice.send("WHO #dev"), ["404 no room #dev"])

    def test_disconnect_leaves_presence_but_not_rooms(self) -> None:
        """
        A session that ends is no longer online, but its identity stays in
        its rooms: membership lasts until PART.
        """
        self.alice.send("JOIN #ops")
        self.alice.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.bob.send("WHO"), ["211-admin", "211-bob", "211 2 online"])
        self.assertEqual(self.bob.send("ROOMS"), ["211-#ops 1", "211 1 rooms"])
        self.assertEqual(self.bob.send("WHO #ops"), ["211-alice", "211 1 in #ops"])

    def test_kick_closes_every_session_of_the_identity(self) -> None:
        """
        KICK sends KICKED with who and why to each session and closes it.
        """
        self.assertEqual(
            self.admin.send("KICK bob spamming"), ["200 kicked bob (2 sessions)"]
        )
        for session in (self.bob, self.bob2):
            self.assertEqual(session.take(), ["KICKED admin spamming"])
            self.assertTrue(session.closed)
        self.assertEqual(self.admin.send("KICK carol"), ["404 carol is not online"])

    def test_invisible_characters_are_400_and_never_relayed(self) -> None:
        """
        A zero width space in a message, a room message, a broadcast or a
        kick's reason is refused with 400 naming it, and no one receives
        anything: text must not hide what was said.
        """
        self.alice.send("JOIN #ops")
        self.bob.send("JOIN #ops")
        self.alice.take()
        refusal = ["400 text holds U+200B ZERO WIDTH SPACE, an invisible character"]
        for sender, line in (
            (self.alice, "MSG bob pay\u200bpal"),
            (self.alice, "SAY #ops pay\u200bpal"),
            (self.admin, "BROADCAST pay\u200bpal"),
            (self.admin, "KICK bob pay\u200bpal"),
        ):
            self.assertEqual(sender.send(line), refusal, line)
        for session in (self.alice, self.bob, self.bob2, self.admin):
            self.assertEqual(session.take(), [])
        self.assertFalse(self.bob.closed)

    def test_broadcast_reaches_everyone(self) -> None:
        """
        BROADCAST reaches every session, the sender's included (its copy
        arrives before the 250 that confirms it).
        """
        line = f"BROADCAST 1 {STAMP} admin maintenance at 6"
        self.assertEqual(self.admin.send("BROADCAST maintenance at 6"), [line, "250 1"])
        for session in (self.alice, self.bob, self.bob2):
            self.assertEqual(session.take(), [line])


class BackpressureTests(AliceAndBob):
    """
    A peer that stops reading cannot make the daemon hold unbounded output.
    """

    def test_paused_session_reads_and_answers_nothing_until_resumed(self) -> None:
        """
        When the transport says the peer's output is full, the session stops
        reading it and answers nothing more until the output drains; then it
        answers what it had read, in order, and reads on.
        """
        self.assertIs(self.alice.transport.producer, self.alice.protocol)
        self.alice.protocol.pauseProducing()
        self.assertEqual(self.alice.transport.producerState, "paused")
        self.assertEqual(self.alice.send(b"PING\nWHO\n"), [])
        self.alice.protocol.resumeProducing()
        self.assertEqual(
            self.alice.take(), ["200 PONG", "211-alice", "211-bob", "211 2 online"]
        )
        self.assertEqual(self.alice.transport.producerState, "producing")

    def test_reader_that_never_reads_is_dropped(self) -> None:
        """
        Messages to a session whose output stays full are held up to a
        bound; past it the session is sent nothing more, dropped on the next
        turn, logged, and no longer online.
        """
        self.bob.protocol.pauseProducing()
        text = "x" * 4000
        replies = [self.alice.send(f"MSG bob {text}")[0] for _ in range(300)]
        self.assertEqual({reply.split()[0] for reply in replies}, {"250"})
        self.assertTrue(self.bob.protocol.closing)
        self.network.clock.advance(0)
        self.assertTrue(self.bob.transport.disconnected)
        self.assertLess(len(self.bob.transport.value()), 2 * 1024 * 1024)
        self.assertTrue(any("dropped bob" in line for line in self.log))

    def test_closing_session_leaves_at_once_and_is_cut_after_grace(self) -> None:
        """
        A kicked session is offline the moment it is kicked, whether or not
        its peer reads its last line; a peer that never lets go is cut off
        after the grace period.
        """
        admin = self.network.connect("admin")
        admin.take()
        admin.send("KICK bob bye")
        self.assertEqual(admin.send("WHO"), ["211-admin", "211-alice", "211 2 online"])
        self.assertEqual(self.bob.take(), ["KICKED admin bye"])
        self.assertFalse(self.bob.transport.disconnected)
        self.network.clock.advance(CLOSE_GRACE)
        self.assertTrue(self.bob.transport.disconnected)
