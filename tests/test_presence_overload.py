"""
A reader dropped for not reading while presence or messages are being
told leaves the hub whole: the session that was leaving leaves every room
and goes offline, the dropped one follows on the next turn, and what they
leave behind (room members, session slots, a reload) holds together.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from secmsg.client.tls import client_tls_options
from secmsg.daemon.outbox import BACKLOG_LIMIT
from secmsg.daemon.protocol import SessionProtocol
from tests.harness import Instance, LineClient
from tests.sessions import Network, Session
from tests.test_presence import PRESENCE_POLICY

ROOMS = ("#dev", "#ops")


def fill_backlog(peer: SessionProtocol, room_left: int) -> None:
    """
    Have C{peer} stop reading with all but C{room_left} bytes of its
    backlog taken, by one long presence line pushed to it.
    """
    peer.pauseProducing()
    peer.announce(b"." * (BACKLOG_LIMIT - room_left - 1) + b"\n")


class DropDuringDetachTests(SynchronousTestCase):
    """
    Alice, bob and the admin (who holds PRESENCE) in #dev and #ops, on
    in-memory sessions; each test has some of them stop reading with their
    backlogs nearly full.
    """

    def setUp(self) -> None:
        self.network = Network(PRESENCE_POLICY)
        self.admin = self.network.connect("admin")
        self.alice = self.network.connect("alice")
        self.bob = self.network.connect("bob")
        for session in (self.admin, self.alice, self.bob):
            for room in ROOMS:
                session.send(f"JOIN {room}")
        for session in (self.admin, self.alice, self.bob):
            session.take()
        self.lost: set[Session] = set()

    def lose(self, *sessions: Session) -> None:
        """
        Tell each session its connection is gone, as the reactor does once
        a transport closes.
        """
        for session in sessions:
            self.lost.add(session)
            session.protocol.connectionLost()

    def next_turn(self) -> None:
        """
        Run what was left for the reactor's next turn, and report the loss
        of every connection it aborted.
        """
        self.network.clock.advance(0)
        for session in (self.admin, self.alice, self.bob):
            if session.transport.disconnected and session not in self.lost:
                self.lose(session)

    def test_a_watcher_dropped_while_a_session_goes_offline(self) -> None:
        """
        Alice's OFFLINE takes the admin past his backlog: alice still goes
        offline, staying in her rooms, the admin is cut on the next turn,
        both free their session slots, and #ops goes on working for bob.
        """
        fill_backlog(self.admin.protocol, 5)
        self.lose(self.alice)
        self.assertTrue(self.admin.protocol.closing)
        self.assertFalse(self.admin.transport.disconnected)
        self.next_turn()
        self.assertTrue(self.admin.transport.disconnected)
        self.assertEqual(self.network.factory.session_count, 1)
        self.assertEqual(self.bob.send("WHO"), ["211-bob", "211 1 online"])
        self.assertEqual(
            self.bob.send("WHO #ops"),
            ["211-admin", "211-alice", "211-bob", "211 3 in #ops"],
        )
        self.assertEqual(self.bob.send("SAY #ops still here")[-1][:4], "250 ")
        self.assertEqual(self.bob.send("PART #ops"), ["200 left #ops"])

    def test_nothing_more_is_written_to_a_reader_being_dropped(self) -> None:
        """
        Once the admin is past his backlog nothing more is written to him,
        not even what is told in the same turn before he is cut.
        """
        fill_backlog(self.admin.protocol, 5)
        self.admin.take()
        self.lose(self.alice)
        self.bob.send("SAY #dev after")
        self.assertEqual(self.admin.take(), [])

    def test_readers_dropped_while_a_message_is_delivered_to_a_room(self) -> None:
        """
        A SAY that takes two readers past their backlogs at once drops
        both on the next turn, and the hub stays whole: the sender is
        answered, WHO lists only those left, and the rooms keep their
        members, who are told nothing of rooms.
        """
        carol = self.network.connect("carol")
        carol.send("JOIN #ops")
        carol.send("JOIN #dev")
        self.alice.take()
        fill_backlog(self.bob.protocol, 5)
        fill_backlog(self.alice.protocol, 5)
        self.assertEqual(carol.send("SAY #dev hello")[-1][:4], "250 ")
        self.next_turn()
        self.admin.take()
        self.assertEqual(self.network.factory.session_count, 2)
        self.assertEqual(
            self.admin.send("WHO #ops"),
            ["211-admin", "211-alice", "211-bob", "211-carol", "211 4 in #ops"],
        )
        self.assertEqual(
            self.admin.send("WHO"), ["211-admin", "211-carol", "211 2 online"]
        )
        self.assertEqual(carol.take(), [])
        self.assertEqual(carol.send("PART #ops"), ["200 left #ops"])

    def test_readers_dropped_by_a_broadcast(self) -> None:
        """
        A BROADCAST that takes alice and bob past their backlogs answers
        the admin, and drops both on the next turn: they go offline, and
        stay in their rooms.
        """
        fill_backlog(self.alice.protocol, 5)
        fill_backlog(self.bob.protocol, 5)
        self.assertEqual(self.admin.send("BROADCAST hello")[-1][:4], "250 ")
        self.next_turn()
        self.assertEqual(self.network.factory.session_count, 1)
        self.assertEqual(self.admin.take(), ["OFFLINE alice", "OFFLINE bob"])
        self.assertEqual(
            self.admin.send("WHO #dev"),
            ["211-admin", "211-alice", "211-bob", "211 3 in #dev"],
        )


RELOAD_POLICY = PRESENCE_POLICY + (
    '[[rooms]]\npattern = "#ops"\njoin = ["admin"]\nread = ["user"]\n'
)
"""Users may no longer join #ops, though they may still read it."""


class ReloadCase(SynchronousTestCase):
    """
    A daemon in memory over real TLS, with sessions in the order a test
    names them.
    """

    def setUp(self) -> None:
        self.instance = Instance(self, PRESENCE_POLICY)
        self.server_sides: dict[str, SessionProtocol] = {}

    def log_in(self, *identities: str) -> list[LineClient]:
        """
        Log each identity in, in order, keeping the daemon's side of each
        session in L{server_sides}.
        """
        clients = []
        for identity in identities:
            pair = self.instance.ca.issue(identity)
            client = LineClient(())
            pump = self.instance.connect_protocol(
                client,
                client_tls_options(
                    "localhost",
                    self.instance.ca.pem,
                    pair.certificate_pem,
                    pair.key_pem,
                    None,
                ),
            )
            self.instance.flush()
            server_side = pump.server.wrappedProtocol
            assert isinstance(server_side, SessionProtocol)
            self.server_sides[identity] = server_side
            clients.append(client)
        for client in clients:
            self.assertTrue(client.greeted, client.lines)
            client.take()
        return clients

    def send(self, client: LineClient, *lines: str) -> list[str]:
        client.send(*lines)
        self.instance.flush()
        return client.take()

    def reload(self, admin: LineClient, policy: str) -> list[str]:
        """
        Reload C{policy}; return the admin's reply, with what it was told
        meanwhile kept for its next C{take}.
        """
        self.instance.write("policy.toml", policy.encode())
        admin.send("RELOAD")
        self.instance.flush()
        reply = [line for line in admin.lines if line[:1].isdigit()]
        admin.lines[:] = [line for line in admin.lines if line not in reply]
        return reply


class DropDuringReloadTests(ReloadCase):
    def test_a_reader_dropped_by_a_reloads_announcement_is_still_parted(
        self,
    ) -> None:
        """
        The reload takes alice and bob out of #ops; alice's PARTED takes
        bob past his backlog.  The reload still goes through whole, and bob,
        dropped, leaves #ops like alice.
        """
        admin, alice, bob = self.log_in("admin", "alice", "bob")
        for client in (admin, alice, bob):
            self.send(client, "JOIN #ops")
        admin.take()
        fill_backlog(self.server_sides["bob"], 5)
        reply = self.reload(admin, RELOAD_POLICY)
        self.assertEqual(reply[0][:4], "200 ", reply)
        self.assertIn("rights changed in 2 sessions", reply[0])
        self.assertIsNotNone(bob.lost)
        self.assertEqual(
            admin.take(), ["PARTED #ops alice", "PARTED #ops bob", "OFFLINE bob"]
        )
        self.assertEqual(self.send(admin, "WHO #ops"), ["211-admin", "211 1 in #ops"])
        self.assertEqual(
            self.send(admin, "WHO"), ["211-admin", "211-alice", "211 2 online"]
        )


class ReloadAnnouncesUnderNewGrantsTests(ReloadCase):
    def test_a_watcher_losing_presence_hears_nothing_of_the_same_reload(
        self,
    ) -> None:
        """
        A reload that refuses carol and takes PRESENCE from dana tells the
        admin, who keeps it, that carol went offline, and dana nothing,
        though carol's session was closed before dana's was regranted.
        """
        carol, dana, admin = self.log_in("carol", "dana", "admin")
        policy = PRESENCE_POLICY.replace(
            'default_roles = ["guest"]', "default_roles = []"
        )
        policy = policy.replace('carol = ["user"]\n', "").replace(
            'dana = ["admin"]', 'dana = ["user"]'
        )
        self.assertEqual(self.reload(admin, policy)[0][:4], "200 ")
        self.assertEqual(carol.take(), ["CLOSED refused by the new policy"])
        self.assertEqual(admin.take(), ["OFFLINE carol"])
        self.assertEqual(dana.take(), [])

    def test_a_member_losing_read_hears_nothing_of_the_same_reload(self) -> None:
        """
        A reload that takes alice out of #ops, and from bob the right to
        read it, tells the admin that alice left and bob nothing, though
        alice was parted before bob was regranted.
        """
        alice, bob, admin = self.log_in("alice", "bob", "admin")
        for client in (alice, bob, admin):
            self.send(client, "JOIN #ops")
        admin.take()
        bob.take()
        policy = PRESENCE_POLICY + (
            '[[rooms]]\npattern = "#ops"\njoin = ["user"]\nread = ["admin"]\n'
        )
        policy = policy.replace('alice = ["user"]', 'alice = ["guest"]')
        self.assertEqual(self.reload(admin, policy)[0][:4], "200 ")
        self.assertEqual(admin.take(), ["PARTED #ops alice"])
        self.assertEqual(bob.take(), [])
