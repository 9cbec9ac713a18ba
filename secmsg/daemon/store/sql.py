"""
The message store in SQL: what the SQLite store and the PostgreSQL store
share, all but how each opens its database.

Every method that touches the data turns into a job for the store's worker
(L{secmsg.daemon.store.worker}), which runs it off the reactor's thread and
fires its Deferred once the transaction that holds it has committed; the
SQL is in L{secmsg.daemon.store.streams}.  Who reads which stream
(L{secmsg.daemon.store.members}) and what waits unacknowledged for each
identity (L{secmsg.daemon.store.waiting}) are also kept in memory, so that
the protocol can ask whether an identity is known, who a message is for,
or whether a mailbox is full, without waiting.

What was pushed to whom is noted in memory and written with the next job
that reads it, or after L{SENT_WRITE_DELAY} if none comes: a push costs no
transaction of its own, and the marks of a steady room (one per member
and message) are written once per L{SENT_WRITE_DELAY}, each cursor moved
once, not with each message that follows.  An append reads no cursor and
carries none; a job that reads one identity's cursors (its ACK, what
waits for it, its join) carries that identity's; any other, everyone's.
Should the daemon die before that write, a message pushed in the last
moment before comes again unmarked as a repeat; it still comes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from secmsg.daemon.interfaces import IStoreWorker
from secmsg.daemon.store import streams
from secmsg.daemon.store.members import Memberships
from secmsg.daemon.store.pushed import PushedMarks
from secmsg.daemon.store.views import AnsweredFromMemory
from secmsg.daemon.store.waiting import Taken, WaitingTotals
from secmsg.daemon.store.worker import Connection, Job
from secmsg.errors import BackupRefused, NotFound, StoreError
from secmsg.messages import (
    Draft,
    Kind,
    Pending,
    Retention,
    Stored,
    room_stream,
    text_size,
    to_microseconds,
)

log = Logger()

T = TypeVar("T")

SENT_WRITE_DELAY = 0.5
"""Seconds a note of what was pushed waits for another job to ride on."""


def read_tables(connection: Connection) -> tuple[Memberships, WaitingTotals]:
    """
    What the store keeps in memory, as the data says: who reads what, and
    what waits for whom.
    """
    members = Memberships(
        streams.known_identities(connection), streams.memberships(connection)
    )
    return members, WaitingTotals(streams.waiting_totals(connection))


class StreamStore(AnsweredFromMemory):
    """
    Messages and cursors in one SQL database, through one worker: all of
    the store but how its database is opened and backed up.

    The store is made closed and opened by L{open}: a daemon that forks into
    the background must open its database and start its thread in the
    process that will serve, after the fork.
    """

    def __init__(
        self,
        start_worker: Callable[[Any], IStoreWorker],
        clock: IReactorTime,
    ) -> None:
        """
        @param start_worker: given the open connection, the worker that
            will run the store's jobs with it.
        @param clock: what times the write of what was pushed.
        """
        self._start_worker = start_worker
        self._clock = clock
        self._worker: IStoreWorker | None = None
        self._members = Memberships()
        self._waiting = WaitingTotals()
        self._sent = PushedMarks()
        self.changes = 0
        """How many times this daemon has changed who reads what, in memory,
        ahead of the commit: what a read of the data begun before it may
        not have seen."""
        self._sent_write: IDelayedCall | None = None

    def open_connection(self) -> Connection:
        """
        Open the database, made or upgraded to the current schema.

        @raise secmsg.errors.ConfigurationError: the database cannot be used.
        """
        raise NotImplementedError

    def open(self) -> None:
        """
        Open the database and start the worker.

        @raise secmsg.errors.ConfigurationError: the database cannot be used.
        """
        connection = self.open_connection()
        self._members, self._waiting = read_tables(connection)
        self._worker = self._start_worker(connection)

    def _submit(self, job: Job, reader: str | None = None) -> defer.Deferred[Any]:
        """
        Submit C{job} with the marks of what was pushed that it may read:
        C{reader}'s alone, for a job that reads only that identity's
        cursors, or everyone's.
        """
        if self._sent:
            job = self._with_sent(job, reader)
        return self._submit_alone(job)

    def _submit_alone(self, job: Job) -> defer.Deferred[Any]:
        """
        Submit C{job} without the marks of what was pushed.
        """
        if self._worker is None:
            return defer.fail(StoreError("the message store is not open"))
        return self._worker.submit(job)

    def _with_sent(self, job: Job, reader: str | None) -> Job:
        """
        C{job}, preceded by the write of what was pushed since the last
        (to C{reader} alone, unless L{None}).
        """
        marks = self._sent.take(reader)
        if not marks:
            return job
        if not self._sent and self._sent_write is not None:
            if self._sent_write.active():
                self._sent_write.cancel()
            self._sent_write = None

        def both(connection: Connection) -> Any:
            streams.mark_sent(connection, marks)
            return job(connection)

        return both

    def accept(self, draft: Draft, recipients: Set[str]) -> defer.Deferred[Stored]:
        # Counted before the commit, so that messages in flight count too.
        size = text_size(draft.text)
        self._waiting.add(recipients, draft.kind, size)
        accepted = self._append(draft)
        accepted.addErrback(self._not_accepted, recipients, (draft.kind, 1, size))
        return accepted

    def _append(self, draft: Draft) -> defer.Deferred[Stored]:
        """
        Append C{draft} to its stream, in a job of its own: an append reads
        no cursor, so it leaves the marks of what was pushed to wait.
        """
        return self._submit_alone(lambda connection: streams.append(connection, draft))

    def _not_accepted(
        self, failure: Failure, recipients: Set[str], counted: Taken
    ) -> Failure:
        """
        A message that was not kept waits for nobody: give back what its
        accept counted.
        """
        for recipient in recipients:
            self._waiting.remove(recipient, [counted])
        return failure

    def pending(
        self, identity: str, after: int, limit: int, rooms: frozenset[str]
    ) -> defer.Deferred[list[Pending]]:
        return self._submit(
            lambda connection: streams.unread(
                connection, identity, after, limit, rooms
            ),
            identity,
        )

    def sent(self, deliveries: Iterable[tuple[str, Stored]]) -> None:
        self._sent.note(deliveries)
        if self._sent and self._sent_write is None and self._worker is not None:
            self._sent_write = self._clock.callLater(SENT_WRITE_DELAY, self._write_sent)

    def _write_sent(self) -> None:
        """
        No job came to carry what was pushed (or the store closes): write
        it alone.
        """
        self._submit(lambda _: None).addErrback(
            lambda failure: log.error(
                "message store: could not note what was pushed: {error}",
                error=failure.getErrorMessage(),
            )
        )

    def acknowledge(
        self, identity: str, message_id: int, up_to: bool, rooms: frozenset[str]
    ) -> defer.Deferred[int]:
        def job(connection: Connection) -> list[Taken] | None:
            if up_to:
                return streams.acknowledge_up_to(
                    connection, identity, message_id, rooms
                )
            return streams.acknowledge_one(connection, identity, message_id, rooms)

        def found(acknowledged: list[Taken] | None) -> int:
            if acknowledged is None:
                raise NotFound(f"no message {message_id} for {identity}")
            self._waiting.remove(identity, acknowledged)
            return sum(count for _, count, _ in acknowledged)

        # Refused here rather than in the job: a job that fails makes its
        # batch run again, and a client must not be able to cause that.
        return self._told(self._submit(job, identity).addCallback(found), identity)

    def join(self, identity: str, room: str, reads: bool) -> defer.Deferred[bool]:
        if not self._members.join(identity, room, reads):
            return defer.succeed(False)
        self.changes += 1
        joined = self._submit(
            lambda connection: streams.open_cursors(
                connection, identity, [room_stream(room)], reads
            ),
            identity,
        )

        def failed(failure: Failure) -> Failure:
            self._members.part(identity, room)
            return failure

        return self._told(joined.addCallbacks(lambda _: True, failed), identity)

    def part(self, identity: str, room: str) -> defer.Deferred[bool]:
        reads = self._members.reads(identity, room)
        if not self._members.part(identity, room):
            return defer.succeed(False)
        self.changes += 1
        parted = self._submit(
            lambda connection: streams.close_cursor(
                connection, identity, room_stream(room)
            ),
            identity,
        )

        def done(left: tuple[int, int]) -> bool:
            self._waiting.remove(identity, [(Kind.ROOM, *left)])
            return True

        def failed(failure: Failure) -> Failure:
            self._members.join(identity, room, reads)
            return failure

        return self._told(parted.addCallbacks(done, failed), identity)

    def start_reading(self, identity: str, room: str) -> defer.Deferred[None]:
        if not self._members.start_reading(identity, room):
            return defer.succeed(None)
        self.changes += 1
        started = self._submit(
            lambda connection: streams.start_reading(
                connection, identity, room_stream(room)
            ),
            identity,
        )

        def failed(failure: Failure) -> Failure:
            self._members.part(identity, room)
            self._members.join(identity, room, False)
            return failure

        return self._told(started.addErrback(failed), identity)

    def room_history(
        self, room: str, limit: int, budget: int
    ) -> defer.Deferred[list[Stored]]:
        return self._submit(
            lambda connection: streams.room_history(connection, room, limit, budget)
        )

    def conversation(
        self, identity: str, other: str, limit: int, budget: int
    ) -> defer.Deferred[list[Stored]]:
        return self._submit(
            lambda connection: streams.conversation(
                connection, identity, other, limit, budget
            )
        )

    def remember(self, identity: str, when: datetime) -> defer.Deferred[None]:
        if not self._members.add_identity(identity):
            return defer.succeed(None)
        self.changes += 1

        def job(connection: Connection) -> None:
            streams.add_identity(connection, identity, to_microseconds(when))

        def failed(failure: Failure) -> Failure:
            # Tried again at the next login, rather than believed.
            self._members.forget_identity(identity)
            return failure

        return self._told(self._submit(job).addErrback(failed), identity)

    def _told(self, done: defer.Deferred[T], identity: str) -> defer.Deferred[T]:
        """
        C{done}, which tells L{changed} of C{identity} once it has
        succeeded.
        """

        def tell(result: T) -> T:
            self.changed(identity)
            return result

        return done.addCallback(tell)

    def changed(self, identity: str) -> None:
        """
        What the store keeps of C{identity} (its rooms, what waits for it,
        whether it is known) has changed, durably: for a store that other
        daemons share, to tell them.
        """

    def purge(self, now: datetime, retention: Retention) -> defer.Deferred[int]:
        oldest = to_microseconds(now - retention.max_age)

        def purged(result: tuple[int, dict[tuple[str, Kind], tuple[int, int]]]) -> int:
            removed, unread = result
            for (identity, kind), (count, size) in unread.items():
                self._waiting.remove(identity, [(kind, count, size)])
            for identity in {identity for identity, _ in unread}:
                self.changed(identity)
            return removed

        return self._submit(
            lambda connection: streams.purge(connection, oldest, retention)
        ).addCallback(purged)

    def backup(self, destination: Path, replace: bool) -> defer.Deferred[int]:
        return defer.fail(
            BackupRefused("this store's database is backed up by its own tools")
        )

    def close(self) -> defer.Deferred[None]:
        if self._worker is None:
            return defer.succeed(None)
        if self._sent:
            self._write_sent()
        return self._worker.stop()
