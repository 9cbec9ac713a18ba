"""
The bounds on rooms over real TLS: the rooms one identity may be in, by
any of its sessions, and the rooms the daemon holds.  A JOIN past either
is refused in words, recorded, and changes nothing; leaving makes room.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon.limits import Limits, RoomLimits
from tests.harness import POLICY, Instance, LineClient
from tests.test_audit import record_events, records

PAST_PER_IDENTITY = (
    "403 JOIN not permitted for alice: already in 2 rooms, the most one "
    "identity may be in (max-rooms-per-identity); PART one to join another"
)

PAST_THE_SERVER = (
    "403 JOIN not permitted for admin: the server holds 3 rooms, the most it "
    "may (max-rooms); join one that has members, or try again later"
)


class RoomLimitTests(SynchronousTestCase):
    """
    A daemon that lets an identity be in two rooms, and holds three.
    """

    def setUp(self) -> None:
        self.audit = record_events(self)
        self.instance = Instance(
            self,
            POLICY,
            limits=Limits(rooms=RoomLimits(max_rooms=3, max_per_identity=2)),
        )
        self.alice = self.log_in("alice")
        self.bob = self.log_in("bob")

    def log_in(self, identity: str) -> LineClient:
        client = self.instance.connect(self.instance.ca.issue(identity))
        client.take()
        return client

    def ask(self, client: LineClient, *lines: str) -> list[str]:
        client.send(*lines)
        self.instance.flush()
        return client.take()

    def test_join_past_the_identitys_limit_is_refused_and_changes_nothing(
        self,
    ) -> None:
        """
        The JOIN past max-rooms-per-identity gets 403 naming the limit and
        how to make room; the room's members hear no JOINED, and ROOMS and
        WHO are as they were.
        """
        self.ask(self.bob, "JOIN #tea")
        self.ask(self.alice, "JOIN #a", "JOIN #b")
        before = self.ask(self.bob, "ROOMS", "WHO #tea")
        self.assertEqual(self.ask(self.alice, "JOIN #tea"), [PAST_PER_IDENTITY])
        self.assertEqual(self.bob.take(), [], "no JOINED for a refused JOIN")
        self.assertEqual(self.ask(self.bob, "ROOMS", "WHO #tea"), before)
        self.assertEqual(before[-1], "211 1 in #tea")
        self.assertEqual(self.ask(self.alice, "SAY #tea hi")[0][:4], "403 ")

    def test_refusal_is_recorded_with_its_reason(self) -> None:
        """
        The operator's audit trail names who was refused and the limit.
        """
        self.ask(self.alice, "JOIN #a", "JOIN #b", "JOIN #c")
        (denied,) = [r for r in records(self.audit) if r["event"] == "denied"]
        self.assertEqual((denied["identity"], denied["verb"]), ("alice", "JOIN"))
        self.assertEqual(denied["rule"], PAST_PER_IDENTITY.split(": ", 1)[1])

    def test_the_limit_counts_rooms_across_the_identitys_sessions(self) -> None:
        """
        A second session brings no more rooms: it is in its identity's
        rooms already, which costs nothing.
        """
        self.ask(self.alice, "JOIN #a", "JOIN #b")
        again = self.log_in("alice")
        self.assertEqual(self.ask(again, "JOIN #c"), [PAST_PER_IDENTITY])
        self.assertEqual(self.ask(again, "JOIN #a"), ["200 already in #a"])

    def test_part_makes_room_again(self) -> None:
        """
        Once alice has left a room by PART she may join another; her
        session ending leaves her rooms hers, and counted.
        """
        self.ask(self.alice, "JOIN #a", "JOIN #b")
        self.assertEqual(self.ask(self.alice, "PART #a"), ["200 left #a"])
        self.assertEqual(self.ask(self.alice, "JOIN #c"), ["200 joined #c"])
        self.assertEqual(self.ask(self.alice, "JOIN #d"), [PAST_PER_IDENTITY])
        self.alice.transport.loseConnection()
        self.instance.flush()
        again = self.log_in("alice")
        self.assertEqual(self.ask(again, "JOIN #d"), [PAST_PER_IDENTITY])
        self.assertEqual(
            self.ask(again, "PART #b", "JOIN #d"), ["200 left #b", "200 joined #d"]
        )

    def test_join_that_would_pass_the_servers_rooms_is_refused(self) -> None:
        """
        Past max-rooms, a JOIN that would create a room is refused in words
        and creates none; one into a room with members is still taken, and
        a room that empties makes room for a new one.
        """
        admin = self.log_in("admin")
        self.ask(self.alice, "JOIN #a", "JOIN #b")
        self.ask(self.bob, "JOIN #c")
        rooms = self.ask(self.bob, "ROOMS")
        self.assertEqual(self.ask(admin, "JOIN #d"), [PAST_THE_SERVER])
        self.assertEqual(self.ask(self.bob, "ROOMS"), rooms)
        self.assertEqual(rooms[-1], "211 3 rooms")
        self.assertEqual(self.ask(admin, "JOIN #c"), ["200 joined #c"])
        self.ask(self.alice, "PART #a")
        self.assertEqual(self.ask(admin, "JOIN #d"), ["200 joined #d"])

    def test_reload_taking_a_session_out_of_a_room_makes_room(self) -> None:
        """
        A reload never puts a session in a room, only takes it out: a room
        it takes alice out of no longer counts against her.
        """
        self.ask(self.alice, "JOIN #ops-db", "JOIN #b")
        self.instance.write(
            "policy.toml",
            (POLICY + '[[rooms]]\npattern = "#ops-*"\njoin = ["admin"]\n').encode(),
        )
        self.instance.daemon.reloader.reload()
        self.instance.flush()
        self.assertEqual(
            self.alice.take(),
            ["NOTICE you have left #ops-db: the policy no longer lets you join it"],
        )
        self.assertEqual(self.ask(self.alice, "JOIN #c"), ["200 joined #c"])
