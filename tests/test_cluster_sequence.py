"""
The cluster's messages pushed in id order, whichever daemon committed each
and in whatever order the bus brings their segments; what the bus lost,
read from the database.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from secmsg.daemon.cluster.sequence import END, GAP_WAIT, Sequencer
from secmsg.daemon.interfaces import IPeer
from secmsg.daemon.store.shared_database import Segment
from secmsg.errors import StoreError
from secmsg.messages import Stored
from tests.test_store import NOW, direct


@implementer(IPeer)
class Sender:
    """
    The session a room message was said in, which it must skip.
    """


def message(message_id: int) -> Stored:
    return Stored.of(message_id, direct("alice", "bob", f"text {message_id}", NOW))


def segment(previous: int, last: int) -> Segment:
    return Segment(
        previous, last, tuple(message(i) for i in range(previous + 1, last + 1))
    )


class Sequence(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pushed: list[tuple[int, object]] = []
        self.database = {i: message(i) for i in range(1, 100)}
        self.head = 99
        self.reads: list[tuple[int, int]] = []
        self.failing = False
        self.sequencer = Sequencer(
            0, lambda m, skip: self.pushed.append((m.id, skip)), self.fetch, self.clock
        )

    def fetch(
        self, after: int, up_to: int, limit: int
    ) -> defer.Deferred[tuple[list[Stored], int]]:
        self.reads.append((after, up_to))
        if self.failing:
            return defer.fail(StoreError("the database is out of reach"))
        ids = sorted(i for i in self.database if after < i <= up_to)[:limit]
        return defer.succeed(([self.database[i] for i in ids], self.head))

    def ids(self) -> list[int]:
        return [message_id for message_id, _ in self.pushed]

    def test_segments_in_order_are_pushed_at_once(self) -> None:
        self.sequencer.offer(segment(0, 2), own=False)
        self.sequencer.offer(segment(2, 3), own=False)
        self.assertEqual(self.ids(), [1, 2, 3])
        self.assertEqual(self.sequencer.head, 3)

    def test_a_later_segment_waits_for_the_one_before(self) -> None:
        """
        Two daemons' segments arrive the wrong way round: nothing is pushed
        until the first comes, then both, in id order.
        """
        self.sequencer.offer(segment(2, 4), own=False)
        self.assertEqual(self.ids(), [])
        self.sequencer.offer(segment(0, 2), own=False)
        self.assertEqual(self.ids(), [1, 2, 3, 4])
        self.clock.advance(GAP_WAIT)
        self.assertEqual(self.reads, [])

    def test_a_segment_the_bus_lost_is_read_from_the_database(self) -> None:
        self.sequencer.offer(segment(3, 5), own=False)
        self.clock.advance(GAP_WAIT)
        self.assertEqual(self.reads, [(0, 3)])
        self.assertEqual(self.ids(), [1, 2, 3, 4, 5])
        # Late, it changes nothing.
        self.sequencer.offer(segment(0, 3), own=False)
        self.assertEqual(self.ids(), [1, 2, 3, 4, 5])

    def test_a_gap_of_nothing_committed_moves_the_head(self) -> None:
        """
        Ids that a rolled-back transaction took are in no segment: the read
        finds nothing there, and the waiting segment follows.
        """
        del self.database[1], self.database[2]
        self.sequencer.offer(segment(2, 3), own=False)
        self.clock.advance(GAP_WAIT)
        self.assertEqual(self.ids(), [3])

    def test_our_own_messages_wait_to_be_handed_over(self) -> None:
        """
        Our own segment is known before delivery hands its messages over
        with the session each skips; each is pushed then, in order.
        """
        sender = Sender()
        own = segment(0, 2)
        self.sequencer.offer(own, own=True)
        self.sequencer.offer(segment(2, 3), own=False)
        self.assertEqual(self.ids(), [])
        self.sequencer.hand_over(own.messages[1], None)
        self.assertEqual(self.ids(), [])
        self.sequencer.hand_over(own.messages[0], sender)  # type: ignore[arg-type]
        self.assertEqual(self.pushed, [(1, sender), (2, None), (3, None)])

    def test_a_message_never_handed_over_stops_nothing(self) -> None:
        self.sequencer.offer(segment(0, 1), own=True)
        self.sequencer.offer(segment(1, 2), own=False)
        self.clock.advance(GAP_WAIT)
        self.assertEqual(self.ids(), [1, 2])

    def test_catching_up_reads_everything_after_the_head(self) -> None:
        self.sequencer.offer(segment(0, 1), own=False)
        self.sequencer.catch_up()
        self.assertEqual(self.reads, [(1, END)])
        self.assertEqual(self.ids(), list(range(1, 100)))

    def test_a_failed_read_is_tried_again(self) -> None:
        self.failing = True
        self.sequencer.offer(segment(2, 3), own=False)
        self.clock.advance(GAP_WAIT)
        self.assertEqual(self.ids(), [])
        self.failing = False
        self.clock.advance(GAP_WAIT)
        self.assertEqual(self.ids()[:3], [1, 2, 3])
        self.flushLoggedErrors()

    def test_a_head_beyond_the_database_is_not_believed(self) -> None:
        """
        A daemon's word that it has had more than the database holds (a
        forged beat, or a segment beyond its head) does not move the head:
        what really comes next is still pushed.
        """
        self.sequencer.heard_of(10**15)
        self.sequencer.offer(Segment(10**15, 10**15 + 1, ()), own=False)
        self.clock.advance(GAP_WAIT)
        self.assertEqual(self.sequencer.head, 99)
        self.database[100] = message(100)
        self.head = 100
        self.sequencer.offer(segment(99, 100), own=False)
        self.assertEqual(self.ids()[-1], 100)
        self.clock.advance(GAP_WAIT * 4)
        self.assertEqual(len(self.reads), 1)
        self.flushLoggedErrors()
