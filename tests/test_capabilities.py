"""
What a server says it speaks, over real TLS: the protocol version and
capabilities in the greeting, CAPS with their parameters, HELP's columns,
and what the client makes of them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.capabilities import CAPABILITIES, Offer, format_offer, parse_offer
from secmsg.client.display import show_offer
from secmsg.client.protocol import ClientProtocol
from secmsg.client.tls import client_tls_options
from secmsg.daemon.limits import Limits, RoomLimits
from secmsg.messages import WaitingLimit
from tests.harness import POLICY, Instance, LineClient

OFFER = "protocol 1.0; capabilities store,ack-upto,history,rooms,broadcast,presence"

WATCHING_POLICY = POLICY.replace(
    '"METRICS", "BACKUP"]', '"METRICS", "BACKUP", "PRESENCE"]'
)
"""Admins hold PRESENCE."""


class ServerOfferTests(SynchronousTestCase):
    """
    A daemon in memory with settings of its own, spoken to over real TLS.
    """

    def setUp(self) -> None:
        self.instance = Instance(
            self,
            WATCHING_POLICY,
            history_max=50,
            max_line_length=2048,
            waiting_limit=WaitingLimit(messages=500, text_bytes=1 << 20),
            # A whole number, as the config file's TOML gives it.
            limits=Limits(idle_timeout=600, rooms=RoomLimits(max_per_identity=7)),
        )

    def log_in(self, identity: str) -> tuple[str, LineClient]:
        client = self.instance.connect(self.instance.ca.issue(identity))
        greeting, *_ = client.take()
        return greeting, client

    def ask(self, client: LineClient, line: str) -> list[str]:
        client.send(line)
        self.instance.flush()
        return client.take()

    def test_greeting_names_the_protocol_and_capabilities(self) -> None:
        """
        The greeting names the protocol version and every capability, and
        still gives who we are and the rate at its end for older clients.
        """
        greeting, _ = self.log_in("alice")
        self.assertIn(f"; you are alice (roles: user); {OFFER}; rate ", greeting)
        self.assertEqual(parse_offer(greeting), Offer("1.0", CAPABILITIES))
        self.assertIsNotNone(wire.parse_greeting_rate(greeting))

    def test_caps_lists_capabilities_with_their_parameters(self) -> None:
        """
        CAPS gives the limits every session is held to, then each
        capability of the greeting with its parameters, as the settings
        make them.
        """
        _, alice = self.log_in("alice")
        self.assertEqual(
            self.ask(alice, "CAPS"),
            [
                "211-limits line-bytes=2048 idle-seconds=600 rate=1000000 "
                "burst=3000000",
                "211-store waiting-messages=500 waiting-bytes=1048576",
                "211-ack-upto",
                "211-history max=50 default=20 bytes=65536",
                "211-rooms max=7",
                "211-broadcast",
                "211-presence online=no",
                "211 protocol 1.0, 6 capabilities",
            ],
        )

    def test_caps_says_whether_the_session_is_told_who_is_online(self) -> None:
        """
        A session that holds PRESENCE reads online=yes.
        """
        _, admin = self.log_in("admin")
        self.assertIn("211-presence online=yes", self.ask(admin, "CAPS"))

    def test_every_identity_may_ask_caps(self) -> None:
        """
        CAPS is granted to every admitted identity, whatever its roles: a
        guest whose role does not name it gets the reply, and sees it in
        HELP.
        """
        _, carol = self.log_in("carol")
        self.assertEqual(
            self.ask(carol, "CAPS")[-1], "211 protocol 1.0, 6 capabilities"
        )
        self.assertIn("CAPS", {line[4:].split()[0] for line in self.ask(carol, "HELP")})

    def test_the_client_reads_the_offer_from_the_greeting(self) -> None:
        """
        The client's greeting carries the server's version and
        capabilities, and says in one line which of them it uses.
        """
        pair = self.instance.ca.issue("alice")
        session = ClientProtocol(self.instance.clock, "localhost")
        options = client_tls_options(
            "localhost", self.instance.ca.pem, pair.certificate_pem, pair.key_pem
        )
        self.instance.connect_protocol(session, options)
        self.instance.flush()
        greeting = self.successResultOf(session.greeted)
        self.assertEqual(greeting.identity, "alice")
        self.assertEqual(greeting.offer, Offer("1.0", CAPABILITIES))
        self.assertEqual(
            show_offer(greeting.offer), "protocol 1.0; this client uses store, presence"
        )


class OfferGrammarTests(SynchronousTestCase):
    def test_an_offer_reads_back_as_written(self) -> None:
        """
        What the daemon writes, the client reads, in the greeting's place.
        """
        offer = format_offer("2.3", ("x", "y-z"))
        greeting = f"secmsg 0.1.0 ready; you are a (roles: r); {offer}; rate 1/s"
        self.assertEqual(parse_offer(greeting), Offer("2.3", ("x", "y-z")))

    def test_a_greeting_that_names_no_protocol_has_no_offer(self) -> None:
        """
        A server older than protocol 1.0 names none: the client says so
        rather than guess.
        """
        greeting = "secmsg 0.1.0 ready; you are a (roles: r); rate 1/s, burst 1, 1 left"
        self.assertIsNone(parse_offer(greeting))
        self.assertEqual(
            show_offer(None),
            "the server names no protocol version; using no capabilities",
        )
