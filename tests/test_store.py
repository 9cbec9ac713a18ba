"""
The message store: one behaviour, checked against both providers (memory,
and SQLite without its thread); then what only SQLite has: the schema and
its upgrade, refusals at open, the worker thread's group commit, and a
full disk.
"""

from __future__ import annotations

import os
import queue
import shutil
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from secmsg.daemon.interfaces import IMessageStore, IStoreWorker
from secmsg.daemon.store.database import (
    CURRENT_VERSION,
    check_database,
    open_database,
    schema,
)
from secmsg.daemon.store.memory import MemoryStore
from secmsg.daemon.store.sql import SENT_WRITE_DELAY
from secmsg.daemon.store.sqlite import SQLiteStore
from secmsg.daemon.store.worker import ImmediateWorker, Job, ThreadWorker, run_batch
from secmsg.errors import ConfigurationError, NotFound, StoreError
from secmsg.messages import Draft, Kind, Retention, Stored
from tests.harness import temporary_directory

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def direct(sender: str, recipient: str, text: str, when: datetime = NOW) -> Draft:
    return Draft(Kind.DIRECT, sender, recipient, text, when)


def said(sender: str, room: str, text: str, when: datetime = NOW) -> Draft:
    return Draft(Kind.ROOM, sender, room, text, when)


def broadcast(sender: str, text: str) -> Draft:
    return Draft(Kind.BROADCAST, sender, "", text, NOW)


NOTHING = frozenset[str]()
"""No rooms: a session that may read none of its identity's rooms."""


class StoreBehaviour:
    """
    What every IMessageStore does; mixed into a test case per provider.
    """

    store: IMessageStore

    def result(self, deferred: defer.Deferred):  # type: ignore[no-untyped-def]
        return self.successResultOf(deferred)  # type: ignore[attr-defined]

    def know(self, *identities: str) -> None:
        for identity in identities:
            self.result(self.store.remember(identity, NOW))

    def join(self, room: str, *identities: str) -> None:
        for identity in identities:
            self.result(self.store.join(identity, room, True))

    def accept(self, draft: Draft) -> Stored:
        audience = self.store.audience(draft.kind, draft.sender, draft.target)
        return self.result(self.store.accept(draft, audience))

    def pending(self, identity: str, rooms: frozenset[str] = NOTHING) -> list[int]:
        found = self.result(self.store.pending(identity, 0, 100, rooms))
        return [p.message.id for p in found]

    def ack(self, identity: str, message_id: int, up_to: bool = False) -> int:
        rooms = self.store.rooms_of(identity)
        return self.result(self.store.acknowledge(identity, message_id, up_to, rooms))

    def test_provides_the_interface(self) -> None:
        """
        The provider declares and implements IMessageStore.
        """
        self.assertTrue(verifyObject(IMessageStore, self.store))  # type: ignore[attr-defined]

    def test_ids_are_unique_and_grow(self) -> None:
        """
        Each accepted message gets a larger id than the one before.
        """
        ids = [self.accept(direct("alice", "bob", f"m{n}")).id for n in range(5)]
        self.assertEqual(ids, sorted(set(ids)))  # type: ignore[attr-defined]

    def test_inbox_in_order_until_acknowledged(self) -> None:
        """
        An inbox gives its unacknowledged messages oldest first, a page at
        a time; an ACK takes one out, even out of order; ACK up to an id
        takes every one up to it that was sent, and none that was not yet.
        """
        self.know("bob", "dave")
        first = self.accept(direct("alice", "bob", "one"))
        self.accept(direct("carol", "dave", "not bob's"))
        second = self.accept(direct("alice", "bob", "two"))
        third = self.accept(direct("carol", "bob", "three"))
        fourth = self.accept(direct("carol", "bob", "four"))
        found = self.result(self.store.pending("bob", 0, 100, NOTHING))
        texts = [p.message.text for p in found]
        self.assertEqual(texts, ["one", "two", "three", "four"])  # type: ignore[attr-defined]
        page = self.result(self.store.pending("bob", first.id, 2, NOTHING))
        self.assertEqual([p.message.id for p in page], [second.id, third.id])  # type: ignore[attr-defined]
        self.assertEqual(self.ack("bob", second.id), 1)  # type: ignore[attr-defined]
        self.store.sent([("bob", first), ("bob", third)])
        self.assertEqual(self.ack("bob", fourth.id, up_to=True), 2)  # type: ignore[attr-defined]
        self.assertEqual(self.pending("bob"), [fourth.id])  # type: ignore[attr-defined]

    def test_acknowledging_is_idempotent_and_private(self) -> None:
        """
        Acknowledging again is harmless; acknowledging another identity's
        message, one of its own in a room, or one that does not exist, is
        NotFound.
        """
        self.know("bob", "carol")
        self.join("#ops", "bob", "carol")
        message = self.accept(direct("alice", "bob", "hi")).id
        own = self.accept(said("bob", "#ops", "mine")).id
        self.ack("bob", message)
        self.assertEqual(self.ack("bob", message), 0)  # type: ignore[attr-defined]
        for identity, message_id in (
            ("carol", message),
            ("bob", own),
            ("bob", message + 100),
        ):
            self.failureResultOf(  # type: ignore[attr-defined]
                self.store.acknowledge(identity, message_id, False, NOTHING), NotFound
            )

    def test_redelivery_is_marked(self) -> None:
        """
        A message pushed once and not acknowledged comes back marked as a
        repeat; one never pushed does not.
        """
        self.know("bob")
        shown = self.accept(direct("alice", "bob", "shown"))
        self.accept(direct("alice", "bob", "queued"))
        self.store.sent([("bob", shown)])
        found = self.result(self.store.pending("bob", 0, 100, NOTHING))
        self.assertEqual([p.redelivery for p in found], [True, False])  # type: ignore[attr-defined]

    def test_a_member_reads_a_room_from_its_join_to_its_part(self) -> None:
        """
        What is said in a room is for its members, but the one who said it:
        not what was said before a member joined, and nothing once it has
        parted, when what waited for it there waits no more.
        """
        self.know("alice", "bob")
        self.join("#ops", "alice")
        before = self.accept(said("alice", "#ops", "before bob")).id
        self.join("#ops", "bob")
        self.assertEqual(self.store.members("#ops"), {"alice", "bob"})  # type: ignore[attr-defined]
        self.assertEqual(self.store.rooms(), {"#ops": 2})  # type: ignore[attr-defined]
        after = self.accept(said("alice", "#ops", "after")).id
        own = self.accept(said("bob", "#ops", "bob's own")).id
        self.assertEqual(self.pending("bob", frozenset({"#ops"})), [after])  # type: ignore[attr-defined]
        self.assertEqual(self.pending("bob"), [])  # type: ignore[attr-defined]
        self.assertEqual(self.pending("alice", frozenset({"#ops"})), [own])  # type: ignore[attr-defined]
        self.assertEqual(self.store.waiting("bob"), (1, 5))  # type: ignore[attr-defined]
        self.failureResultOf(  # type: ignore[attr-defined]
            self.store.acknowledge("bob", before, False, NOTHING), NotFound
        )
        self.assertTrue(self.result(self.store.part("bob", "#ops")))  # type: ignore[attr-defined]
        self.assertFalse(self.result(self.store.part("bob", "#ops")))  # type: ignore[attr-defined]
        self.assertEqual(self.store.waiting("bob"), (0, 0))  # type: ignore[attr-defined]
        self.assertEqual(self.store.rooms_of("bob"), frozenset())  # type: ignore[attr-defined]
        self.accept(said("alice", "#ops", "gone"))
        self.assertEqual(self.pending("bob", frozenset({"#ops"})), [])  # type: ignore[attr-defined]

    def test_nothing_is_kept_for_a_member_that_may_not_read(self) -> None:
        """
        A member that joined by a session that may join a room but not read
        it is one that nothing said there is kept for, so that it never
        fills up with what it cannot be sent; once a session that may read
        comes, what is said from then on is kept for it.
        """
        self.know("alice", "bob")
        self.join("#ops", "alice")
        self.result(self.store.join("bob", "#ops", False))
        self.assertEqual(self.store.members("#ops"), {"alice", "bob"})  # type: ignore[attr-defined]
        self.assertEqual(self.store.audience(Kind.ROOM, "alice", "#ops"), set())  # type: ignore[attr-defined]
        self.accept(said("alice", "#ops", "unheard"))
        self.assertEqual(self.store.waiting("bob"), (0, 0))  # type: ignore[attr-defined]
        self.result(self.store.start_reading("bob", "#ops"))
        heard = self.accept(said("alice", "#ops", "heard")).id
        self.assertEqual(self.pending("bob", frozenset({"#ops"})), [heard])  # type: ignore[attr-defined]
        self.result(self.store.start_reading("bob", "#ops"))
        self.assertEqual(self.pending("bob", frozenset({"#ops"})), [heard])  # type: ignore[attr-defined]

    def test_a_broadcast_is_for_the_identities_known_but_its_sender(self) -> None:
        """
        A broadcast waits for every identity known when it is sent, but
        the sender; one known later does not get it.
        """
        self.know("admin", "bob")
        message = self.accept(broadcast("admin", "maintenance"))
        self.know("carol")
        self.assertEqual(self.pending("bob"), [message.id])  # type: ignore[attr-defined]
        self.assertEqual(self.pending("admin"), [])  # type: ignore[attr-defined]
        self.assertEqual(self.pending("carol"), [])  # type: ignore[attr-defined]
        self.assertEqual(
            self.store.audience(Kind.BROADCAST, "admin", ""), {"bob", "carol"}
        )  # type: ignore[attr-defined]

    def test_ack_up_to_takes_only_the_rooms_the_session_reads(self) -> None:
        """
        ACK UPTO takes the inbox and the rooms named, those the session
        may read and so was sent; a room it may not read keeps its own.
        """
        self.know("bob")
        self.join("#ops", "bob")
        self.join("#news", "bob")
        news = self.accept(said("alice", "#news", "unread"))
        ops = self.accept(said("alice", "#ops", "seen"))
        message = self.accept(direct("alice", "bob", "hi"))
        self.store.sent([("bob", news), ("bob", ops), ("bob", message)])
        acknowledged = self.store.acknowledge(
            "bob", message.id, True, frozenset({"#ops"})
        )
        self.assertEqual(self.result(acknowledged), 2)  # type: ignore[attr-defined]
        self.assertEqual(self.pending("bob", frozenset({"#ops", "#news"})), [news.id])  # type: ignore[attr-defined]

    def test_room_history_and_conversation(self) -> None:
        """
        History gives the newest N of a room, or of the direct messages
        between two identities either way, oldest first.
        """
        for n in range(4):
            self.accept(said("alice", "#ops", f"ops {n}"))
        self.accept(said("alice", "#dev", "dev"))
        self.accept(direct("alice", "bob", "to bob"))
        self.accept(direct("bob", "alice", "to alice"))
        self.accept(direct("alice", "carol", "to carol"))
        room = self.result(self.store.room_history("#ops", 2, 10_000))
        self.assertEqual([m.text for m in room], ["ops 2", "ops 3"])  # type: ignore[attr-defined]
        # A budget of 9 bytes: "ops 3" (5), then "ops 2" passes it, and is the
        # last one read, so that the caller can tell there was more.
        cut = self.result(self.store.room_history("#ops", 10, 9))
        self.assertEqual([m.text for m in cut], ["ops 2", "ops 3"])  # type: ignore[attr-defined]
        talk = self.result(self.store.conversation("bob", "alice", 10, 10_000))
        self.assertEqual([m.text for m in talk], ["to bob", "to alice"])  # type: ignore[attr-defined]
        self.assertEqual(talk[0].created, NOW)  # type: ignore[attr-defined]

    def test_known_identities(self) -> None:
        """
        An identity is known once remembered.
        """
        self.assertFalse(self.store.knows("alice"))  # type: ignore[attr-defined]
        self.know("alice")
        self.assertTrue(self.store.knows("alice"))  # type: ignore[attr-defined]
        self.assertEqual(self.store.identities(), {"alice"})  # type: ignore[attr-defined]

    def test_retention_by_age_and_count(self) -> None:
        """
        Past the maximum age everything goes; past the count only what
        every reader has acknowledged.
        """
        old = NOW - timedelta(days=40)
        self.know("bob", "carol")
        self.join("#ops", "bob")
        self.accept(direct("alice", "bob", "ancient"))
        self.result(self.store.purge(NOW, Retention(max_age=timedelta(days=30))))
        self.assertEqual(len(self.pending("bob")), 1)  # type: ignore[attr-defined]
        self.accept(direct("alice", "bob", "old", old))
        acked = [self.accept(said("alice", "#ops", f"{n}")).id for n in range(3)]
        for message_id in acked:
            self.ack("bob", message_id)
        self.join("#ops", "carol")
        unacked = self.accept(said("alice", "#ops", "unread")).id
        self.ack("bob", unacked)
        self.accept(said("alice", "#ops", "newest"))
        retention = Retention(max_age=timedelta(days=30), room_max=1)
        self.assertEqual(self.result(self.store.purge(NOW, retention)), 4)  # type: ignore[attr-defined]
        kept = self.accept(direct("carol", "bob", "kept")).id
        self.ack("bob", kept)
        newest = self.accept(direct("carol", "bob", "newest")).id
        self.ack("bob", newest)
        mailbox = Retention(max_age=timedelta(days=30), mailbox_max=1)
        self.result(self.store.purge(NOW, mailbox))
        talk = self.result(self.store.conversation("bob", "carol", 10, 10_000))
        self.assertEqual([m.text for m in talk], ["newest"])  # type: ignore[attr-defined]
        texts = [
            m.text for m in self.result(self.store.room_history("#ops", 10, 10_000))
        ]
        self.assertEqual(texts, ["unread", "newest"])  # type: ignore[attr-defined]
        self.assertEqual(len(self.pending("bob", frozenset({"#ops"}))), 2)  # type: ignore[attr-defined]
        self.assertEqual(self.pending("carol", frozenset({"#ops"}))[0], unacked)  # type: ignore[attr-defined]

    def test_waiting_counts_what_is_unacknowledged_and_its_bytes(self) -> None:
        """
        The store keeps, per identity, how many messages wait for it
        unacknowledged and how many UTF-8 bytes their texts hold; ACK and
        ACK UPTO take off what they acknowledged, and nothing else.
        """
        self.know("bob", "carol")
        self.join("#ops", "bob", "carol")
        self.assertEqual(self.store.waiting("bob"), (0, 0))  # type: ignore[attr-defined]
        first = self.accept(direct("alice", "bob", "one"))
        second = self.accept(said("alice", "#ops", "déjà")).id
        third = self.accept(direct("alice", "bob", "three"))
        self.assertEqual(self.store.waiting("bob"), (3, 3 + 6 + 5))  # type: ignore[attr-defined]
        self.assertEqual(self.store.waiting("carol"), (1, 6))  # type: ignore[attr-defined]
        self.ack("bob", second)
        self.ack("bob", second)
        self.assertEqual(self.store.waiting("bob"), (2, 8))  # type: ignore[attr-defined]
        self.assertEqual(self.store.waiting("carol"), (1, 6))  # type: ignore[attr-defined]
        self.store.sent([("bob", first)])
        self.ack("bob", third.id, up_to=True)
        self.assertEqual(self.store.waiting("bob"), (1, 5))  # type: ignore[attr-defined]
        self.store.sent([("bob", third)])
        self.ack("bob", third.id, up_to=True)
        self.assertEqual(self.store.waiting("bob"), (0, 0))  # type: ignore[attr-defined]

    def test_waiting_falls_by_what_the_age_purge_removes(self) -> None:
        """
        Messages retention removes for their age leave the totals of those
        who never acknowledged them; the count limits remove none of those.
        """
        old = NOW - timedelta(days=40)
        self.know("bob", "carol")
        self.join("#ops", "bob", "carol")
        self.accept(direct("alice", "bob", "ancient", old))
        self.accept(said("alice", "#ops", "old room", old))
        self.accept(direct("alice", "bob", "recent"))
        self.accept(direct("alice", "bob", "newest"))
        retention = Retention(max_age=timedelta(days=30), room_max=1, mailbox_max=1)
        self.result(self.store.purge(NOW, retention))
        self.assertEqual(self.store.waiting("bob"), (2, 6 + 6))  # type: ignore[attr-defined]
        self.assertEqual(self.store.waiting("carol"), (0, 0))  # type: ignore[attr-defined]


class MemoryStoreTests(StoreBehaviour, SynchronousTestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()

    def test_a_failed_accept_counts_for_nobody(self) -> None:
        """
        A message the store could not keep adds nothing to what waits.
        """
        self.store.failing = True
        self.failureResultOf(
            self.store.accept(direct("alice", "bob", "lost"), {"bob"}), StoreError
        )
        self.assertEqual(self.store.waiting("bob"), (0, 0))


class SQLiteStoreTests(StoreBehaviour, SynchronousTestCase):
    def setUp(self) -> None:
        self.path = temporary_directory(self) / "secmsg.db"
        self.clock = Clock()
        self.store = self.opened(ImmediateWorker)
        self.addCleanup(lambda: self.store.close())

    def opened(
        self, start: Callable[[sqlite3.Connection], IStoreWorker]
    ) -> SQLiteStore:
        store = SQLiteStore(self.path, start, self.clock)
        store.open()
        return store

    def reopen(self) -> None:
        self.store.close()
        self.store = self.opened(ImmediateWorker)

    def test_what_the_store_knows_survives_a_restart(self) -> None:
        """
        The identities known, the rooms' members, what waits for each and
        where each cursor stands are read back when the store opens.
        """
        self.know("alice", "bob", "carol")
        self.join("#ops", "bob", "carol")
        for n in range(3):
            self.accept(direct("alice", "bob", f"m{n}"))
        seen = self.accept(said("alice", "#ops", "seen")).id
        self.ack("bob", seen)
        self.reopen()
        self.assertTrue(self.store.knows("alice"))
        self.assertEqual(self.store.members("#ops"), {"bob", "carol"})
        self.assertEqual(self.store.waiting("bob"), (3, 6))
        self.assertEqual(self.store.waiting("carol"), (1, 4))
        self.assertEqual(self.pending("bob", frozenset({"#ops"})), [1, 2, 3])

    def test_what_was_pushed_rides_on_the_next_read(self) -> None:
        """
        A note of what was pushed costs no transaction of its own, and no
        statement in an append's: it is written in the next job that reads
        cursors, or alone once no such job has come for a moment; either
        way a later delivery is marked as a repeat.
        """
        connection = self.connection_of_store()
        self.know("bob")
        shown = self.accept(direct("alice", "bob", "shown"))
        statements: list[str] = []
        connection.set_trace_callback(statements.append)
        self.store.sent([("bob", shown)])
        self.assertEqual(statements, [])
        self.accept(direct("alice", "bob", "next"))
        self.assertEqual([s for s in statements if "SET sent" in s], [])
        found = self.result(self.store.pending("bob", 0, 100, NOTHING))
        self.assertEqual(statements.count("BEGIN IMMEDIATE"), 2)
        self.assertEqual(len([s for s in statements if "SET sent" in s]), 1)
        self.assertEqual([p.redelivery for p in found], [True, False])
        self.store.sent([("bob", found[1].message)])
        self.accept(direct("alice", "bob", "third"))
        self.clock.advance(SENT_WRITE_DELAY)
        self.assertEqual(len([s for s in statements if "SET sent" in s]), 2)
        self.reopen()
        found = self.result(self.store.pending("bob", 0, 100, NOTHING))
        self.assertEqual([p.redelivery for p in found], [True, True, False])

    def test_a_room_s_pushes_move_each_cursor_once(self) -> None:
        """
        The marks of many room messages pushed to many members are written
        as one statement per member's cursor, not one per message: a
        member's ACK carries its own marks alone, and the rest are written
        together a moment later.  A steady room's marks cost the store per
        member, not per delivery.
        """
        members = [f"user{n}" for n in range(10)]
        for identity in members:
            self.store.remember(identity, NOW)
            self.store.join(identity, "#big", True)
        connection = self.connection_of_store()
        statements: list[str] = []
        connection.set_trace_callback(statements.append)
        for n in range(5):
            last = self.accept(said("user0", "#big", f"note {n}"))
            self.store.sent([(member, last) for member in members])
        self.assertEqual([s for s in statements if "SET sent" in s], [])
        self.assertEqual(self.ack("user3", last.id, up_to=True), 5)
        self.assertEqual(len([s for s in statements if "SET sent" in s]), 1)
        self.clock.advance(SENT_WRITE_DELAY)
        self.assertEqual(len([s for s in statements if "SET sent" in s]), 10)

    def connection_of_store(self) -> sqlite3.Connection:
        """
        Reopen the store on a worker that hands the test its connection.
        """
        self.store.close()
        connections: list[sqlite3.Connection] = []

        def start(connection: sqlite3.Connection) -> ImmediateWorker:
            connections.append(connection)
            return ImmediateWorker(connection)

        self.store = self.opened(start)
        return connections[0]

    def test_writes_for_a_message_do_not_grow_with_its_readers(self) -> None:
        """
        A SAY to a room of 1,000 members and a BROADCAST with 10,000 known
        identities each cost one INSERT, as a MSG does: a message is
        appended once to its stream, whoever reads it.
        """
        members = [f"user{n}" for n in range(10_000)]
        for identity in members:
            self.store.remember(identity, NOW)
        for identity in members[:1000]:
            self.store.join(identity, "#big", True)
        connection = self.connection_of_store()
        for draft in (
            direct("alice", "user1", "one"),
            said("user0", "#big", "to a thousand"),
            broadcast("user0", "to ten thousand"),
        ):
            statements: list[str] = []
            connection.set_trace_callback(statements.append)
            self.accept(draft)
            connection.set_trace_callback(None)
            writes = [s for s in statements if s.split()[0] in WRITES]
            self.assertEqual(
                [s.split()[0] for s in writes], ["INSERT"], (draft.kind, writes)
            )
        self.assertEqual(self.store.waiting("user999"), (2, 13 + 15))

    def test_acknowledging_costs_the_same_whatever_the_history(self) -> None:
        """
        ACK and ACK UPTO run the same SQLite instructions whether 10 or
        5,000 messages are stored before them: they walk from a cursor,
        never over the history.
        """
        small = self.instructions_to_acknowledge(history=10)
        large = self.instructions_to_acknowledge(history=5000)
        self.assertEqual(small, large)

    def instructions_to_acknowledge(self, history: int) -> list[int]:
        """
        How many SQLite VM instructions an ACK and an ACK UPTO take, after
        C{history} messages acknowledged in bob's inbox and a room.
        """
        self.path = temporary_directory(self) / "secmsg.db"
        connection = self.connection_of_store()
        self.know("bob")
        self.join("#ops", "bob")
        for n in range(history):
            draft = direct("alice", "bob", "x") if n % 2 else said("alice", "#ops", "x")
            self.store.sent([("bob", self.accept(draft))])
        self.ack("bob", history, up_to=True)
        fresh = [self.accept(direct("alice", "bob", "new")) for _ in range(3)]
        self.store.sent([("bob", message) for message in fresh])
        self.pending("bob")
        counts = []
        for message_id, up_to in ((fresh[1].id, False), (fresh[2].id, True)):
            steps: list[None] = []
            connection.set_progress_handler(partial(steps.append, None), 1)
            self.ack("bob", message_id, up_to)
            connection.set_progress_handler(None, 1)
            counts.append(len(steps))
        self.assertEqual(self.pending("bob"), [])
        return counts

    def test_waiting_counts_a_message_in_flight_until_it_fails(self) -> None:
        """
        A message counts for its recipients from the moment it is handed
        to the worker, before its commit, so that a burst cannot slip past
        the bound; an accept that fails gives back what it took.
        """
        self.store.close()
        workers: list[_HeldWorker] = []

        def start(connection: sqlite3.Connection) -> _HeldWorker:
            workers.append(_HeldWorker(connection))
            return workers[0]

        self.store = self.opened(start)
        accepted = self.store.accept(direct("alice", "bob", "in flight"), {"bob"})
        self.assertEqual(self.store.waiting("bob"), (1, 9))
        workers[0].run(fail=True)
        self.failureResultOf(accepted, StoreError)
        self.assertEqual(self.store.waiting("bob"), (0, 0))
        accepted = self.store.accept(direct("alice", "bob", "kept"), {"bob"})
        workers[0].run()
        self.successResultOf(accepted)
        self.assertEqual(self.store.waiting("bob"), (1, 4))

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["say", "msg", "deliver", "ack", "ack up to", "part", "purge"]
                ),
                st.sampled_from(["bob", "carol"]),
                st.integers(min_value=1, max_value=8),
            ),
            max_size=20,
        )
    )
    def test_totals_in_memory_match_the_database(self, steps: list) -> None:
        """
        After any run of messages, deliveries, ACKs, parts and purges, what
        the store counts in memory is what the database holds: the totals
        never drift from the streams they stand for.
        """
        directory = Path(tempfile.mkdtemp(prefix="secmsg-test-"))
        try:
            store = SQLiteStore(directory / "secmsg.db", ImmediateWorker, Clock())
            store.open()
            for identity in ("alice", "bob", "carol"):
                store.remember(identity, NOW)
                store.join(identity, "#ops", True)
            for action, identity, number in steps:
                _apply(store, action, identity, number)
            store.close()
            reopened = SQLiteStore(directory / "secmsg.db", ImmediateWorker, Clock())
            reopened.open()
            for identity in ("bob", "carol"):
                self.assertEqual(store.waiting(identity), reopened.waiting(identity))
            reopened.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def test_closed_store_refuses_work(self) -> None:
        """
        A store not open, or closed, fails at once rather than never.
        """
        self.store.close()
        self.failureResultOf(self.store.pending("bob", 0, 1, NOTHING), StoreError)
        unopened = SQLiteStore(self.path, ImmediateWorker, self.clock)
        self.failureResultOf(unopened.pending("bob", 0, 1, NOTHING), StoreError)

    def test_database_is_private(self) -> None:
        """
        The database holds message bodies: it is readable by its owner only.
        """
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)


WRITES = {"INSERT", "UPDATE", "DELETE", "REPLACE"}


def _apply(store: SQLiteStore, action: str, identity: str, number: int) -> None:
    """
    One step of the store's life, as a session or retention would take it.
    """
    when = NOW - timedelta(days=40 * (number % 2))
    if action in ("say", "msg"):
        draft = (
            said("alice", "#ops", "é" * number, when)
            if action == "say"
            else direct("alice", identity, "é" * number, when)
        )
        store.accept(draft, store.audience(draft.kind, draft.sender, draft.target))
    elif action == "deliver":
        # As a push does: of a message there is, waiting for the identity.
        waiting = store.pending(identity, 0, number, frozenset({"#ops"}))
        waiting.addCallback(lambda page: store.sent([(identity, page[-1].message)]))
        waiting.addErrback(lambda failure: failure.trap(IndexError))
    elif action == "ack":
        store.acknowledge(identity, number, False, NOTHING).addErrback(
            lambda failure: failure.trap(NotFound)
        )
    elif action == "ack up to":
        store.acknowledge(identity, number, True, frozenset({"#ops"}))
    elif action == "part":
        store.part(identity, "#ops")
    else:
        store.purge(NOW, Retention(max_age=timedelta(days=30), room_max=1))


@implementer(IStoreWorker)
class _HeldWorker:
    """
    A worker that holds the jobs submitted until the test runs them, so
    that it can look at the store while they are in flight.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._held: list[tuple[Job, defer.Deferred]] = []

    def submit(self, job: Job) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        self._held.append((job, done))
        return done

    def run(self, fail: bool = False) -> None:
        """
        Run the jobs held, or with C{fail} fail each as a full disk would.
        """
        held, self._held = self._held, []
        for job, done in held:
            if fail:
                done.errback(StoreError("database or disk is full"))
            else:
                ((result, error),) = run_batch(self._connection, [job])
                done.callback(result) if error is None else done.errback(error)

    def stop(self) -> defer.Deferred:
        self._connection.close()
        return defer.succeed(None)


def structure(path: Path) -> dict[str, object]:
    """
    A database's tables and indexes, column by column, as SQLite reports
    them: two databases with equal structures behave alike, however their
    CREATE statements were written.
    """
    connection = sqlite3.connect(path)
    try:
        shape: dict[str, object] = {}
        for kind, name in connection.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        ):
            if kind == "table":
                shape[name] = connection.execute(
                    f"PRAGMA table_info({name})"
                ).fetchall()
            else:
                shape[name] = connection.execute(
                    f"PRAGMA index_info({name})"
                ).fetchall()
        shape["version"] = connection.execute("SELECT version FROM version").fetchall()
        return shape
    finally:
        connection.close()


def make_version_1(path: Path, wal: bool = False) -> None:
    """
    A version-1 database at C{path} holding one message for bob; with
    C{wal}, in WAL mode and closed, as a daemon of that version leaves it.
    """
    connection = sqlite3.connect(path)
    connection.executescript(schema("v1.sql"))
    connection.execute(
        "INSERT INTO messages (kind, sender, target, body, created)"
        " VALUES ('MSG', 'alice', 'bob', 'kept', 0)"
    )
    connection.execute("INSERT INTO mailbox (recipient, message_id) VALUES ('bob', 1)")
    connection.commit()
    if wal:
        connection.execute("PRAGMA journal_mode = WAL")
    connection.close()


def names(connection: sqlite3.Connection) -> set[str]:
    """
    The names in a database's table of identities.
    """
    return {name for (name,) in connection.execute("SELECT name FROM identities")}


def make_version_2(path: Path) -> None:
    """
    A version-2 database as a daemon of that version leaves it: mailbox
    rows acknowledged, delivered or neither, and a room message said while
    bob was out of the room.
    """
    connection = sqlite3.connect(path)
    connection.executescript(schema("v2.sql"))
    messages = [
        ("MSG", "alice", "bob", "acknowledged"),
        ("MSG", "alice", "bob", "pushed, not acknowledged"),
        ("SAY", "alice", "#ops", "bob has not read"),
        ("SAY", "alice", "#ops", "while bob was away"),
        ("MSG", "carol", "bob", "acknowledged out of order"),
        ("BROADCAST", "admin", "", "notice"),
        ("MSG", "alice", "bob", "newest"),
    ]
    connection.executemany(
        "INSERT INTO messages (kind, sender, target, body, created)"
        " VALUES (?, ?, ?, ?, 0)",
        messages,
    )
    mailbox = [
        ("bob", 1, 1, 1),
        ("bob", 2, 0, 1),
        ("bob", 3, 0, 0),
        ("carol", 3, 1, 1),
        ("carol", 4, 0, 0),
        ("bob", 5, 1, 1),
        ("bob", 6, 0, 0),
        ("carol", 6, 0, 0),
        ("alice", 6, 1, 1),
        ("bob", 7, 0, 0),
    ]
    connection.executemany(
        "INSERT INTO mailbox (recipient, message_id, acknowledged, delivered)"
        " VALUES (?, ?, ?, ?)",
        mailbox,
    )
    connection.executemany(
        "INSERT INTO identities (name, first_seen) VALUES (?, 0)",
        [("alice",), ("bob",), ("carol",), ("admin",)],
    )
    connection.commit()
    connection.close()


def contents(directory: Path) -> dict[str, bytes]:
    """
    Every file in C{directory} by name, byte for byte.
    """
    return {path.name: path.read_bytes() for path in directory.iterdir()}


class DatabaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        self.path = self.directory / "secmsg.db"

    def test_upgrade_from_version_1_matches_a_new_database(self) -> None:
        """
        A version-1 database is backed up, then upgraded in place to the
        same structure a new one has, keeping its messages.
        """
        make_version_1(self.path)
        open_database(self.path).close()
        fresh = self.directory / "fresh.db"
        open_database(fresh).close()
        self.assertEqual(structure(self.path), structure(fresh))
        backup = self.directory / "secmsg.db.v1.backup"
        self.assertEqual(structure(backup)["version"], [(1,)])
        self.assertEqual(stat.S_IMODE(os.stat(backup).st_mode), 0o600)
        store = SQLiteStore(self.path, ImmediateWorker, Clock())
        store.open()
        pending = self.successResultOf(store.pending("bob", 0, 100, NOTHING))
        store.close()
        self.assertEqual(
            [(p.message.text, p.redelivery) for p in pending], [("kept", False)]
        )

    def test_upgrade_from_version_2_carries_every_unacknowledged_message(
        self,
    ) -> None:
        """
        A version-2 database upgrades to the structure a new one has, and
        every message that waited unacknowledged waits still, for the same
        identities, marked as a repeat where it had been pushed; what was
        acknowledged, or said in a room while an identity was out of it,
        does not come back.
        """
        make_version_2(self.path)
        open_database(self.path).close()
        fresh = self.directory / "fresh.db"
        open_database(fresh).close()
        self.assertEqual(structure(self.path), structure(fresh))
        self.assertEqual(
            structure(self.directory / "secmsg.db.v2.backup")["version"], [(2,)]
        )
        store = SQLiteStore(self.path, ImmediateWorker, Clock())
        store.open()
        self.addCleanup(store.close)
        rooms = frozenset({"#ops"})
        waiting = {
            identity: [
                (p.message.id, p.redelivery)
                for p in self.successResultOf(store.pending(identity, 0, 100, rooms))
            ]
            for identity in ("alice", "bob", "carol", "admin")
        }
        self.assertEqual(
            waiting,
            {
                "alice": [],
                "bob": [(2, True), (3, False), (6, False), (7, False)],
                "carol": [(4, False), (6, False)],
                "admin": [],
            },
        )
        self.assertEqual(store.members("#ops"), {"bob", "carol"})
        self.assertEqual(store.identities(), {"alice", "bob", "carol", "admin"})
        self.assertEqual(store.waiting("bob"), (4, 24 + 16 + 6 + 6))
        self.assertEqual(
            self.successResultOf(store.acknowledge("bob", 5, False, rooms)), 0
        )
        self.assertEqual(
            self.successResultOf(store.acknowledge("bob", 7, True, rooms)), 1
        )

    def test_refusals_at_open(self) -> None:
        """
        A corrupt file, a database of a newer version, one another daemon
        holds, and one in an unwritable place each refuse with words.
        """
        self.path.write_bytes(b"this is no database" * 100)
        with self.assertRaises(ConfigurationError) as caught:
            open_database(self.path)
        self.assertIn("not a usable database", str(caught.exception))
        self.path.unlink()
        newer = open_database(self.path)
        newer.execute("UPDATE version SET version = ?", (CURRENT_VERSION + 1,))
        newer.close()
        with self.assertRaises(ConfigurationError) as caught:
            open_database(self.path)
        self.assertIn("newer than this daemon", str(caught.exception))
        self.path.unlink()
        holder = open_database(self.path)
        self.addCleanup(holder.close)
        with self.assertRaises(ConfigurationError) as caught:
            open_database(self.path)
        self.assertIn("another secmsg daemon", str(caught.exception))

    def test_unwritable_directory_refuses(self) -> None:
        """
        A data directory the daemon cannot write is refused at open.
        """
        if os.geteuid() == 0:
            # root writes anywhere; make the directory a file instead.
            blocked = self.directory / "not-a-directory"
            blocked.write_text("")
            path = blocked / "secmsg.db"
        else:
            self.directory.chmod(0o500)
            self.addCleanup(self.directory.chmod, 0o700)
            path = self.path
        with self.assertRaises(ConfigurationError) as caught:
            open_database(path)
        self.assertIn(str(path), str(caught.exception))


class DatabaseCheckTests(SynchronousTestCase):
    """
    The check made before the daemon binds its ports: it refuses what
    open_database refuses, in the same words, and writes nothing.
    """

    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        self.path = self.directory / "secmsg.db"

    def test_check_of_an_old_database_changes_nothing(self) -> None:
        """
        A version-1 database, in either journal mode, passes the check
        and is left byte for byte as it was: not made WAL, not upgraded,
        no backup, no -wal or -shm file beside it.
        """
        for wal in (False, True):
            with self.subTest(wal=wal):
                self.path.unlink(missing_ok=True)
                make_version_1(self.path, wal)
                before = contents(self.directory)
                check_database(self.path)
                self.assertEqual(contents(self.directory), before)

    def test_check_of_a_current_database_writes_nothing_beside_it(self) -> None:
        """
        A database a daemon made and closed, in WAL mode, is checked
        without the -wal and -shm files a read-only open would make.
        """
        open_database(self.path).close()
        before = contents(self.directory)
        check_database(self.path)
        self.assertEqual(contents(self.directory), before)

    def refusals(self) -> tuple[str, str]:
        """
        What open_database and check_database say of C{self.path}.
        """
        with self.assertRaises(ConfigurationError) as checked:
            check_database(self.path)
        with self.assertRaises(ConfigurationError) as opened:
            open_database(self.path)
        return str(checked.exception), str(opened.exception)

    def test_check_refuses_what_open_refuses_in_its_words(self) -> None:
        """
        A corrupt file, a SQLite database that is not secmsg's, and a
        newer one are refused by the check as at open.
        """
        self.path.write_bytes(b"this is no database" * 100)
        checked, opened = self.refusals()
        self.assertEqual(checked, opened)
        self.assertIn("not a usable database", checked)
        self.path.unlink()
        sqlite3.connect(self.path).execute("CREATE TABLE other (x)").connection.close()
        checked, opened = self.refusals()
        self.assertEqual(checked, opened)
        self.assertIn("not a secmsg database", checked)
        self.path.unlink()
        newer = open_database(self.path)
        newer.execute("UPDATE version SET version = ?", (CURRENT_VERSION + 1,))
        newer.close()
        checked, opened = self.refusals()
        self.assertEqual(checked, opened)
        self.assertIn("newer than this daemon", checked)

    def test_a_version_that_is_no_number_is_refused_in_words(self) -> None:
        """
        A version table holding text, or a version below 1, is refused as
        not secmsg's, by the check and at open, rather than crashing the
        daemon's start.
        """
        for version in ("two", 0, 2.5):
            with self.subTest(version=version):
                self.path.unlink(missing_ok=True)
                made = open_database(self.path)
                made.execute("UPDATE version SET version = ?", (version,))
                made.close()
                checked, opened = self.refusals()
                self.assertEqual(checked, opened)
                self.assertIn("is not a version number", checked)

    def test_check_of_what_cannot_be_read_says_so(self) -> None:
        """
        A database path SQLite cannot open (a directory) is refused as
        unreadable, naming it.
        """
        self.path.mkdir()
        with self.assertRaises(ConfigurationError) as caught:
            check_database(self.path)
        self.assertEqual(
            str(caught.exception),
            f"{self.path}: cannot read the database (disk I/O error)",
        )

    def test_check_refuses_a_database_another_daemon_holds(self) -> None:
        """
        A database another daemon has open is refused by the check as at
        open, naming a second daemon, and its files are left alone.
        """
        holder = open_database(self.path)
        self.addCleanup(holder.close)
        before = sorted(self.directory.iterdir())
        checked, opened = self.refusals()
        self.assertEqual(checked, opened)
        self.assertIn("another secmsg daemon", checked)
        self.assertEqual(sorted(self.directory.iterdir()), before)


class WorkerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = temporary_directory(self) / "secmsg.db"

    def test_one_failing_job_does_not_undo_the_others(self) -> None:
        """
        A job that fails is rolled back alone; the others in its batch
        commit.
        """
        connection = open_database(self.path)
        self.addCleanup(connection.close)

        def insert(text: str):  # type: ignore[no-untyped-def]
            return lambda c: (
                c.execute("INSERT INTO identities VALUES (?, 0)", (text,)).rowcount
            )

        def fail(c: sqlite3.Connection) -> None:
            insert("doomed")(c)
            raise NotFound("no such thing")

        outcomes = run_batch(connection, [insert("a"), fail, insert("b")])
        self.assertEqual([error is None for _, error in outcomes], [True, False, True])
        self.assertIsInstance(outcomes[1][1], NotFound)
        self.assertEqual(names(connection), {"a", "b"})

    def test_batch_that_succeeds_runs_once_without_savepoints(self) -> None:
        """
        Jobs that all succeed run once, in one transaction, without a
        savepoint around each: that would cost two statements a job.
        """
        connection = open_database(self.path)
        self.addCleanup(connection.close)
        statements: list[str] = []
        connection.set_trace_callback(statements.append)

        def insert(text: str):  # type: ignore[no-untyped-def]
            return lambda c: (
                c.execute("INSERT INTO identities VALUES (?, 0)", (text,)).rowcount
            )

        outcomes = run_batch(connection, [insert("a"), insert("b")])
        self.assertEqual(outcomes, [(1, None), (1, None)])
        self.assertEqual(statements.count("BEGIN IMMEDIATE"), 1)
        self.assertEqual([s for s in statements if "SAVEPOINT" in s], [])
        self.assertEqual(names(connection), {"a", "b"})

    def test_acknowledging_an_unknown_message_runs_its_batch_once(self) -> None:
        """
        ACK of a message that does not exist is refused without failing its
        job: a job that fails makes its whole batch run again, which a
        client must not be able to cause at will.
        """
        store, connection = self.immediate_store()
        statements: list[str] = []
        connection.set_trace_callback(statements.append)
        self.failureResultOf(store.acknowledge("bob", 42, False, NOTHING), NotFound)
        self.assertEqual(statements.count("BEGIN IMMEDIATE"), 1)

    def test_full_disk_fails_every_job_of_the_batch(self) -> None:
        """
        When the database may not grow, a job that needs room fails with
        StoreError; the next, once there is room, is stored.
        """
        store, connection = self.immediate_store()
        (pages,) = connection.execute("PRAGMA page_count").fetchone()
        connection.execute(f"PRAGMA max_page_count = {pages}")
        big = "x" * 100_000
        failure = self.failureResultOf(
            store.accept(direct("alice", "bob", big), ["bob"]), StoreError
        )
        self.assertIn("full", failure.getErrorMessage())
        connection.execute("PRAGMA max_page_count = 1073741823")
        self.successResultOf(store.accept(direct("alice", "bob", "small"), ["bob"]))

    def immediate_store(self) -> tuple[SQLiteStore, sqlite3.Connection]:
        """
        A store whose jobs run at once on the test's thread, and the
        connection they run on, for the test to watch or constrain.
        """
        connections: list[sqlite3.Connection] = []

        def start(connection: sqlite3.Connection) -> ImmediateWorker:
            connections.append(connection)
            return ImmediateWorker(connection)

        store = SQLiteStore(self.path, start, Clock())
        store.open()
        self.addCleanup(store.close)
        return store, connections[0]

    def threaded_store(self) -> tuple[SQLiteStore, ThreadWorker, queue.Queue]:
        """
        A store on a real worker thread whose results come back through a
        queue that the test empties, standing in for the reactor.
        """
        calls: queue.Queue = queue.Queue()
        workers: list[ThreadWorker] = []

        def start(connection: sqlite3.Connection) -> ThreadWorker:
            workers.append(ThreadWorker(connection, lambda *c: calls.put(c)))
            return workers[0]

        store = SQLiteStore(self.path, start, Clock())
        store.open()
        return store, workers[0], calls

    def run_until(self, calls: queue.Queue, done: defer.Deferred) -> None:
        """
        Run what the worker thread hands back until C{done} has fired;
        a generous bound, not a timing.
        """
        while not done.called:
            function, *arguments = calls.get(timeout=30)
            function(*arguments)

    def test_both_workers_provide_the_interface(self) -> None:
        """
        The thread worker and the immediate one are both IStoreWorkers.
        """
        store, worker, calls = self.threaded_store()
        self.assertTrue(verifyObject(IStoreWorker, worker))
        self.run_until(calls, store.close())
        immediate = ImmediateWorker(open_database(self.path))
        self.assertTrue(verifyObject(IStoreWorker, immediate))
        immediate.stop()

    def test_thread_worker_groups_waiting_jobs_in_one_commit(self) -> None:
        """
        Jobs waiting together are committed together on the worker's
        thread, and their Deferreds fire on the caller's side, in order.
        """
        store, worker, calls = self.threaded_store()
        commits: list[str] = []
        entered, gate = threading.Event(), threading.Event()

        def hold_the_thread(connection: sqlite3.Connection) -> None:
            connection.set_trace_callback(
                lambda statement: (
                    commits.append(statement) if statement == "COMMIT" else None
                )
            )
            entered.set()
            gate.wait(30)

        worker.submit(hold_the_thread)
        entered.wait(30)
        accepted = [
            store.accept(direct("alice", "bob", f"m{n}"), ["bob"]) for n in range(200)
        ]
        gate.set()
        stopped = store.close()
        self.run_until(calls, stopped)
        ids = [self.successResultOf(d).id for d in accepted]
        self.assertEqual(ids, list(range(1, 201)))
        # One commit for the job that held the thread, one for the 200.
        self.assertEqual(len(commits), 2)
        self.failureResultOf(store.pending("bob", 0, 1, NOTHING), StoreError)

    def test_thread_worker_hands_a_batch_back_in_one_call(self) -> None:
        """
        A batch's results cross back to the reactor's thread in one call,
        not one per job: each call wakes the reactor through its pipe.
        """
        store, worker, calls = self.threaded_store()
        entered, gate = threading.Event(), threading.Event()

        def hold_the_thread(connection: sqlite3.Connection) -> None:
            entered.set()
            gate.wait(30)

        held = worker.submit(hold_the_thread)
        entered.wait(30)
        accepted = [
            store.accept(direct("alice", "bob", f"m{n}"), ["bob"]) for n in range(50)
        ]
        gate.set()
        handed_back = 0
        while not accepted[-1].called:
            function, *arguments = calls.get(timeout=30)
            function(*arguments)
            handed_back += 1
        # One call for the job that held the thread, one for the 50.
        self.assertEqual(handed_back, 2)
        self.assertIsNone(self.successResultOf(held))
        self.assertEqual(
            [self.successResultOf(d).id for d in accepted], [*range(1, 51)]
        )
        self.run_until(calls, store.close())

    def test_every_success_is_on_disk_when_a_batch_fails(self) -> None:
        """
        A batch in which one job runs out of room: that job fails, and any
        job reported stored is indeed in the database.
        """
        store, worker, calls = self.threaded_store()
        entered, gate = threading.Event(), threading.Event()

        def hold_the_thread(connection: sqlite3.Connection) -> None:
            (pages,) = connection.execute("PRAGMA page_count").fetchone()
            connection.execute(f"PRAGMA max_page_count = {pages + 1}")
            entered.set()
            gate.wait(30)

        worker.submit(hold_the_thread)
        entered.wait(30)
        drafts = [
            direct("alice", "bob", "small one"),
            direct("alice", "bob", "y" * 200_000),
            direct("alice", "bob", "small two"),
        ]
        accepted = [store.accept(draft, ["bob"]) for draft in drafts]
        gate.set()
        stopped = store.close()
        self.run_until(calls, stopped)
        outcomes = [d.result if d.called else None for d in accepted]
        for d in accepted:
            d.addErrback(lambda failure: failure.trap(StoreError))
        self.assertIsInstance(outcomes[1], Failure)
        reopened = open_database(self.path)
        self.addCleanup(reopened.close)
        kept = {body for (body,) in reopened.execute("SELECT body FROM messages")}
        for draft, outcome in zip(drafts, outcomes, strict=True):
            if not isinstance(outcome, Failure):
                self.assertIn(draft.text, kept)
