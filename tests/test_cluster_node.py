"""
One daemon of a cluster against the bus in memory and a real PostgreSQL
store: what it reads from the database when the bus comes back, what it
refuses off the bus, who it tells comes and goes elsewhere, and the
sessions there that count against a limit here and that the admin
interface lists.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from secmsg.daemon.cluster import events
from secmsg.daemon.cluster.bus import MemoryBus
from secmsg.daemon.cluster.envelope import FRESH, Envelope
from secmsg.daemon.cluster.hub import ClusterHub
from secmsg.daemon.cluster.node import ClusterNode
from secmsg.daemon.cluster.presence import EXPIRY, Elsewhere
from secmsg.daemon.hub import InProcessHub
from secmsg.daemon.interfaces import IBus, IPeer
from secmsg.daemon.limits import Limits
from secmsg.daemon.policy import PRESENCE
from secmsg.daemon.store.postgresql import PostgresStore
from secmsg.daemon.store.shared_database import Segment
from secmsg.daemon.store.worker import ImmediateWorker
from secmsg.messages import Stored
from tests.harness import Instance
from tests.servers import shared_postgres
from tests.sessions import Network
from tests.test_admin import AdminClient
from tests.test_store import NOW, direct


@implementer(IPeer)
class Peer:
    """
    A session as the hub sees it, keeping what it is sent.
    """

    certificate_chain: list[Any] = []
    address = "127.0.0.1:1"

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def push(self, line: bytes, message_id: int) -> None:
        self.lines.append(line)

    def announce(self, line: bytes) -> None:
        self.lines.append(line)

    def kick(self, by: str, reason: str) -> None:
        self.lines.append(f"KICKED {by} {reason}\n".encode())


class Avatar:
    """
    What the hub asks of a session's avatar.
    """

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.commands = frozenset({PRESENCE})

    def may_read(self, room: str) -> bool:
        return True


class NodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.url = shared_postgres().new_database()
        self.subscribers: list[Any] = []
        self.bus = MemoryBus(self.clock, self.subscribers)
        self.store = PostgresStore(self.url, ImmediateWorker, self.clock, shared=True)
        self.store.open()
        self.addCleanup(self.store.close)
        self.elsewhere = Elsewhere(self.clock)
        self.local = InProcessHub(self.elsewhere.is_online)
        self.node = ClusterNode(
            "b",
            self.bus,
            self.store,
            self.local,
            self.elsewhere,
            self.clock,
            lambda f, *a: f(*a),
        )
        self.node.start()
        self.addCleanup(self.node.stop)
        self.bob = self.attach("bob")
        # Another daemon of the cluster, sealing with the key the store made.
        self.seal = Envelope(self.store.bus_key, "elsewhere", self.clock.seconds).seal

    def attach(self, identity: str) -> Peer:
        peer = Peer()
        self.local.attach(Avatar(identity), peer)  # type: ignore[arg-type]
        self.local.greeted(peer)
        return peer

    def test_provides_the_bus_interface(self) -> None:
        self.assertTrue(IBus.providedBy(self.bus))

    def test_what_the_bus_missed_is_read_when_it_comes_back(self) -> None:
        """
        Another daemon commits a message while the bus is lost: none of
        its segment comes; once the bus is back, this daemon reads it from
        the database and pushes it.
        """
        other = PostgresStore(self.url, ImmediateWorker, Clock(), shared=True)
        other.open()
        self.addCleanup(other.close)
        self.successResultOf(other.remember("bob", NOW))
        self.successResultOf(other.accept(direct("alice", "bob", "missed"), {"bob"}))
        self.assertEqual(self.bob.lines, [])
        self.bus.come_back()
        self.assertEqual(len(self.bob.lines), 1)
        self.assertIn(b"alice missed", self.bob.lines[0])

    def test_what_a_dead_daemon_did_not_announce_is_read(self) -> None:
        """
        Daemon a beats, commits a message (and may have confirmed it), and
        dies before its segment reaches the bus: once a's beats are known
        to have stopped, this daemon reads the message from the database
        and pushes it.
        """
        self.bus.publish(self.seal(events.Present("a", {}, 0)))
        self.clock.advance(0)
        other = PostgresStore(self.url, ImmediateWorker, Clock(), shared=True)
        other.open()
        self.addCleanup(other.close)
        self.successResultOf(other.remember("bob", NOW))
        self.successResultOf(other.accept(direct("alice", "bob", "unsaid"), {"bob"}))
        self.clock.pump([0.25] * int(EXPIRY / 0.25 - 2))
        self.assertEqual(self.bob.lines, [])
        self.clock.pump([0.25] * 4)
        self.assertEqual(len(self.bob.lines), 1)
        self.assertIn(b"alice unsaid", self.bob.lines[0])

    def test_a_bad_bus_message_changes_nothing(self) -> None:
        """
        A segment, sealed, whose text holds an escape sequence, or whose
        sender is no name, is refused.
        """
        hostile = self.seal(
            events.Committed(
                "a",
                Segment(0, 1, (Stored.of(1, direct("alice", "bob", "\x1b[2Jx")),)),
            )
        )
        unnamed = self.seal(
            events.Committed(
                "a", Segment(0, 1, (Stored.of(1, direct("al ice", "bob", "hi")),))
            )
        )
        for text in (hostile, unnamed):
            self.bus.publish(text)
        self.clock.advance(0)
        self.assertEqual(self.bob.lines, [])
        self.assertEqual(self.node.sequencer.head, 0)

    def test_only_the_cluster_speaks_on_the_bus(self) -> None:
        """
        A bus message not sealed with the cluster's key (a stranger on
        Redis), or sealed long ago (a replay), is refused: no KICK, no
        message pushed.
        """
        kick = events.Kicked("a", "bob", "admin", "forged")
        stranger = Envelope(b"not the key", "elsewhere", self.clock.seconds)
        self.bus.publish(stranger.seal(kick))
        sealed_long_ago = self.seal(kick)
        self.clock.advance(FRESH + 1)
        self.bus.publish(sealed_long_ago)
        self.clock.advance(0)
        self.assertEqual(self.bob.lines, [])
        self.bus.publish(self.seal(kick))
        self.clock.advance(0)
        self.assertEqual(self.bob.lines, [b"KICKED admin forged\n"])

    def test_who_comes_and_goes_on_another_daemon(self) -> None:
        """
        A beat from daemon a with carol on it: ONLINE carol here, and WHO
        lists her; a stops beating: OFFLINE carol, and she is gone.
        """
        self.bus.publish(self.seal(events.Present("a", {"carol": 1}, 0)))
        self.clock.advance(0)
        self.assertEqual(self.bob.lines, [b"ONLINE carol\n"])
        self.assertTrue(self.elsewhere.is_online("carol"))
        self.clock.pump([0.25] * int(EXPIRY / 0.25 + 2))
        self.assertEqual(self.bob.lines[-1], b"OFFLINE carol\n")
        self.assertFalse(self.elsewhere.is_online("carol"))

    def test_sessions_on_another_daemon_count_against_the_limit(self) -> None:
        """
        With a limit of two sessions an identity, alice holds one here and
        daemon a says she holds one there: a second login here is refused
        in words; once a stops beating, it is let in.
        """
        network = Network(
            limits=Limits(max_per_identity=2),
            store=self.store,
            hub=ClusterHub(self.local, self.node),
        )
        self.assertIn("you are alice", network.connect("alice").take()[0])
        self.bus.publish(self.seal(events.Present("a", {"alice": 1}, 0)))
        self.clock.advance(0)
        refused = network.connect("alice")
        self.assertEqual(refused.take(), ["503 too many sessions for alice (limit 2)"])
        self.clock.pump([0.25] * int(EXPIRY / 0.25 + 2))
        self.assertIn("you are alice", network.connect("alice").take()[0])

    def test_a_replayed_beat_is_refused(self) -> None:
        """
        Someone on Redis sends again an older beat of daemon a's, which
        held carol's sessions, after a newer one without her: it is
        refused, and carol is not counted.
        """
        old = self.seal(events.Present("a", {"carol": 16}, 0))
        self.clock.advance(1)
        self.bus.publish(self.seal(events.Present("a", {}, 0)))
        self.bus.publish(old)
        self.clock.advance(0)
        self.assertEqual(self.elsewhere.sessions("carol"), 0)
        self.assertEqual(self.bob.lines, [])

    def test_the_admin_interface_lists_the_sessions_on_another_daemon(self) -> None:
        """
        Daemon a says carol holds two sessions there: GET /v1/sessions
        here lists them under C{elsewhere}, with daemon a's name, and no
        longer once a stops beating.
        """
        # Only daemon a's sessions: bob's fake avatar has no roles to list.
        self.local.detach(self.bob)
        instance = Instance(self, hub=ClusterHub(self.local, self.node))
        web, admin = AdminClient(instance), instance.ca.issue("admin")
        self.bus.publish(self.seal(events.Present("a", {"carol": 2}, 0)))
        self.clock.advance(0)
        listed = web.request(admin, "GET", "/v1/sessions").json()
        self.assertEqual(
            listed["elsewhere"],
            [{"node": "a", "identity": "carol", "sessions": 2, "rooms": []}],
        )
        self.clock.pump([0.25] * int(EXPIRY / 0.25 + 2))
        self.assertEqual(
            web.request(admin, "GET", "/v1/sessions").json()["elsewhere"], []
        )
