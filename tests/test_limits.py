"""
Abuse and the bounds that meet it: rates, bad lines, idle and expired
sessions, too many sessions, slow handshakes; and the room rules.
"""

from __future__ import annotations

from datetime import timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.address import IPv6Address
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from secmsg import __version__
from secmsg.daemon.limits import Limits, address_group, describe_address
from secmsg.rate import Rate, RateLimiter
from tests.harness import POLICY, Instance, LineClient, capture_log
from tests.sessions import STAMP, Network, VerifiedTransport
from tests.test_audit import record_events, records

RATED = POLICY.replace("rate = 1000000", "rate = 2\nburst = 3")


class RateLimiterTests(SynchronousTestCase):
    def test_bucket_refills_at_the_rate(self) -> None:
        """
        A burst is taken at once; then one token comes per 1/rate seconds,
        and the wait until it is what take() returns.
        """
        network = Network()
        limiter = RateLimiter(network.clock)
        rate = Rate(4.0, 2)
        self.assertEqual([limiter.take("a", rate) for _ in range(3)], [0, 0, 0.25])
        network.clock.advance(0.25)
        self.assertEqual(limiter.take("a", rate), 0)
        self.assertEqual(limiter.take("b", rate), 0, "each identity has its own")


class RateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.network = Network(RATED)
        self.alice = self.network.connect("alice")
        self.bob = self.network.connect("bob")
        self.alice.take()
        self.bob.take()

    def test_command_past_the_rate_is_429_and_not_carried_out(self) -> None:
        """
        Past the burst a command gets 429 with the wait, and does nothing:
        bob receives only the messages that got 250.
        """
        replies = [self.alice.send(f"MSG bob m{n}")[0] for n in range(4)]
        self.assertEqual(
            replies, ["250 1", "250 2", "250 3", "429 slow down; retry in 500 ms"]
        )
        self.assertEqual(
            [line.split()[-1] for line in self.bob.take()], ["m0", "m1", "m2"]
        )
        self.network.clock.advance(0.5)
        self.assertEqual(self.alice.send("PING"), ["200 PONG"])

    def test_sessions_of_one_identity_share_the_bucket(self) -> None:
        """
        A second session brings no more commands per second.
        """
        again = self.network.connect("alice")
        again.take()
        self.alice.send(b"PING\nPING\n")
        self.assertEqual(again.send("PING"), ["200 PONG"])
        self.assertEqual(again.send("PING"), ["429 slow down; retry in 500 ms"])

    def test_ack_and_quit_are_never_refused_for_the_rate(self) -> None:
        """
        ACK and QUIT only lighten the load: they are answered with an empty
        bucket.
        """
        self.alice.send(b"PING\nPING\nPING\n")
        self.assertEqual(self.alice.send("ACK 7")[0][:3], "404")
        self.assertEqual(self.alice.send("QUIT"), ["221 bye"])

    def test_acknowledgements_do_not_wipe_the_slate(self) -> None:
        """
        An ACK between refused commands neither resets the count of 429s
        in a row nor is refused itself while its own bucket lasts.
        """
        lines = self.alice.send((b"PING\n" * 9 + b"ACK 7\n") * 12)
        self.assertEqual(lines[-1], "CLOSED 100 commands in a row past the rate")
        self.assertTrue(self.alice.closed)

    def test_bad_lines_cost_tokens_too(self) -> None:
        """
        Unknown verbs and malformed lines are charged: past the rate they
        get 429, not a free answer.
        """
        lines = self.alice.send(b"FOO\n\xff\nMSG\nBAR\n")
        self.assertEqual(
            lines,
            [
                "405 unknown command FOO",
                "400 invalid UTF-8",
                "400 usage: MSG <identity> <text>",
                "429 slow down; retry in 500 ms",
            ],
        )

    def test_blank_lines_cost_tokens_too(self) -> None:
        """
        A blank line gets no reply but costs a token like any line: three
        of them use up a burst of three, and the PING after is refused.
        """
        self.assertEqual(self.alice.send(b"\n \n\t\n"), [])
        self.assertEqual(self.alice.send("PING"), ["429 slow down; retry in 500 ms"])

    def test_quit_with_arguments_is_charged(self) -> None:
        """
        Only a bare QUIT leaves for free: a QUIT line with more in it is
        charged like any command, so it cannot be sent past the rate.
        """
        self.alice.send(b"PING\nPING\nPING\n")
        self.assertEqual(
            self.alice.send("QUIT now"), ["429 slow down; retry in 500 ms"]
        )
        self.assertEqual(self.alice.send("QUIT"), ["221 bye"])

    def test_a_run_of_429s_is_one_audit_record(self) -> None:
        """
        A client hammering past its rate leaves one rate_limited record for
        the run, and one for being closed; not one per line.
        """
        buffer = record_events(self)
        self.alice.send(b"PING\n" * 103)
        events = [r["event"] for r in records(buffer)]
        self.assertEqual(events.count("rate_limited"), 1)
        self.assertEqual(events.count("session_closed"), 1)

    def test_a_client_that_does_not_slow_down_is_closed(self) -> None:
        """
        A hundred 429s in a row end the session with the reason.
        """
        lines = self.alice.send(b"PING\n" * 103)
        self.assertEqual(lines.count("429 slow down; retry in 500 ms"), 100)
        self.assertEqual(lines[-1], "CLOSED 100 commands in a row past the rate")
        self.assertTrue(self.alice.closed)
        self.assertEqual(self.bob.send("PING"), ["200 PONG"])


class BadLineTests(SynchronousTestCase):
    def test_ten_bad_lines_in_a_row_close_the_session(self) -> None:
        """
        Ten malformed, unknown or overlong lines in a row close the session
        after the tenth reply, with the reason; a good line in between
        starts the count again.
        """
        alice = Network().connect("alice")
        alice.take()
        alice.send(b"FOO\n" * 9)
        self.assertEqual(alice.send("PING"), ["200 PONG"])
        lines = alice.send(b"FOO\nMSG\n" * 5)
        self.assertEqual(
            lines[-2:],
            ["400 usage: MSG <identity> <text>", "CLOSED 10 bad lines in a row"],
        )
        self.assertEqual(len(lines), 11)
        self.assertTrue(alice.closed)

    def test_a_flood_of_blank_lines_closes_the_session(self) -> None:
        """
        Blank lines count toward the bad-line limit: a session that floods
        them is closed after ten, with the reason after its other replies,
        and the rest of the flood is not looked at.
        """
        network = Network()
        alice = network.connect("alice")
        alice.take()
        self.assertEqual(
            alice.send(b"PING\n" + b"\n" * 16384),
            [
                "200 PONG",
                "CLOSED 10 bad lines in a row",
            ],
        )
        self.assertTrue(alice.closed)
        self.assertEqual(network.connect("bob").send("PING")[-1], "200 PONG")


class LoginRateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.buffer = record_events(self)
        self.network = Network(
            limits=Limits(logins_per_identity=3, logins_per_address=5)
        )

    def test_logins_past_an_identitys_rate_get_429_and_one_record(self) -> None:
        """
        An identity's logins past its rate are refused with 429 and when to
        retry; the audit trail gets one record for the first refusal and a
        count of the rest when the minute ends, and the rate refills.
        """
        for _ in range(3):
            self.assertIn("you are alice", self.network.connect("alice").take()[0])
        refused = [self.network.connect("alice") for _ in range(3)]
        self.assertEqual(
            refused[0].take(),
            ["429 too many logins as alice (limit 3 a minute); retry in 20 s"],
        )
        self.assertTrue(all(session.closed for session in refused))
        limited = [
            r for r in records(self.buffer) if r["event"] == "login_rate_limited"
        ]
        self.assertEqual(len(limited), 1)
        self.network.clock.advance(60)
        (summary,) = [
            r for r in records(self.buffer) if r["event"] == "records_left_out"
        ]
        self.assertEqual((summary["party"], summary["count"]), ("alice", 2))
        self.assertIn("you are alice", self.network.connect("alice").take()[0])

    def test_logins_past_an_addresss_rate_get_429(self) -> None:
        """
        Logins of several identities from one address share that address's
        rate, which is more than any one identity's.
        """
        for name in ["alice", "bob", "carol", "dave", "erin"]:
            self.assertIn(f"you are {name}", self.network.connect(name).take()[0])
        self.assertEqual(
            self.network.connect("frank").take(),
            ["429 too many logins from 127.0.0.1 (limit 5 a minute); retry in 12 s"],
        )


class TimeoutTests(SynchronousTestCase):
    def test_blank_lines_do_not_keep_a_session_open(self) -> None:
        """
        Only a line with a command in it resets the idle timer: blank lines
        sent every 100 s do not keep a session from being idle.
        """
        network = Network(limits=Limits(idle_timeout=900))
        alice = network.connect("alice")
        alice.take()
        for _ in range(8):
            network.clock.advance(100)
            self.assertEqual(alice.send(b"\n"), [])
        network.clock.advance(100)
        self.assertEqual(alice.take(), ["CLOSED idle for 900 s"])
        self.assertTrue(alice.closed)

    def test_idle_session_is_closed_with_the_reason(self) -> None:
        """
        A session that sends no line for the idle timeout is told why and
        closed; PING keeps it open.
        """
        network = Network(limits=Limits(idle_timeout=900))
        alice = network.connect("alice")
        alice.take()
        network.clock.advance(800)
        self.assertEqual(alice.send("PING"), ["200 PONG"])
        network.clock.advance(800)
        self.assertFalse(alice.closed)
        network.clock.advance(100)
        self.assertEqual(alice.take(), ["CLOSED idle for 900 s"])
        self.assertTrue(alice.closed)

    def test_silent_connection_is_dropped_after_the_handshake_timeout(self) -> None:
        """
        A connection that never completes its handshake is dropped once the
        handshake timeout passes, and the refusal is logged.
        """
        log = capture_log(self)
        network = Network(limits=Limits(handshake_timeout=10))
        transport = VerifiedTransport(40000)
        protocol = network.factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        network.clock.advance(9)
        self.assertFalse(transport.disconnected)
        network.clock.advance(1)
        self.assertTrue(transport.disconnected)
        protocol.connectionLost(None)
        self.assertIn("not completed within 10 s", log[-1])

    def test_tcp_client_that_never_starts_tls_is_dropped(self) -> None:
        """
        Over the real TLS layer: a client that connects and says nothing
        (slowloris) is gone after ten seconds.
        """
        instance = Instance(self)
        silent = LineClient(early=())
        _, _, pump = connectedServerAndClient(
            lambda: instance.daemon.factory.buildProtocol(None),
            lambda: silent,
            greet=False,
            clock=instance.clock,
        )
        pump.flush()
        instance.clock.advance(9.9)
        pump.flush()
        self.assertIsNone(silent.lost)
        instance.clock.advance(0.1)
        pump.flush()
        self.assertIsNotNone(silent.lost)

    def test_session_ends_when_its_certificate_expires(self) -> None:
        """
        A session is warned five minutes before its certificate expires and
        closed when it does.
        """
        network = Network()
        pair = network.ca.issue("alice", valid_for=timedelta(days=1))
        expires = pair.certificate.not_valid_after_utc.timestamp()
        network.clock.advance(expires - 600 - network.clock.seconds())
        alice = network.connect("alice", certificate=pair.certificate)
        alice.take()
        network.clock.advance(300)
        (notice,) = alice.take()
        self.assertTrue(notice.startswith("NOTICE your certificate expires at "))
        network.clock.advance(299)
        self.assertFalse(alice.closed)
        network.clock.advance(1)
        self.assertEqual(alice.take(), ["CLOSED certificate expired"])

    def test_idle_session_holds_a_timer_for_silence_and_one_for_expiry(self) -> None:
        """
        A logged-in session waits on two timers, its idle timeout and the
        next step of its certificate's expiry, whatever it took to log in:
        a daemon holds thousands of idle sessions, and each timer is
        memory.
        """
        network = Network()
        network.connect("alice")
        self.assertEqual(len(network.clock.getDelayedCalls()), 2)


class SessionLimitTests(SynchronousTestCase):
    def test_identity_past_its_limit_gets_503(self) -> None:
        """
        A session past the per-identity limit is told why and closed; the
        sessions already open are untouched, and once one leaves a new one
        is admitted.
        """
        network = Network(limits=Limits(max_per_identity=2))
        first, second = network.connect("alice"), network.connect("alice")
        third = network.connect("alice")
        self.assertEqual(third.take(), ["503 too many sessions for alice (limit 2)"])
        self.assertTrue(third.closed)
        self.assertEqual(first.send("PING")[-1], "200 PONG")
        self.assertEqual(network.hub.online(), ["alice"])
        second.send("QUIT")
        second.protocol.connectionLost(None)
        self.assertIn("you are alice", network.connect("alice").take()[0])

    def test_address_and_server_limits_get_503(self) -> None:
        """
        The per-address and whole-server limits refuse in words too.
        """
        network = Network(limits=Limits(max_per_address=1))
        network.connect("alice")
        self.assertEqual(
            network.connect("bob").take(),
            ["503 too many sessions from 127.0.0.1 (limit 1)"],
        )
        network = Network(limits=Limits(max_sessions=1))
        network.connect("alice")
        self.assertEqual(
            network.connect("bob").take(),
            ["503 too many sessions on this server (limit 1)"],
        )

    def test_limits_over_real_tls(self) -> None:
        """
        Over the real TLS layer: the first session is greeted, and each
        login past the limit gets 503 with the reason.
        """
        instance = Instance(self, limits=Limits(max_per_address=1))
        pair = instance.ca.issue("alice")
        clients = [instance.connect(pair, complete=False) for _ in range(4)]
        instance.flush()
        self.assertEqual(
            [client.lines for client in clients],
            [
                [
                    f"200 secmsg {__version__} ready; you are alice (roles: user)"
                    "; protocol 1.0; capabilities store,ack-upto,history,"
                    "rooms,broadcast,presence"
                    "; rate 1000000/s, burst 3000000, 3000000 left"
                ],
                ["503 too many sessions from 127.0.0.1 (limit 1)"],
                ["503 too many sessions from 127.0.0.1 (limit 1)"],
                ["503 too many sessions from 127.0.0.1 (limit 1)"],
            ],
        )
        self.assertEqual(
            [client.lost is None for client in clients], [True, False, False, False]
        )

    def test_connections_not_logged_in_are_capped(self) -> None:
        """
        Past the handshake limit in all, the oldest connection not logged
        in, from any address, is dropped to make room for the newest.
        """
        network = Network(limits=Limits(max_handshakes=3))
        transports = []
        for port in range(40000, 40004):
            transport = VerifiedTransport(port)
            network.factory.buildProtocol(None).makeConnection(transport)
            transports.append(transport)
        self.assertEqual([t.disconnected for t in transports], [True] + [False] * 3)

    def test_ipv6_addresses_count_by_their_64(self) -> None:
        """
        An IPv6 client cannot escape the per-address limit by changing the
        low 64 bits of its address; IPv4 addresses count one by one.
        """
        self.assertEqual(
            address_group("2001:db8:1:2:aaaa::1"), address_group("2001:db8:1:2::9")
        )
        self.assertEqual(address_group("2001:db8:1:2::9"), "2001:db8:1:2::/64")
        self.assertEqual(address_group("192.0.2.7"), "192.0.2.7")
        self.assertEqual(
            describe_address(IPv6Address("TCP", "::1", 7443)), "[::1]:7443"
        )

    def test_connection_flood_makes_room_for_the_newest(self) -> None:
        """
        Past the per-address budget of connections not logged in, the
        oldest of that address's is dropped to make room, and the address's
        sessions are not counted against it: a flood of connections held
        open cannot keep a client from logging in.
        """
        network = Network(limits=Limits(max_handshakes_per_address=2))
        alice = network.connect("alice")
        transports = []
        for port in range(40000, 40005):
            transport = VerifiedTransport(port)
            network.factory.buildProtocol(None).makeConnection(transport)
            transports.append(transport)
        self.assertEqual([t.disconnected for t in transports], [True] * 3 + [False] * 2)
        self.assertFalse(alice.closed)
        self.assertIn("you are bob", network.connect("bob").take()[0])


ROOMS = (
    POLICY
    + """
[[rooms]]
pattern = "#ops-*"
join = ["admin"]

[[rooms]]
pattern = "#news"
join = ["user"]
say = ["admin"]

[[rooms]]
pattern = "#sealed"
join = ["user"]
read = ["admin"]
"""
)


def dave_with_two_certificates() -> tuple[Network, x509.Certificate]:
    """
    A network under the room rules where a certificate with OU=ops makes
    dave an admin, and that certificate: his plain one makes him a user.
    """
    network = Network(
        ROOMS.replace(
            "[identities]",
            '[[rules]]\nsubject = { OU = "ops" }\nroles = ["admin"]\n\n[identities]',
        )
    )
    ops = (x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),)
    return network, network.ca.issue("dave", subject=ops).certificate


class RoomRuleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.network = Network(ROOMS)
        self.alice = self.network.connect("alice")
        self.admin = self.network.connect("admin")
        self.alice.take()
        self.admin.take()

    def test_join_outside_the_rule_is_403_naming_it(self) -> None:
        """
        A user may not enter #ops-db; the refusal names the rule.
        """
        self.assertEqual(
            self.alice.send("JOIN #ops-db"),
            [
                '403 JOIN not permitted for alice: rooms matching "#ops-*" let '
                "only roles admin join; you have role user"
            ],
        )
        self.assertEqual(self.admin.send("JOIN #ops-db"), ["200 joined #ops-db"])

    def test_say_is_for_the_roles_that_may_speak(self) -> None:
        """
        In #news users listen and admins speak.
        """
        self.alice.send("JOIN #news")
        self.admin.send("JOIN #news")
        self.assertEqual(self.alice.take(), ["JOINED #news admin"])
        self.assertEqual(self.alice.send("SAY #news hi")[0][:3], "403")
        self.assertEqual(self.admin.send("SAY #news release today"), ["250 1"])
        self.assertEqual(
            self.alice.take(), [f"SAY 1 {STAMP} #news admin release today"]
        )

    def test_rights_of_another_certificate_do_not_open_the_mailbox(self) -> None:
        """
        A room message kept for dave, who read it as an admin by his OU=ops
        certificate, is not sent to his session with a plain certificate,
        which may not read the room; it waits for one that may.
        """
        network, as_ops = dave_with_two_certificates()
        dave = network.connect("dave", certificate=as_ops)
        admin = network.connect("admin")
        dave.send("JOIN #ops-db")
        admin.send("JOIN #ops-db")
        admin.send("SAY #ops-db secret plan")
        dave.protocol.connectionLost(None)
        plain = network.connect("dave")
        self.assertEqual(len(plain.take()), 1, "the greeting and nothing else")
        again = network.connect("dave", certificate=as_ops)
        self.assertEqual(
            again.take()[1:], [f"REDELIVERED SAY 1 {STAMP} #ops-db admin secret plan"]
        )

    def test_a_session_that_may_not_read_acknowledges_nothing_there(self) -> None:
        """
        A room message kept for dave is none of his plain certificate's
        session's business: its ACK of it is 404, as for a message that is
        not his, and it stays for his session that may read the room.
        """
        network, as_ops = dave_with_two_certificates()
        dave = network.connect("dave", certificate=as_ops)
        dave.send("JOIN #ops-db")
        admin = network.connect("admin")
        admin.send("JOIN #ops-db")
        admin.send("SAY #ops-db secret plan")
        dave.protocol.connectionLost(None)
        plain = network.connect("dave")
        plain.take()
        self.assertEqual(plain.send("ACK 1"), ["404 no message 1 for dave"])
        self.assertEqual(plain.send("ACK UPTO 1"), ["200 acknowledged 0"])
        again = network.connect("dave", certificate=as_ops)
        self.assertEqual(
            again.take()[1:], [f"REDELIVERED SAY 1 {STAMP} #ops-db admin secret plan"]
        )

    def test_member_without_read_gets_no_messages_nor_history(self) -> None:
        """
        alice may sit in #sealed but not read it: its messages are not
        pushed to her, and HISTORY is refused.
        """
        self.alice.send("JOIN #sealed")
        self.admin.send("JOIN #sealed")
        self.admin.send("SAY #sealed secret plan")
        self.assertEqual(self.alice.take(), [])
        pending = self.network.store.pending("alice", 0, 10, frozenset({"#sealed"}))
        self.assertEqual(self.successResultOf(pending), [])
        self.assertEqual(self.alice.send("HISTORY #sealed")[0][:3], "403")
