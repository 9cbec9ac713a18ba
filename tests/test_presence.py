"""
Presence as it happens, over real TLS: who joins and leaves a room, told
to the room's readers, and who comes online and goes offline, told to the
sessions that hold PRESENCE.
"""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.client.display import show_push
from secmsg.daemon.hub import InProcessHub
from secmsg.daemon.limits import Limits
from tests.harness import POLICY, Instance, LineClient
from tests.sessions import STAMP, Network
from tests.test_delivery import _WaitingStore

PRESENCE_POLICY = (
    POLICY.replace('"METRICS", "BACKUP"]', '"METRICS", "BACKUP", "PRESENCE"]')
    + 'carol = ["user"]\ndana = ["admin"]\n'
    + '[[rooms]]\npattern = "#news"\njoin = ["user"]\nread = ["admin"]\n'
)
"""Admins hold PRESENCE and users do not; in #news users may join but only
admins read."""


class PresenceCase(SynchronousTestCase):
    """
    A daemon in memory with admin, alice and bob logged in over real TLS.
    """

    policy = PRESENCE_POLICY

    def setUp(self) -> None:
        self.instance = Instance(self, self.policy, **self.settings())
        self.admin = self.log_in("admin")
        self.alice = self.log_in("alice")
        self.bob = self.log_in("bob")
        self.admin.take()

    def settings(self) -> dict[str, object]:
        return {}

    def log_in(self, identity: str) -> LineClient:
        client = self.instance.connect(self.instance.ca.issue(identity))
        self.assertTrue(client.greeted, client.lines)
        client.take()
        return client

    def send(self, client: LineClient, *lines: str) -> list[str]:
        """
        Send lines, move every byte, and return what C{client} received.
        """
        client.send(*lines)
        self.instance.flush()
        return client.take()

    def leave(self, client: LineClient) -> None:
        """
        End a session from the client's side, as a closed terminal does.
        """
        client.transport.loseConnection()
        self.instance.flush()


class RoomPresenceTests(PresenceCase):
    def test_joined_reaches_the_rooms_readers_and_no_one_else(self) -> None:
        """
        Bob entering #ops is told to alice, who is in it, and not to bob
        himself nor to the admin, who is not.
        """
        self.send(self.alice, "JOIN #ops")
        self.assertEqual(self.send(self.bob, "JOIN #ops"), ["200 joined #ops"])
        self.assertEqual(self.alice.take(), ["JOINED #ops bob"])
        self.assertEqual(self.admin.take(), [])

    def test_a_member_the_read_rule_excludes_is_told_nothing(self) -> None:
        """
        In #news only admins read: bob, a member who may not read it, hears
        no one join, while the admin hears alice.
        """
        self.send(self.bob, "JOIN #news")
        self.send(self.admin, "JOIN #news")
        self.assertEqual(self.send(self.alice, "JOIN #news"), ["200 joined #news"])
        self.assertEqual(self.admin.take(), ["JOINED #news alice"])
        self.assertEqual(self.bob.take(), [])

    def test_part_is_told_to_the_readers(self) -> None:
        """
        PART tells the room's remaining readers who left.
        """
        self.send(self.alice, "JOIN #ops")
        self.send(self.bob, "JOIN #ops")
        self.alice.take()
        self.assertEqual(self.send(self.bob, "PART #ops"), ["200 left #ops"])
        self.assertEqual(self.alice.take(), ["PARTED #ops bob"])

    def test_a_session_that_ends_stays_in_its_rooms_quietly(self) -> None:
        """
        Membership is the identity's: bob's session ending, by a lost
        connection or a KICK, leaves him in his rooms, and tells the room
        nothing.
        """
        for room in ("#ops", "#dev"):
            self.send(self.alice, f"JOIN {room}")
            self.send(self.bob, f"JOIN {room}")
        self.alice.take()
        self.leave(self.bob)
        again = self.log_in("bob")
        self.send(self.admin, "KICK bob")
        self.assertEqual(self.alice.take(), [])
        self.assertEqual(again.take(), ["KICKED admin no reason given"])
        self.assertEqual(
            self.send(self.alice, "WHO #dev"), ["211-alice", "211-bob", "211 2 in #dev"]
        )

    def test_a_second_session_neither_joins_nor_leaves_aloud(self) -> None:
        """
        bob's second session is in his rooms already: its JOIN says so and
        tells alice nothing, and its PART takes bob out, aloud, once.
        """
        self.send(self.alice, "JOIN #ops")
        self.send(self.bob, "JOIN #ops")
        self.alice.take()
        second = self.log_in("bob")
        self.assertEqual(self.send(second, "JOIN #ops"), ["200 already in #ops"])
        self.assertEqual(self.alice.take(), [])
        self.assertEqual(self.send(second, "PART #ops"), ["200 left #ops"])
        self.assertEqual(self.alice.take(), ["PARTED #ops bob"])
        self.assertEqual(self.send(self.bob, "PART #ops"), ["404 you are not in #ops"])

    def test_presence_in_rooms_is_not_stored(self) -> None:
        """
        Presence is told once, as it happens: a later HISTORY of the room
        holds none of it.
        """
        self.send(self.alice, "JOIN #ops")
        self.send(self.bob, "JOIN #ops", "PART #ops")
        self.assertEqual(self.alice.take(), ["JOINED #ops bob", "PARTED #ops bob"])
        self.assertEqual(self.send(self.alice, "HISTORY #ops"), ["211 0 messages"])


class OnlinePresenceTests(PresenceCase):
    def test_online_and_offline_reach_only_the_holders_of_presence(self) -> None:
        """
        Carol coming online and going offline is told to the admin, who
        holds PRESENCE, and not to alice, who does not.
        """
        carol = self.log_in("carol")
        self.instance.flush()
        self.assertEqual(self.admin.take(), ["ONLINE carol"])
        self.leave(carol)
        self.assertEqual(self.admin.take(), ["OFFLINE carol"])
        self.assertEqual(self.alice.take(), [])

    def test_only_the_first_and_last_sessions_are_told(self) -> None:
        """
        Carol's second session coming and her first going say nothing; her
        last one going says OFFLINE.
        """
        first = self.log_in("carol")
        second = self.log_in("carol")
        self.leave(first)
        self.assertEqual(self.admin.take(), ["ONLINE carol"])
        self.leave(second)
        self.assertEqual(self.admin.take(), ["OFFLINE carol"])

    def test_no_session_is_told_of_its_own_identity(self) -> None:
        """
        Dana holds PRESENCE too: the admin hears of her, and neither she
        nor the admin's own second session hears of itself.
        """
        dana = self.log_in("dana")
        second = self.log_in("admin")
        self.assertEqual(self.admin.take(), ["ONLINE dana"])
        self.assertEqual(dana.take(), [])
        self.assertEqual(second.take(), [])
        self.leave(second)
        self.assertEqual((self.admin.take(), dana.take()), ([], []))

    def test_a_reload_that_grants_presence_applies_at_once(self) -> None:
        """
        A policy reloaded with PRESENCE for users has alice told of the
        next identity online; one that takes it away stops that.
        """
        granting = PRESENCE_POLICY.replace(
            '"ROOMS", "HISTORY"]', '"ROOMS", "HISTORY", "PRESENCE"]'
        )
        self.instance.write("policy.toml", granting.encode())
        self.assertEqual(self.send(self.admin, "RELOAD")[0][:4], "200 ")
        carol = self.log_in("carol")
        self.instance.flush()
        self.assertEqual(self.alice.take(), ["ONLINE carol"])
        self.assertEqual(self.admin.take(), ["ONLINE carol"])
        self.instance.write("policy.toml", PRESENCE_POLICY.encode())
        self.assertEqual(self.send(self.admin, "RELOAD")[0][:4], "200 ")
        self.leave(carol)
        self.assertEqual(self.alice.take(), [])
        self.assertEqual(self.admin.take(), ["OFFLINE carol"])


class ShutdownPresenceTests(PresenceCase):
    def test_shutdown_tells_each_session_only_that_it_closes(self) -> None:
        """
        At shutdown every session hears CLOSED and nothing of the others
        leaving its rooms or going offline: they are all going, and telling
        each of the rest would cost the square of their number.
        """
        for client in (self.admin, self.alice, self.bob):
            self.send(client, "JOIN #ops")
        self.admin.take()
        self.alice.take()
        self.instance.daemon.sessions.close_all("server shutting down")
        self.instance.flush()
        for client in (self.admin, self.alice, self.bob):
            self.assertEqual(client.take(), ["CLOSED server shutting down"])


class RefusedLoginPresenceTests(PresenceCase):
    def settings(self) -> dict[str, object]:
        return {"limits": Limits(max_sessions=3)}

    def test_a_login_refused_for_a_limit_is_never_announced(self) -> None:
        """
        Carol's login past the daemon's session limit is refused: she was
        never greeted, so the admin hears neither ONLINE nor OFFLINE.
        """
        carol = self.instance.connect(self.instance.ca.issue("carol"))
        self.assertEqual(carol.take()[0][:4], "503 ")
        self.assertEqual(self.admin.take(), [])


class HeldPresenceTests(SynchronousTestCase):
    def test_presence_waits_behind_what_waited_at_login(self) -> None:
        """
        Carol coming online while the admin's waiting mail is still being
        read is told after that mail, in its place among the pushes.
        """
        store = _WaitingStore()
        network = Network(PRESENCE_POLICY, store=store)
        network.connect("alice").send("MSG admin old")
        store.commit()
        store.slow_mailboxes = True
        admin = network.connect("admin")
        admin.take()
        network.connect("carol")
        self.assertEqual(admin.take(), [])
        store.read_mailboxes()
        self.assertEqual(admin.take(), [f"MSG 1 {STAMP} alice old", "ONLINE carol"])


class _Avatar:
    """
    An avatar that counts how often its room rights are asked.
    """

    commands = frozenset({"JOIN"})

    def __init__(self, identity: str, asked: list[str]) -> None:
        self.identity = identity
        self._asked = asked

    def may_read(self, room: str) -> bool:
        self._asked.append(room)
        return True


class _Peer:
    """
    A peer that counts the presence lines it is sent.
    """

    def __init__(self) -> None:
        self.heard: list[bytes] = []

    def announce(self, line: bytes) -> None:
        self.heard.append(line)


class PresenceCostTests(SynchronousTestCase):
    def test_a_join_asks_each_member_once_and_formats_one_line(self) -> None:
        """
        The thousandth member joining a room costs one look at each member
        and shares one line between them: a room filling up does not cost
        the square of its size at each join.
        """
        hub = InProcessHub()
        asked: list[str] = []
        peers = [_Peer() for _ in range(1000)]
        for number, peer in enumerate(peers):
            hub.attach(_Avatar(f"user{number}", asked), peer)
        members = {f"user{number}" for number in range(1000)}
        hub.joined("#big", "user999", members)
        self.assertEqual(len(asked), 999)
        lines = {id(peer.heard[-1]) for peer in peers[:-1]}
        self.assertEqual(len(lines), 1)
        self.assertEqual(peers[0].heard[-1], b"JOINED #big user999\n")
        self.assertEqual(peers[-1].heard, [])


class ClientPresenceTests(SynchronousTestCase):
    def test_presence_pushes_are_split_and_shown_in_words(self) -> None:
        """
        The client knows the four presence pushes: it splits their fields
        and shows them as sentences, escaped.
        """
        when = datetime(2026, 6, 1, 9, 30, 5, tzinfo=UTC)
        shown = {
            "JOINED #ops bob": "[09:30:05] bob joined #ops",
            "PARTED #ops bob": "[09:30:05] bob left #ops",
            "ONLINE carol": "[09:30:05] carol is online",
            "OFFLINE carol": "[09:30:05] carol went offline",
        }
        for line, words in shown.items():
            push = wire.parse_server_line(line)
            self.assertIsInstance(push, wire.PushLine)
            assert isinstance(push, wire.PushLine)
            self.assertEqual(push.kind, line.split()[0])
            self.assertEqual(show_push(push, when), words)
