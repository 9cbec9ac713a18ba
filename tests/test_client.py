"""
The client's side of the protocol over real TLS in memory: what it makes of
greetings, replies, pushes and every way a session ends, and how it shows
what it receives.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.ssl import TLSVersion
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.cli.connect import SendOptions, parse_address
from secmsg.client.display import help_commands, show_push, show_reply
from secmsg.client.protocol import (
    ClientProtocol,
    ExitStatus,
    SessionEnded,
    ending_for_push,
)
from secmsg.client.tls import client_tls_options, load_client_files
from secmsg.clock import clock_time
from secmsg.errors import ConfigurationError
from tests.certs import SERVER_AUTH, CertificateAuthority, Pair, self_signed
from tests.harness import Instance, temporary_directory

WHEN = datetime(2026, 6, 1, 9, 30, 5, tzinfo=UTC)
SENT = "2026-06-01T09:29:00Z"


class ClientSessionTests(SynchronousTestCase):
    """
    L{ClientProtocol} against the real daemon, in memory.
    """

    def setUp(self) -> None:
        self.instance = Instance(self)
        self.alice = self.instance.ca.issue("alice")

    def client(
        self,
        pair: Pair,
        tls_version: TLSVersion | None = None,
        server_name: str = "localhost",
        ca_pem: bytes | None = None,
    ) -> ClientProtocol:
        session = ClientProtocol(self.instance.clock, server_name)
        options = client_tls_options(
            server_name,
            ca_pem or self.instance.ca.pem,
            pair.certificate_pem,
            pair.key_pem,
            tls_version,
        )
        self.instance.connect_protocol(session, options)
        self.instance.flush()
        return session

    def ending(self, session: ClientProtocol) -> SessionEnded:
        return self.successResultOf(session.ended)

    def test_greeting_replies_and_pushes(self) -> None:
        """
        The greeting names us; a multi-line reply arrives whole, matched to
        its command; a message from another session is a push.
        """
        session = self.client(self.alice)
        self.assertEqual(self.successResultOf(session.greeted).identity, "alice")
        who = session.command(b"WHO")
        ping = session.command(b"PING")
        bob = self.client(self.instance.ca.issue("bob"))
        bob.command(b"MSG alice hi there")
        self.instance.flush()
        self.assertEqual(
            [line.text for line in self.successResultOf(who)], ["alice", "1 online"]
        )
        self.assertEqual(self.successResultOf(ping)[-1].text, "PONG")
        # The push arrived before anyone listened; it waited for a listener.
        pushes: list[wire.PushLine] = []
        session.listen(pushes.append)
        sent = wire.format_time(clock_time(self.instance.clock))
        self.assertEqual(pushes, [wire.PushLine("MSG", ("1", sent, "bob", "hi there"))])
        bob.command(b"MSG alice again")
        self.instance.flush()
        self.assertEqual(pushes[-1], wire.PushLine("MSG", ("2", sent, "bob", "again")))

    def test_quit_ends_ok(self) -> None:
        """
        QUIT answered with 221 and the server's close is a normal ending.
        """
        session = self.client(self.alice)
        session.command(b"QUIT")
        self.instance.flush()
        self.assertEqual(self.ending(session).status, ExitStatus.OK)

    def test_kicked_is_reported_in_words(self) -> None:
        """
        A KICK ends the session with who kicked and why.
        """
        session = self.client(self.alice)
        admin = self.client(self.instance.ca.issue("admin"))
        admin.command(b"KICK alice enough")
        self.instance.flush()
        ending = self.ending(session)
        self.assertEqual(ending.status, ExitStatus.FAILED)
        self.assertEqual(ending.words, "kicked by admin: enough")

    def test_revocation_at_reload_is_reported(self) -> None:
        """
        A session closed because its certificate was revoked at a reload
        ends with the refused-certificate status and the reason.
        """
        session = self.client(self.alice)
        self.instance.ca.revoke(self.alice)
        self.instance.write("crl.pem", self.instance.ca.crl_pem())
        self.instance.daemon.reloader.reload()
        self.instance.flush()
        ending = self.ending(session)
        self.assertEqual(ending.status, ExitStatus.CERTIFICATE_REFUSED)
        self.assertEqual(ending.words, "the server closed the session: revoked")

    def test_shutdown_is_reported(self) -> None:
        """
        The daemon shutting down ends the session with its reason, and a
        command still waiting fails with the same ending.
        """
        session = self.client(self.alice)
        waiting = session.command(b"PING")
        self.instance.daemon.sessions.close_all("server shutting down")
        self.instance.flush()
        ending = self.ending(session)
        self.assertEqual(
            ending.words, "the server closed the session: server shutting down"
        )
        self.assertIs(self.failureResultOf(waiting, SessionEnded).value, ending)

    def assertRefused(self, pair: Pair, words: str) -> None:
        for version in (TLSVersion.TLSv1_2, TLSVersion.TLSv1_3):
            session = self.client(pair, version)
            failure = self.failureResultOf(session.greeted, SessionEnded)
            self.assertEqual(failure.value.status, ExitStatus.CERTIFICATE_REFUSED)
            self.assertEqual(
                failure.value.words, f"the server refused our certificate: {words}"
            )
            self.assertIs(self.ending(session), failure.value)

    def test_revoked_certificate_refused_in_words_under_tls12_and_tls13(self) -> None:
        """
        The server's alert is turned into its reason, under TLS 1.3 too,
        where it arrives after our side of the handshake has finished.
        """
        carol = self.instance.ca.issue("carol")
        self.instance.ca.revoke(carol)
        self.instance.write("crl.pem", self.instance.ca.crl_pem())
        self.instance.daemon.reloader.reload()
        self.assertRefused(carol, "revoked")

    def test_other_refusals_in_words(self) -> None:
        """
        Expired, unknown CA and wrong key usage each have their words.
        """
        ca = self.instance.ca
        expired = ca.issue(
            "dave", valid_from=timedelta(days=-30), valid_for=timedelta(days=1)
        )
        self.assertRefused(expired, "expired or not yet valid")
        self.assertRefused(self_signed("eve"), "unknown CA")
        self.assertRefused(ca.issue("frank", usages=SERVER_AUTH), "wrong key usage")

    def test_server_name_mismatch_refused_by_client(self) -> None:
        """
        A server whose certificate is not for the name we dialled is never
        talked to; we say which name did not match.
        """
        session = self.client(self.alice, server_name="chat.example")
        failure = self.failureResultOf(session.greeted, SessionEnded)
        self.assertEqual(failure.value.status, ExitStatus.CONNECTION)
        self.assertIn("not valid for chat.example", failure.value.words)

    def test_server_from_unknown_ca_refused_by_client(self) -> None:
        """
        A server whose certificate our CA file did not sign is refused.
        """
        other = CertificateAuthority("another CA")
        session = self.client(self.alice, ca_pem=other.pem)
        failure = self.failureResultOf(session.greeted, SessionEnded)
        self.assertEqual(failure.value.status, ExitStatus.CONNECTION)
        self.assertIn("did not verify against our CA file", failure.value.words)

    def test_command_after_the_end_fails_at_once(self) -> None:
        """
        A command sent once the session is over fails with its ending
        rather than waiting for ever.
        """
        session = self.client(self.alice)
        session.command(b"QUIT")
        self.instance.flush()
        ending = self.ending(session)
        # Whoever awaited the ending may have taken its result.
        session.ended.addCallback(lambda _: None)
        failure = self.failureResultOf(session.command(b"PING"), SessionEnded)
        self.assertIs(failure.value, ending)

    def test_closings_for_the_certificate_are_refusals(self) -> None:
        """
        Every CLOSED reason that means our certificate or identity is no
        longer accepted gives the refused-certificate status.
        """
        for reason in ("revocation status unknown", "wrong key usage", "expired"):
            ending = ending_for_push(wire.PushLine("CLOSED", (reason,)))
            self.assertEqual(ending.status, ExitStatus.CERTIFICATE_REFUSED)
        ending = ending_for_push(wire.PushLine("CLOSED", ("server shutting down",)))
        self.assertEqual(ending.status, ExitStatus.FAILED)

    def test_silent_server_times_out(self) -> None:
        """
        No greeting within the timeout ends the attempt with words; the
        clock, not the wall, decides.
        """
        session = ClientProtocol(self.instance.clock, "localhost", timeout=5)
        transport = _AbortRecorder()
        session.makeConnection(transport)
        self.instance.clock.advance(5)
        self.assertTrue(transport.aborted)
        session.connectionLost()
        failure = self.failureResultOf(session.greeted, SessionEnded)
        self.assertEqual(failure.value.status, ExitStatus.CONNECTION)
        self.assertIn("no greeting", failure.value.words)


class _AbortRecorder:
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class DisplayTests(SynchronousTestCase):
    def test_pushes_show_who_where_and_when(self) -> None:
        """
        Each push reads as a sentence with the time it was sent (and its
        date if not today), a repeat says so; a notice has the time it
        arrived.
        """
        self.assertEqual(
            show_push(wire.parse_server_line(f"MSG 7 {SENT} bob hi"), WHEN),
            "[09:29:00] bob to you: hi",
        )
        self.assertEqual(
            show_push(
                wire.parse_server_line(f"REDELIVERED SAY 8 {SENT} #ops bob hi"), WHEN
            ),
            "[09:29:00] #ops <bob> hi (again)",
        )
        self.assertEqual(
            show_push(
                wire.parse_server_line("BROADCAST 9 2026-05-30T23:00:00Z admin up"),
                WHEN,
            ),
            "[2026-05-30 23:00:00] admin to everyone: up",
        )
        self.assertEqual(
            show_push(wire.PushLine("KICKED", ("admin", "")), WHEN),
            "[09:30:05] kicked by admin: no reason",
        )

    def test_time_beyond_local_calendar_shows_arrival(self) -> None:
        """
        A server's message time that has no local equivalent (the first or
        last second of the calendar, in a zone either side of UTC) is shown
        by its arrival time, not a crash of the client.
        """
        for sent, zone in [
            ("0001-01-01T00:00:00Z", timezone(-timedelta(hours=5))),
            ("9999-12-31T23:59:59Z", timezone(timedelta(hours=9))),
        ]:
            arrived = datetime(2026, 6, 1, 12, 0, 1, tzinfo=zone)
            self.assertEqual(
                show_push(wire.parse_server_line(f"MSG 7 {sent} bob hi"), arrived),
                "[12:00:01] bob to you: hi",
            )

    def test_escape_sequences_are_shown_escaped(self) -> None:
        """
        A hostile server's escape sequences, bidi overrides and line
        separators reach the screen as visible escapes.
        """
        line = wire.parse_server_line(
            "MSG 1 \x1b[1m eve\x1b[2J \x1b]0;owned\x07\u202e\u2028x"
        )
        shown = show_push(line, WHEN)
        self.assertEqual(
            shown,
            "[09:30:05] eve\\x1b[2J to you: \\x1b]0;owned\\x07\\u202e\\u2028x",
        )
        self.assertEqual(
            show_reply([wire.ReplyLine(500, "\x9b31m", True)]), ["error 500: \\x9b31m"]
        )

    def test_invisible_characters_are_shown_escaped(self) -> None:
        """
        What a hostile server relays with hidden characters (a zero width
        space, a word joiner, a Hangul filler, tags) is shown with each of
        them escaped, so what someone said cannot look like something else;
        a tab and an emoji's variation selector are shown as sent.
        """
        line = wire.parse_server_line(
            "MSG 1 2026-06-01T09:30:05Z bob\u200b pay\u2060pal\u3164"
            "\U000e0069\U000e0067\t\u2764\ufe0f"
        )
        self.assertEqual(
            show_push(line, WHEN),
            "[09:30:05] bob\\u200b to you: pay\\u2060pal\\u3164"
            "\\U000e0069\\U000e0067\t\u2764\ufe0f",
        )
        self.assertEqual(
            show_reply([wire.ReplyLine(211, "\u00adhi\ufeff", True)]),
            ["\\xadhi\\ufeff"],
        )

    @given(st.text())
    def test_nothing_shown_can_drive_a_terminal(self, text: str) -> None:
        """
        Whatever the server sends, what is shown holds no character that
        the protocol itself forbids.
        """
        line = wire.parse_server_line(text)
        if isinstance(line, wire.PushLine):
            shown = [show_push(line, WHEN)]
        else:
            shown = show_reply([line])
        for item in shown:
            wire.decode_line(item.encode("utf-8", "surrogatepass"))

    def test_help_reply_gives_completions(self) -> None:
        """
        The commands HELP lists are what the prompt completes.
        """
        lines = [
            wire.ReplyLine(211, "HELP                       list", False),
            wire.ReplyLine(211, "MSG <identity> <text>      send", False),
            wire.ReplyLine(211, "2 commands", True),
        ]
        self.assertEqual(help_commands(lines), ["HELP", "MSG"])
        hostile = [wire.ReplyLine(211, "\x1b]0;x\x07PING check", False), *lines]
        self.assertEqual(help_commands(hostile), ["HELP", "MSG"])


class ClientFilesTests(SynchronousTestCase):
    def test_each_bad_file_is_named(self) -> None:
        """
        A key that is not the certificate's, a key that is no key and a CA
        file without a certificate are each reported against their file.
        """
        ca = CertificateAuthority()
        alice, bob = ca.issue("alice"), ca.issue("bob")
        directory = temporary_directory(self)
        files = {
            "alice.pem": alice.certificate_pem,
            "bob.key": bob.key_pem,
            "alice.key": alice.key_pem,
            "junk": b"not pem",
            "ca.pem": ca.pem,
        }
        for name, data in files.items():
            (directory / name).write_bytes(data)
        d = directory
        for certificate, key, authority, words in [
            (
                "alice.pem",
                "bob.key",
                "ca.pem",
                "bob.key: key does not match the certificate",
            ),
            ("alice.pem", "junk", "ca.pem", "junk: no PEM private key in it"),
            ("junk", "alice.key", "ca.pem", "junk: no PEM certificate in it"),
            ("alice.pem", "alice.key", "junk", "junk: no PEM CA certificate in it"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                load_client_files(d / certificate, d / key, d / authority)
            self.assertIn(words, str(caught.exception))
        self.assertEqual(
            load_client_files(d / "alice.pem", d / "alice.key", d / "ca.pem")[2], ca.pem
        )


class CommandLineTests(SynchronousTestCase):
    def test_addresses(self) -> None:
        """
        HOST, HOST:PORT, [v6]:PORT and a bare v6 address all parse; junk
        does not.
        """
        self.assertEqual(parse_address("localhost"), ("localhost", 7443))
        self.assertEqual(parse_address("127.0.0.1:8000"), ("127.0.0.1", 8000))
        self.assertEqual(parse_address("[::1]:8000"), ("::1", 8000))
        self.assertEqual(parse_address("::1"), ("::1", 7443))
        for bad in (
            "host:",
            "host:x",
            "host:70000",
            ":7443",
            "[::1]:",
            "host:\u00b2",
            "bad_host!",
        ):
            with self.assertRaises(usage.UsageError):
                parse_address(bad)

    def test_send_refuses_text_that_would_inject_a_command(self) -> None:
        """
        A newline in the text would send a second command: refused before
        connecting, as are a bad recipient and a bad room.
        """
        base = ["localhost", "--instance", "dev", "--as", "alice"]
        for extra, words in [
            (["--to", "bob", "hi\nQUIT"], "control characters"),
            (["--to", "bad name", "hi"], "not an identity"),
            (["--room", "ops", "hi"], "not a room"),
            (["--to", "bob", "--room", "#ops", "hi"], "one of --to"),
            (["--to", "bob"], "give the text"),
            (["--to", "bob", "--cert", "x.pem", "hi"], "not both"),
            (["--to", "bob", "--server-name", "a b", "hi"], "is not a host"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                SendOptions().parseOptions(base + extra)
            self.assertIn(words, str(caught.exception))

    def test_send_refuses_text_with_an_invisible_character(self) -> None:
        """
        Text the daemon would refuse for a hidden character is refused
        before connecting, naming it, so the sender learns what they pasted.
        """
        options = ["localhost", "--instance", "dev", "--as", "alice", "--to", "bob"]
        with self.assertRaises(usage.UsageError) as caught:
            SendOptions().parseOptions([*options, "\U0001f468\u200d\U0001f469"])
        self.assertIn("U+200D ZERO WIDTH JOINER", str(caught.exception))


class KeepAliveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.instance = Instance(self)

    def client(self) -> ClientProtocol:
        pair = self.instance.ca.issue("alice")
        session = ClientProtocol(self.instance.clock, "localhost")
        options = client_tls_options(
            "localhost", self.instance.ca.pem, pair.certificate_pem, pair.key_pem
        )
        self.instance.connect_protocol(session, options)
        self.instance.flush()
        return session

    def wait(self, minutes: int) -> None:
        for _ in range(minutes):
            self.instance.clock.advance(60)
            self.instance.flush()

    def test_quiet_session_is_closed_as_idle(self) -> None:
        """
        Over real TLS: a session that sends nothing for fifteen minutes is
        told why and ends.
        """
        session = self.client()
        self.wait(15)
        self.assertEqual(
            self.successResultOf(session.ended).words,
            "the server closed the session: idle for 900 s",
        )

    def test_keep_alive_pings_keep_it_open(self) -> None:
        """
        A client that keeps the session alive is still there an hour later.
        """
        session = self.client()
        session.keep_alive(60)
        self.wait(60)
        self.assertNoResult(session.ended)
        ping = session.command(b"PING")
        self.instance.flush()
        self.assertEqual(self.successResultOf(ping)[0].code, 200)
