"""
The message store in SQLite, in the daemon's data directory.

Every method that touches the data turns into a job for the store's worker
(L{secmsg.daemon.store.worker}), which runs it off the reactor's thread and
fires its Deferred once the transaction that holds it has committed; the
SQL is in L{secmsg.daemon.store.streams}.  Who reads which stream
(L{secmsg.daemon.store.members}) and what waits unacknowledged for each
identity (L{secmsg.daemon.store.waiting}) are also kept in memory, so that
the protocol can ask whether an identity is known, who a message is for,
or whether a mailbox is full, without waiting.

What was pushed to whom is noted in memory and written with the next job,
or after L{SENT_WRITE_DELAY} if none comes: a push costs no transaction of
its own.  Should the daemon die before that write, a message pushed in the
last moment before comes again unmarked as a repeat; it still comes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Set
from datetime import datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from secmsg.daemon.interfaces import IMessageStore, IStoreWorker
from secmsg.daemon.store import streams
from secmsg.daemon.store.backup import backup_job
from secmsg.daemon.store.database import open_database
from secmsg.daemon.store.members import Memberships
from secmsg.daemon.store.views import AnsweredFromMemory
from secmsg.daemon.store.waiting import Taken, WaitingTotals
from secmsg.daemon.store.worker import Job
from secmsg.errors import BackupRefused, NotFound, StoreError
from secmsg.messages import (
    BROADCASTS,
    Draft,
    Kind,
    Pending,
    Retention,
    Stored,
    Stream,
    inbox,
    room_stream,
    stream_of,
    text_size,
    to_microseconds,
    within_budget,
)

log = Logger()

SENT_WRITE_DELAY = 0.5
"""Seconds a note of what was pushed waits for another job to ride on."""

_ROOM_HISTORY = """
SELECT id, kind, sender, target, body, created FROM messages
WHERE kind = 'SAY' AND target = ? ORDER BY id DESC LIMIT ?
"""

_CONVERSATION = """
SELECT * FROM (
    SELECT id, kind, sender, target, body, created FROM messages
    WHERE kind = 'MSG' AND sender = ? AND target = ?
    UNION ALL
    SELECT id, kind, sender, target, body, created FROM messages
    WHERE kind = 'MSG' AND sender = ? AND target = ?
) ORDER BY id DESC LIMIT ?
"""
"""Each way of a conversation by the index on (kind, sender, target, id),
rather than a scan of every direct message."""


@implementer(IMessageStore)
class SQLiteStore(AnsweredFromMemory):
    """
    Messages and cursors in one SQLite database, through one worker.

    The store is made closed and opened by L{open}: a daemon that forks into
    the background must open its database, take its lock and start its
    thread in the process that will serve, after the fork.
    """

    def __init__(
        self,
        path: Path,
        start_worker: Callable[[sqlite3.Connection], IStoreWorker],
        clock: IReactorTime,
    ) -> None:
        """
        @param start_worker: given the open connection, the worker that
            will run the store's jobs with it.
        @param clock: what times the write of what was pushed.
        """
        self._path = path
        self._start_worker = start_worker
        self._clock = clock
        self._worker: IStoreWorker | None = None
        self._members = Memberships()
        self._waiting = WaitingTotals()
        self._sent: dict[tuple[str, Stream], int] = {}
        self._sent_write: IDelayedCall | None = None
        self._backing_up = False

    def open(self) -> None:
        """
        Open the database and start the worker.

        @raise secmsg.errors.ConfigurationError: the database cannot be used.
        """
        connection = open_database(self._path)
        self._members = Memberships(
            streams.known_identities(connection), streams.memberships(connection)
        )
        self._waiting = WaitingTotals(streams.waiting_totals(connection))
        self._worker = self._start_worker(connection)

    def _submit(self, job: Job) -> defer.Deferred[Any]:
        if self._worker is None:
            return defer.fail(StoreError("the message store is not open"))
        if self._sent:
            job = self._with_sent(job)
        return self._worker.submit(job)

    def _with_sent(self, job: Job) -> Job:
        """
        C{job}, preceded by the write of what was pushed since the last.
        """
        marks = [(identity, stream, i) for (identity, stream), i in self._sent.items()]
        self._sent = {}
        if self._sent_write is not None and self._sent_write.active():
            self._sent_write.cancel()
        self._sent_write = None

        def both(connection: sqlite3.Connection) -> Any:
            streams.mark_sent(connection, marks)
            return job(connection)

        return both

    def accept(self, draft: Draft, recipients: Set[str]) -> defer.Deferred[Stored]:
        # Counted before the commit, so that messages in flight count too.
        size = text_size(draft.text)
        self._waiting.add(recipients, draft.kind, size)
        accepted = self._submit(lambda connection: streams.append(connection, draft))
        accepted.addErrback(self._not_accepted, recipients, (draft.kind, 1, size))
        return accepted

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
            lambda connection: streams.unread(connection, identity, after, limit, rooms)
        )

    def sent(self, deliveries: Iterable[tuple[str, Stored]]) -> None:
        marks = self._sent
        for identity, message in deliveries:
            key = (identity, stream_of(message))
            if marks.get(key, 0) < message.id:
                marks[key] = message.id
        if marks and self._sent_write is None and self._worker is not None:
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
        def job(connection: sqlite3.Connection) -> list[Taken] | None:
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
        return self._submit(job).addCallback(found)

    def join(self, identity: str, room: str, reads: bool) -> defer.Deferred[bool]:
        if not self._members.join(identity, room, reads):
            return defer.succeed(False)
        joined = self._submit(
            lambda connection: streams.open_cursors(
                connection, identity, [room_stream(room)], reads
            )
        )

        def failed(failure: Failure) -> Failure:
            self._members.part(identity, room)
            return failure

        return joined.addCallbacks(lambda _: True, failed)

    def part(self, identity: str, room: str) -> defer.Deferred[bool]:
        reads = self._members.reads(identity, room)
        if not self._members.part(identity, room):
            return defer.succeed(False)
        parted = self._submit(
            lambda connection: streams.close_cursor(
                connection, identity, room_stream(room)
            )
        )

        def done(left: tuple[int, int]) -> bool:
            self._waiting.remove(identity, [(Kind.ROOM, *left)])
            return True

        def failed(failure: Failure) -> Failure:
            self._members.join(identity, room, reads)
            return failure

        return parted.addCallbacks(done, failed)

    def start_reading(self, identity: str, room: str) -> defer.Deferred[None]:
        if not self._members.start_reading(identity, room):
            return defer.succeed(None)
        started = self._submit(
            lambda connection: streams.start_reading(
                connection, identity, room_stream(room)
            )
        )

        def failed(failure: Failure) -> Failure:
            self._members.part(identity, room)
            self._members.join(identity, room, False)
            return failure

        return started.addErrback(failed)

    def room_history(
        self, room: str, limit: int, budget: int
    ) -> defer.Deferred[list[Stored]]:
        return self._newest(_ROOM_HISTORY, (room, limit), limit, budget)

    def conversation(
        self, identity: str, other: str, limit: int, budget: int
    ) -> defer.Deferred[list[Stored]]:
        parameters = (identity, other, other, identity, limit)
        return self._newest(_CONVERSATION, parameters, limit, budget)

    def remember(self, identity: str, when: datetime) -> defer.Deferred[None]:
        if not self._members.add_identity(identity):
            return defer.succeed(None)

        def job(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT OR IGNORE INTO identities (name, first_seen) VALUES (?, ?)",
                (identity, to_microseconds(when)),
            )
            streams.open_cursors(connection, identity, [inbox(identity), BROADCASTS])

        def failed(failure: Failure) -> Failure:
            # Tried again at the next login, rather than believed.
            self._members.forget_identity(identity)
            return failure

        return self._submit(job).addErrback(failed)

    def purge(self, now: datetime, retention: Retention) -> defer.Deferred[int]:
        oldest = to_microseconds(now - retention.max_age)

        def purged(result: tuple[int, dict[tuple[str, Kind], tuple[int, int]]]) -> int:
            removed, unread = result
            for (identity, kind), (count, size) in unread.items():
                self._waiting.remove(identity, [(kind, count, size)])
            return removed

        return self._submit(
            lambda connection: streams.purge(connection, oldest, retention)
        ).addCallback(purged)

    def backup(self, destination: Path, replace: bool) -> defer.Deferred[int]:
        if self._worker is None:
            return defer.fail(StoreError("the message store is not open"))
        if self._backing_up:
            # One at a time: a second would wait behind the first, holding
            # back every job that comes after it.
            return defer.fail(BackupRefused("a backup is already under way"))
        self._backing_up = True
        made = self._worker.submit_long(backup_job(self._path, destination, replace))

        def ended(result: object) -> object:
            self._backing_up = False
            return result

        return made.addBoth(ended)

    def close(self) -> defer.Deferred[None]:
        if self._worker is None:
            return defer.succeed(None)
        if self._sent:
            self._write_sent()
        return self._worker.stop()

    def _newest(
        self, query: str, parameters: tuple[str | int, ...], limit: int, budget: int
    ) -> defer.Deferred[list[Stored]]:
        """
        Run a query for the newest messages (newest first, as LIMIT needs)
        and give them oldest first, reading rows only until the budget is
        spent.
        """

        def job(connection: sqlite3.Connection) -> list[Stored]:
            rows = connection.execute(query, parameters)
            return within_budget((streams.stored(row) for row in rows), limit, budget)

        return self._submit(job)
