"""
One write per peer per reactor turn: the replies to the lines of one read,
and the pushes of one turn, leave a session in one TLS write.

The session writes each reply and push to its transport as it is ready;
that transport (L{secmsg.daemon.sending}) gathers the writes of a turn
and hands them to OpenSSL, and so to the socket, once at the turn's end.
These tests count what reaches the connection beneath TLS, so that a
change of transport that wrote a TLS record (and made a system call) a
reply would fail them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from secmsg.client.tls import client_tls_options
from tests.harness import Instance, LineClient
from tests.tls_records import APPLICATION_DATA, content_type, split_records

LINES = 50
"""Lines in one read: more than a reply's TLS record would carry alone."""


class ReplyWriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.instance = Instance(self)

    def connect(self, name: str) -> tuple[LineClient, list[bytes]]:
        """
        A client logged in as C{name}, and the list that each write the
        daemon makes beneath TLS to it is added to, from now on.
        """
        pair = self.instance.ca.issue(name)
        client = LineClient(())
        pump = self.instance.connect_protocol(
            client,
            client_tls_options(
                "localhost", self.instance.ca.pem, pair.certificate_pem, pair.key_pem
            ),
        )
        self.instance.flush()
        self.assertTrue(client.greeted)
        client.take()
        writes: list[bytes] = []
        beneath = pump.serverIO
        write = beneath.write

        def counted(data: bytes) -> None:
            writes.append(data)
            write(data)

        beneath.write = counted  # type: ignore[method-assign]
        return client, writes

    def assertOneRecord(self, writes: list[bytes]) -> None:
        """
        The daemon wrote once, one TLS record of application data.
        """
        self.assertEqual(len(writes), 1, [len(w) for w in writes])
        records = split_records(writes[0])
        self.assertEqual([content_type(r) for r in records], [APPLICATION_DATA])

    def test_replies_to_one_read_leave_in_one_write(self) -> None:
        """
        A client that pipelines many commands in one read gets their
        replies in one TLS record, not a record each.
        """
        alice, writes = self.connect("alice")
        alice.send(*["PING"] * LINES)
        self.instance.flush()
        self.assertEqual(alice.take(), ["200 PONG"] * LINES)
        self.assertOneRecord(writes)

    def test_pushes_of_one_turn_leave_in_one_write(self) -> None:
        """
        Messages sent in one read reach their recipient in one write, in
        order, as their sender's 250s reach the sender in one.
        """
        bob, to_bob = self.connect("bob")
        alice, to_alice = self.connect("alice")
        alice.send(*[f"MSG bob note {n}" for n in range(LINES)])
        self.instance.flush()
        replies = alice.take()
        self.assertEqual(len(replies), LINES)
        self.assertTrue(all(r.startswith("250 ") for r in replies), replies)
        self.assertOneRecord(to_alice)
        pushes = bob.take()
        self.assertEqual(
            [p.rsplit(" ", 1)[-1] for p in pushes], [str(n) for n in range(LINES)]
        )
        self.assertOneRecord(to_bob)

    def test_replies_and_pushes_share_the_write_in_order(self) -> None:
        """
        A read whose commands push to the session itself: its replies and
        the push leave together, the replies in the order of their lines.
        """
        alice, writes = self.connect("alice")
        alice.send("PING", "MSG alice to myself", "PING")
        self.instance.flush()
        first, *middle, last = alice.take()
        self.assertEqual((first, last), ("200 PONG", "200 PONG"))
        # The push and the 250 of the message, in whichever order the
        # delivery gives them: what matters here is that they share a write.
        self.assertEqual(
            sorted(line.split(" ", 2)[:2] for line in middle),
            [["250", "1"], ["MSG", "1"]],
        )
        self.assertOneRecord(writes)
