"""
Store-and-forward through the protocol: messages for offline identities,
acknowledgements and redelivery, history and its permissions, a failing
store, and replies kept in order while commands wait for the store.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from datetime import datetime

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from secmsg.clock import clock_time
from secmsg.daemon.commands import HISTORY_BYTES
from secmsg.daemon.delivery import PAGE_SIZE, Delivery
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.pipeline import PIPELINE_DEPTH, PIPELINE_RESUME
from secmsg.daemon.store.memory import MemoryStore
from secmsg.errors import MailboxFull, StoreError
from secmsg.messages import Draft, Kind, Stored, WaitingLimit
from tests.harness import capture_log
from tests.sessions import STAMP, Network


def leave(session) -> None:  # type: ignore[no-untyped-def]
    session.protocol.connectionLost(Failure(ConnectionDone()))


class StoreAndForwardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.log = capture_log(self)
        self.network = Network()
        self.alice = self.network.connect("alice")
        self.alice.take()

    def test_offline_known_identity_gets_messages_at_login_in_order(self) -> None:
        """
        bob (named by the policy) is offline: alice's messages are accepted,
        and bob gets them right after his greeting, oldest first.
        """
        self.assertEqual(self.alice.send("MSG bob one"), ["250 1"])
        self.assertEqual(self.alice.send("MSG bob two"), ["250 2"])
        bob = self.network.connect("bob")
        self.assertEqual(
            bob.take(),
            [
                "200 secmsg 0.1.0 ready; you are bob (roles: user)"
                "; protocol 1.0; capabilities store,ack-upto,history,"
                "rooms,broadcast,presence"
                "; rate 1000000/s, burst 3000000, 3000000 left",
                f"MSG 1 {STAMP} alice one",
                f"MSG 2 {STAMP} alice two",
            ],
        )
        self.assertTrue(
            any("delivered 2 waiting message(s) to bob" in e for e in self.log)
        )

    def test_identity_seen_before_is_known(self) -> None:
        """
        carol is not in the policy; once she has logged in, messages to her
        are kept while she is away.
        """
        self.assertEqual(
            self.alice.send("MSG carol hi"), ["404 no such identity carol"]
        )
        leave(self.network.connect("carol"))
        self.assertEqual(self.alice.send("MSG carol hi"), ["250 1"])

    def test_unacknowledged_messages_come_back_marked(self) -> None:
        """
        A message pushed to a session that ended before ACK is sent again
        at the next login, marked REDELIVERED; once acknowledged, never.
        """
        bob = self.network.connect("bob")
        bob.take()
        self.alice.send("MSG bob first")
        self.alice.send("MSG bob second")
        self.assertEqual(len(bob.take()), 2)
        self.assertEqual(bob.send("ACK 1"), ["200 acknowledged 1"])
        leave(bob)
        again = self.network.connect("bob")
        self.assertEqual(again.take()[1:], [f"REDELIVERED MSG 2 {STAMP} alice second"])
        self.assertEqual(again.send("ACK UPTO 2"), ["200 acknowledged 1"])
        leave(again)
        self.assertEqual(self.network.connect("bob").take()[1:], [])

    def test_ack_is_for_ones_own_messages(self) -> None:
        """
        ACK of a message that was never yours is 404; malformed ACKs are
        400 with the usage.
        """
        bob = self.network.connect("bob")
        self.alice.send("MSG bob hi")
        self.assertEqual(self.alice.send("ACK 1"), ["404 no message 1 for alice"])
        self.assertEqual(bob.send("ACK 1")[-1], "200 acknowledged 1")
        for bad in ("ACK", "ACK x", "ACK UPTO", "ACK 0", "ACK 1 2"):
            self.assertEqual(bob.send(bad), ["400 usage: ACK [UPTO] <id>"])

    def test_room_messages_are_kept_for_members_only(self) -> None:
        """
        A SAY is kept for the identities in the room when it was said; a
        member whose session ends before ACK gets it at the next login.
        """
        bob = self.network.connect("bob")
        for session in (self.alice, bob):
            session.send("JOIN #ops")
        bob.take()
        self.alice.send("SAY #ops deploy")
        self.assertEqual(bob.take(), [f"SAY 1 {STAMP} #ops alice deploy"])
        leave(bob)
        again = self.network.connect("bob")
        self.assertEqual(
            again.take()[1:], [f"REDELIVERED SAY 1 {STAMP} #ops alice deploy"]
        )
        admin = self.network.connect("admin")
        self.assertEqual(admin.take()[1:], [])

    def test_ack_upto_from_another_session_takes_what_both_were_sent(
        self,
    ) -> None:
        """
        Room membership is the identity's: both of bob's sessions are sent
        the room's message, so either one's ACK UPTO acknowledges it with
        the direct one, and nothing comes again at the next login.
        """
        first = self.network.connect("bob")
        second = self.network.connect("bob")
        first.send("JOIN #ops")
        self.alice.send("JOIN #ops")
        first.take()
        second.take()
        self.assertEqual(self.alice.send("SAY #ops deploy"), ["250 1"])
        self.assertEqual(self.alice.send("MSG bob hi"), ["250 2"])
        sent = [f"SAY 1 {STAMP} #ops alice deploy", f"MSG 2 {STAMP} alice hi"]
        self.assertEqual(second.take(), sent)
        leave(first)
        self.assertEqual(second.send("ACK UPTO 2"), ["200 acknowledged 2"])
        self.assertEqual(self.network.connect("bob").take()[1:], [])

    def test_broadcast_reaches_known_identities_offline(self) -> None:
        """
        A broadcast is kept for every known identity but its sender.
        """
        admin = self.network.connect("admin")
        admin.send("BROADCAST maintenance")
        bob = self.network.connect("bob")
        self.assertEqual(bob.take()[1:], [f"BROADCAST 1 {STAMP} admin maintenance"])
        leave(admin)
        self.assertEqual(self.network.connect("admin").take()[1:], [])


class HistoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.network = Network()
        self.alice = self.network.connect("alice")
        self.bob = self.network.connect("bob")
        for session in (self.alice, self.bob):
            session.take()

    def test_room_history_for_members_only(self) -> None:
        """
        HISTORY #room gives the last n messages to a member, oldest first;
        a session not in the room gets 403.
        """
        for session in (self.alice, self.bob):
            session.send("JOIN #ops")
        for n in range(3):
            self.alice.send(f"SAY #ops note {n}")
        self.bob.take()
        self.assertEqual(
            self.bob.send("HISTORY #ops 2"),
            [
                f"211-2 {STAMP} #ops alice note 1",
                f"211-3 {STAMP} #ops alice note 2",
                "211 2 messages",
            ],
        )
        admin = self.network.connect("admin")
        admin.take()
        self.assertEqual(
            admin.send("HISTORY #ops"),
            ["403 HISTORY not permitted for admin: not a member of #ops"],
        )

    def test_conversation_history_is_ones_own(self) -> None:
        """
        HISTORY <identity> gives the direct messages between the two of
        you, both ways, and nobody else's.
        """
        self.alice.send("MSG bob hi bob")
        self.bob.send("MSG alice hi alice")
        self.alice.take()
        admin = self.network.connect("admin")
        admin.send("MSG bob from admin")
        self.assertEqual(
            self.alice.send("HISTORY bob"),
            [
                f"211-1 {STAMP} alice hi bob",
                f"211-2 {STAMP} bob hi alice",
                "211 2 messages",
            ],
        )
        self.assertEqual(admin.send("HISTORY alice"), ["211 0 messages"])


class _FullStore(MemoryStore):
    """
    A store whose disk is full: every accept fails.
    """

    def accept(self, draft: Draft, recipients: Set[str]) -> defer.Deferred[Stored]:
        self.failing = True
        return super().accept(draft, recipients)


class _WaitingStore(MemoryStore):
    """
    A store that commits only when the test says so (L{commit}), and once
    C{slow_mailboxes} is set, reads mailboxes only when it says so too
    (L{read_mailboxes}).
    """

    def __init__(self) -> None:
        super().__init__()
        self.slow_mailboxes = False
        self._commits: list[tuple[defer.Deferred[object], object]] = []
        self._reads: list[tuple[defer.Deferred[object], object]] = []

    def accept(self, draft: Draft, recipients: Set[str]) -> defer.Deferred[Stored]:
        return _later(super().accept(draft, recipients), self._commits)

    def pending(
        self, identity: str, after: int, limit: int, rooms: frozenset[str]
    ) -> defer.Deferred:
        found = super().pending(identity, after, limit, rooms)
        return _later(found, self._reads) if self.slow_mailboxes else found

    def commit(self, count: int | None = None) -> None:
        """
        Commit every message waiting, or the oldest C{count} of them.
        """
        waiting = self._commits[:count]
        del self._commits[:count]
        _fire_all(waiting)

    def read_mailboxes(self) -> None:
        _fire_all(self._reads)


def _later(done: defer.Deferred, queue: list) -> defer.Deferred:
    """
    A Deferred of C{done}'s result that fires when the test says so.
    """
    results: list[object] = []
    done.addCallback(results.append)
    later: defer.Deferred[object] = defer.Deferred()
    queue.append((later, results[0]))
    return later


def _fire_all(queue: list) -> None:
    waiting = queue[:]
    queue.clear()
    for later, result in waiting:
        later.callback(result)


class _UnreadableStore(MemoryStore):
    """
    A store whose mailboxes cannot be read.
    """

    def pending(
        self, identity: str, after: int, limit: int, rooms: frozenset[str]
    ) -> defer.Deferred:
        return defer.fail(StoreError("disk I/O error"))


class _CountingStore(MemoryStore):
    """
    A store that counts what logins ask of it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def pending(
        self, identity: str, after: int, limit: int, rooms: frozenset[str]
    ) -> defer.Deferred:
        self.asked.append(f"pending {identity}")
        return super().pending(identity, after, limit, rooms)

    def remember(self, identity: str, when: datetime) -> defer.Deferred[None]:
        if not self.knows(identity):
            self.asked.append(f"remember {identity}")
        return super().remember(identity, when)


class LoginCostTests(SynchronousTestCase):
    def test_a_login_with_nothing_waiting_asks_the_store_nothing(self) -> None:
        """
        An identity known already, with nothing waiting (the store counts
        it in memory), logs in without a write or a query; one with a
        message waiting has its mail read.
        """
        store = _CountingStore()
        network = Network(store=store)
        leave(network.connect("bob"))
        self.assertEqual(store.asked, ["remember bob"])
        leave(network.connect("bob"))
        self.assertEqual(store.asked, ["remember bob"])
        network.connect("alice").send("MSG bob hi")
        network.connect("bob")
        self.assertEqual(store.asked, ["remember bob", "remember alice", "pending bob"])


class StoreFailureAndOrderTests(SynchronousTestCase):
    def test_unreadable_mailbox_closes_the_session(self) -> None:
        """
        If what waited cannot be read, newer messages must not overtake it:
        the session is closed with words, and the failure logged.
        """
        log = capture_log(self)
        network = Network(store=_UnreadableStore())
        network.connect("alice").send("MSG bob waits")
        bob = network.connect("bob")
        self.assertEqual(
            bob.take()[1:], ["CLOSED message store failed; try again later"]
        )
        self.assertTrue(bob.closed)
        self.assertTrue(any("could not read the mailbox of bob" in e for e in log))

    def test_history_is_cut_to_a_size(self) -> None:
        """
        A HISTORY of long messages gives the newest that fit, and says how
        many older ones it left out.
        """
        network = Network()
        alice = network.connect("alice")
        alice.send("JOIN #ops")
        long = "x" * 4000
        for _ in range(100):
            alice.send(f"SAY #ops {long}")
        reply = alice.send("HISTORY #ops 100")
        self.assertLess(len("\n".join(reply).encode()), HISTORY_BYTES)
        self.assertRegex(reply[-1], r"^211 \d+ messages \(older ones left out")
        self.assertEqual(reply[-2].split()[0], "211-100")

    def test_full_disk_is_503_never_250_and_the_session_goes_on(self) -> None:
        """
        When the store cannot commit, the sender gets 503, the recipient
        gets nothing, the failure is logged, and other commands still work.
        """
        log = capture_log(self)
        network = Network(store=_FullStore())
        alice, bob = network.connect("alice"), network.connect("bob")
        alice.take()
        bob.take()
        reply = alice.send("MSG bob hi")
        self.assertEqual(len(reply), 1)
        self.assertTrue(reply[0].startswith("503 not done, the message store failed"))
        self.assertEqual(bob.take(), [])
        self.assertEqual(alice.send("PING"), ["200 PONG"])
        self.assertTrue(any("message store failed" in entry for entry in log))

    def test_replies_keep_their_order_while_the_store_works(self) -> None:
        """
        A PING sent after a MSG is answered after it, though it was ready
        first; the push to the recipient waits for the commit too.
        """
        store = _WaitingStore()
        network = Network(store=store)
        alice, bob = network.connect("alice"), network.connect("bob")
        alice.take()
        bob.take()
        self.assertEqual(alice.send(b"MSG bob hi\nPING\n"), [])
        self.assertEqual(bob.take(), [])
        store.commit()
        self.assertEqual(alice.take(), ["250 1", "200 PONG"])
        self.assertEqual(bob.take(), [f"MSG 1 {STAMP} alice hi"])

    def test_full_pipeline_is_read_again_once_half_drained(self) -> None:
        """
        A session whose pipeline is full is not read until it has drained
        below half, rather than stopped and started again for every reply.
        """
        store = _WaitingStore()
        network = Network(store=store)
        alice = network.connect("alice")
        alice.take()
        alice.send(b"MSG bob hi\n" * PIPELINE_DEPTH)
        self.assertEqual(alice.transport.producerState, "paused")
        store.commit(PIPELINE_DEPTH - PIPELINE_RESUME)
        self.assertEqual(len(alice.take()), PIPELINE_DEPTH - PIPELINE_RESUME)
        self.assertEqual(alice.transport.producerState, "paused")
        store.commit(1)
        self.assertEqual(alice.transport.producerState, "producing")
        store.commit()
        self.assertEqual(len(alice.take()), PIPELINE_RESUME)

    def test_quit_waits_for_earlier_replies(self) -> None:
        """
        QUIT behind a message in progress ends the session only after the
        message's 250 has been written.
        """
        store = _WaitingStore()
        network = Network(store=store)
        alice = network.connect("alice")
        alice.take()
        alice.send(b"MSG bob hi\nQUIT\nPING\n")
        self.assertFalse(alice.closed)
        store.commit()
        self.assertEqual(alice.take(), ["250 1", "221 bye"])
        self.assertTrue(alice.closed)

    def test_commands_are_answered_after_what_waited(self) -> None:
        """
        A command sent right after login is answered only once the waiting
        messages have been sent, so a script that leaves at its last reply
        has had its mail.
        """
        store = _WaitingStore()
        network = Network(store=store)
        alice = network.connect("alice")
        alice.send("MSG bob old")
        store.commit()
        store.slow_mailboxes = True
        bob = network.connect("bob", early=b"PING\n")
        self.assertEqual(
            bob.take(),
            [
                "200 secmsg 0.1.0 ready; you are bob (roles: user)"
                "; protocol 1.0; capabilities store,ack-upto,history,"
                "rooms,broadcast,presence"
                "; rate 1000000/s, burst 3000000, 3000000 left"
            ],
        )
        store.read_mailboxes()
        self.assertEqual(bob.take(), [f"MSG 1 {STAMP} alice old", "200 PONG"])

    def test_waiting_messages_come_before_newer_pushes(self) -> None:
        """
        A message committed while bob's mailbox is being read reaches him
        once, after the older ones.
        """
        store = _WaitingStore()
        network = Network(store=store)
        alice = network.connect("alice")
        alice.take()
        alice.send("MSG bob old")
        store.commit()
        store.slow_mailboxes = True
        bob = network.connect("bob")
        alice.send("MSG bob new")
        store.commit()
        self.assertEqual(
            bob.take(),
            [
                "200 secmsg 0.1.0 ready; you are bob (roles: user)"
                "; protocol 1.0; capabilities store,ack-upto,history,"
                "rooms,broadcast,presence"
                "; rate 1000000/s, burst 3000000, 3000000 left"
            ],
        )
        store.read_mailboxes()
        self.assertEqual(
            bob.take(), [f"MSG 1 {STAMP} alice old", f"MSG 2 {STAMP} alice new"]
        )


class _PagedPeer:
    """
    A peer that takes each page of waiting messages only when the test
    says it has drained.
    """

    def __init__(self) -> None:
        self.pages: list[list[int]] = []
        self.drained: list[defer.Deferred[bool]] = []
        # A new session holds pushes back until it is released.
        self.held = True

    def send_waiting(self, lines: Sequence[tuple[int, bytes]]) -> defer.Deferred[bool]:
        self.pages.append([message_id for message_id, _ in lines])
        self.drained.append(defer.Deferred())
        return self.drained[-1]

    def release(self) -> None:
        self.held = False


class Reader:
    """
    An avatar that may read every room, all that catching up asks of one.
    """

    def __init__(self, identity: str) -> None:
        self.identity = identity

    def may_read(self, room: str) -> bool:
        return True


class PagingTests(SynchronousTestCase):
    def test_a_large_mailbox_goes_a_page_at_a_time(self) -> None:
        """
        Waiting messages are read and sent a page at a time, the next page
        only once the peer has taken the last; then live pushes resume.
        """
        store = MemoryStore()
        network = Network(store=store)
        delivery = Delivery(
            network.hub,
            store,
            network.clock,
            lambda: {"bob"},
            Metrics(),
            WaitingLimit(),
        )
        moment = clock_time(network.clock)
        for n in range(PAGE_SIZE + 5):
            store.accept(Draft(Kind.DIRECT, "alice", "bob", f"m{n}", moment), ["bob"])
        peer = _PagedPeer()
        done = delivery.catch_up(peer, Reader("bob"))
        self.assertEqual([len(page) for page in peer.pages], [PAGE_SIZE])
        self.assertTrue(peer.held)
        peer.drained[0].callback(True)
        self.assertEqual([len(page) for page in peer.pages], [PAGE_SIZE, 5])
        self.assertEqual(
            [i for page in peer.pages for i in page], list(range(1, PAGE_SIZE + 6))
        )
        peer.drained[1].callback(True)
        self.successResultOf(done)
        self.assertFalse(peer.held)

    def test_a_session_that_ends_stops_the_paging(self) -> None:
        """
        When the session ends mid-way, no further page is read.
        """
        store = MemoryStore()
        network = Network(store=store)
        delivery = Delivery(
            network.hub,
            store,
            network.clock,
            lambda: {"bob"},
            Metrics(),
            WaitingLimit(),
        )
        moment = clock_time(network.clock)
        for n in range(PAGE_SIZE * 2):
            store.accept(Draft(Kind.DIRECT, "alice", "bob", f"m{n}", moment), ["bob"])
        peer = _PagedPeer()
        done = delivery.catch_up(peer, Reader("bob"))
        peer.drained[0].callback(False)
        self.successResultOf(done)
        self.assertEqual(len(peer.pages), 1)


class WaitingLimitTests(SynchronousTestCase):
    """
    The bound on what waits unacknowledged for one identity: a message
    past it is refused to its sender with 507, and nothing is stored.
    """

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.network = Network(store=self.store)
        self.delivery = Delivery(
            self.network.hub,
            self.store,
            self.network.clock,
            lambda: {"alice", "bob", "carol"},
            Metrics(),
            WaitingLimit(messages=2, text_bytes=10),
        )

    def send(self, kind: Kind, target: str, text: str) -> defer.Deferred[Stored]:
        return self.delivery.send(kind, None, "alice", target, text)

    def test_a_message_past_the_count_is_refused_and_not_stored(self) -> None:
        """
        bob has two messages waiting, the most he may: a third is refused
        with words naming him and the limit, and is stored for nobody.
        """
        for text in ("one", "two"):
            self.successResultOf(self.send(Kind.DIRECT, "bob", text))
        failure = self.failureResultOf(self.send(Kind.DIRECT, "bob", "3"), MailboxFull)
        self.assertEqual(failure.value.code, 507)
        self.assertEqual(
            failure.value.text,
            "not sent: bob has 2 unacknowledged messages waiting (limit 2)",
        )
        self.assertEqual(self.store.waiting("bob"), (2, 6))
        pending = self.successResultOf(self.store.pending("bob", 0, 100, frozenset()))
        self.assertEqual([p.message.text for p in pending], ["one", "two"])

    def test_a_message_past_the_bytes_is_refused_and_not_stored(self) -> None:
        """
        A message whose text would take what waits for bob past the byte
        limit is refused; one that fits within it is still taken.
        """
        self.successResultOf(self.send(Kind.DIRECT, "bob", "1234567"))
        failure = self.failureResultOf(
            self.send(Kind.DIRECT, "bob", "abcd"), MailboxFull
        )
        self.assertEqual(
            failure.value.text,
            "not sent: bob has 7 bytes of unacknowledged messages waiting, "
            "and 4 more would pass the limit of 10",
        )
        self.successResultOf(self.send(Kind.DIRECT, "bob", "abc"))
        self.assertEqual(self.store.waiting("bob"), (2, 10))

    def test_a_full_inbox_refuses_direct_messages_only(self) -> None:
        """
        The bound is on an identity's inbox: with carol's full, a broadcast
        and a room message, kept once for all their readers, are still
        taken, and kept for her too.
        """
        for text in ("one", "two"):
            self.successResultOf(self.send(Kind.DIRECT, "carol", text))
        self.successResultOf(self.network.rooms.join(Reader("carol"), "#ops"))
        self.successResultOf(self.send(Kind.BROADCAST, "", "all"))
        self.successResultOf(self.send(Kind.ROOM, "#ops", "hello"))
        self.assertEqual(self.store.waiting("carol", Kind.DIRECT), (2, 6))
        self.assertEqual(self.store.waiting("carol"), (4, 6 + 3 + 5))

    def test_acknowledging_makes_room_again(self) -> None:
        """
        Once bob acknowledges what waited, messages to him are taken again.
        """
        for text in ("one", "two"):
            self.successResultOf(self.send(Kind.DIRECT, "bob", text))
        self.failureResultOf(self.send(Kind.DIRECT, "bob", "3"), MailboxFull)
        self.successResultOf(self.store.acknowledge("bob", 1, False, frozenset()))
        self.assertEqual(self.successResultOf(self.send(Kind.DIRECT, "bob", "3")).id, 3)

    def test_the_line_protocol_replies_507_and_the_session_goes_on(self) -> None:
        """
        A MSG past its recipient's bound gets 507 with the words; the
        recipient is sent nothing, and the sender's session goes on.
        """
        network = Network(waiting_limit=WaitingLimit(messages=1))
        alice, bob = network.connect("alice"), network.connect("bob")
        for session in (alice, bob):
            session.send("JOIN #ops")
        alice.take()
        self.assertEqual(alice.send("MSG bob hi"), ["250 1"])
        bob.take()
        self.assertEqual(
            alice.send("MSG bob again"),
            ["507 not sent: bob has 1 unacknowledged message waiting (limit 1)"],
        )
        self.assertEqual(bob.take(), [])
        self.assertEqual(alice.send("PING"), ["200 PONG"])
        self.assertEqual(bob.send("ACK 1"), ["200 acknowledged 1"])
        self.assertEqual(alice.send("MSG bob again"), ["250 2"])
