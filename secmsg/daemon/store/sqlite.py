"""
The message store in SQLite, in the daemon's data directory.

Every method turns into a job for the store's worker
(L{secmsg.daemon.store.worker}), which runs it off the reactor's thread and fires
its Deferred once the transaction that holds it has committed.  The
identities that have logged in, and what waits unacknowledged for each
(L{secmsg.daemon.store.waiting}), are also kept in memory, so that the protocol
can ask whether an identity is known, or its mailbox full, without waiting.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from secmsg.daemon.interfaces import IMessageStore, IStoreWorker
from secmsg.daemon.store.backup import backup_job
from secmsg.daemon.store.database import open_database
from secmsg.daemon.store.waiting import WaitingTotals
from secmsg.daemon.store.worker import Job
from secmsg.errors import BackupRefused, NotFound, StoreError
from secmsg.messages import (
    Draft,
    Kind,
    Pending,
    Retention,
    Stored,
    from_microseconds,
    text_size,
    to_microseconds,
    within_budget,
)

_PENDING = """
SELECT m.id, m.kind, m.sender, m.target, m.body, m.created, b.delivered
FROM mailbox b JOIN messages m ON m.id = b.message_id
WHERE b.recipient = ? AND b.acknowledged = 0 AND b.message_id > ?
ORDER BY b.message_id LIMIT ?
"""

_ENTRY = """
SELECT b.acknowledged, length(CAST(m.body AS BLOB))
FROM mailbox b JOIN messages m ON m.id = b.message_id
WHERE b.recipient = ? AND b.message_id = ?
"""
"""One mailbox entry: whether it is acknowledged, and its text's bytes."""

_ACKNOWLEDGE_ONE = """
UPDATE mailbox SET acknowledged = 1, delivered = 1
WHERE recipient = ? AND acknowledged = 0 AND message_id = ?
"""

_DELIVERED_UP_TO = """
SELECT b.message_id, m.kind, length(CAST(m.body AS BLOB))
FROM mailbox b JOIN messages m ON m.id = b.message_id
WHERE b.recipient = ? AND b.acknowledged = 0 AND b.delivered = 1
AND b.message_id <= ?
"""
"""What an C{ACK UPTO} may acknowledge, with each message's kind and bytes."""

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
class SQLiteStore:
    """
    Messages and mailboxes in one SQLite database, through one worker.

    The store is made closed and opened by L{open}: a daemon that forks into
    the background must open its database, take its lock and start its
    thread in the process that will serve, after the fork.
    """

    def __init__(
        self, path: Path, start_worker: Callable[[sqlite3.Connection], IStoreWorker]
    ) -> None:
        """
        @param start_worker: given the open connection, the worker that
            will run the store's jobs with it.
        """
        self._path = path
        self._start_worker = start_worker
        self._worker: IStoreWorker | None = None
        self._known: set[str] = set()
        self._waiting = WaitingTotals()
        self._backing_up = False

    def open(self) -> None:
        """
        Open the database and start the worker.

        @raise secmsg.errors.ConfigurationError: the database cannot be used.
        """
        connection = open_database(self._path)
        self._known = known_identities(connection)
        self._waiting = WaitingTotals(waiting_totals(connection))
        self._worker = self._start_worker(connection)

    def _submit(self, job: Job) -> defer.Deferred[Any]:
        if self._worker is None:
            return defer.fail(StoreError("the message store is not open"))
        return self._worker.submit(job)

    def accept(self, draft: Draft, recipients: Sequence[str]) -> defer.Deferred[Stored]:
        def job(connection: sqlite3.Connection) -> Stored:
            cursor = connection.execute(
                "INSERT INTO messages (kind, sender, target, body, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    draft.kind.value,
                    draft.sender,
                    draft.target,
                    draft.text,
                    to_microseconds(draft.created),
                ),
            )
            message_id = cursor.lastrowid
            connection.executemany(
                "INSERT INTO mailbox (recipient, message_id) VALUES (?, ?)",
                [(recipient, message_id) for recipient in recipients],
            )
            return Stored.of(message_id, draft)

        # Counted before the commit, so that messages in flight count too.
        size = text_size(draft.text)
        self._waiting.add(recipients, size)
        accepted = self._submit(job)
        accepted.addErrback(self._not_accepted, recipients, size)
        return accepted

    def _not_accepted(
        self, failure: Failure, recipients: Sequence[str], size: int
    ) -> Failure:
        """
        A message that was not kept waits for nobody: give back what its
        accept counted.
        """
        for recipient in recipients:
            self._waiting.remove(recipient, 1, size)
        return failure

    def pending(
        self, identity: str, after: int, limit: int
    ) -> defer.Deferred[list[Pending]]:
        def job(connection: sqlite3.Connection) -> list[Pending]:
            rows = connection.execute(_PENDING, (identity, after, limit))
            return [Pending(_stored(row[:-1]), bool(row[-1])) for row in rows]

        return self._submit(job)

    def delivered(self, deliveries: Sequence[tuple[str, int]]) -> defer.Deferred[None]:
        def job(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "UPDATE mailbox SET delivered = 1"
                " WHERE recipient = ? AND message_id = ?",
                deliveries,
            )

        return self._submit(job)

    def acknowledge(
        self,
        identity: str,
        message_id: int,
        up_to: bool,
        rooms_seen: frozenset[int] = frozenset(),
    ) -> defer.Deferred[int]:
        def job(connection: sqlite3.Connection) -> tuple[int, int] | None:
            if up_to:
                return _acknowledge_up_to(connection, identity, message_id, rooms_seen)
            return _acknowledge_one(connection, identity, message_id)

        def found(acknowledged: tuple[int, int] | None) -> int:
            if acknowledged is None:
                raise NotFound(f"no message {message_id} for {identity}")
            count, size = acknowledged
            self._waiting.remove(identity, count, size)
            return count

        # Refused here rather than in the job: a job that fails makes its
        # batch run again, and a client must not be able to cause that.
        return self._submit(job).addCallback(found)

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
        if identity in self._known:
            return defer.succeed(None)

        def job(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT OR IGNORE INTO identities (name, first_seen) VALUES (?, ?)",
                (identity, to_microseconds(when)),
            )

        # Known once it is on disk, so that a failed write is tried again at
        # the next login instead of being believed.
        remembered = self._submit(job)
        remembered.addCallback(lambda _: self._known.add(identity))
        return remembered

    def knows(self, identity: str) -> bool:
        return identity in self._known

    def identities(self) -> frozenset[str]:
        return frozenset(self._known)

    def waiting(self, identity: str) -> tuple[int, int]:
        return self._waiting.of(identity)

    def purge(self, now: datetime, retention: Retention) -> defer.Deferred[int]:
        def job(connection: sqlite3.Connection) -> tuple[int, list[Any]]:
            oldest = to_microseconds(now - retention.max_age)
            # Only age removes what someone has yet to acknowledge; the
            # count limits below never do.
            unread = connection.execute(_UNACKNOWLEDGED_BEFORE, (oldest,)).fetchall()
            removed = connection.execute(
                "DELETE FROM messages WHERE created < ?", (oldest,)
            ).rowcount
            for kind, keep in (
                (Kind.ROOM, retention.room_max),
                (Kind.DIRECT, retention.mailbox_max),
            ):
                removed += connection.execute(
                    _PURGE_BEYOND_COUNT, (kind.value, keep)
                ).rowcount
            return removed, unread

        def purged(result: tuple[int, list[Any]]) -> int:
            removed, unread = result
            for recipient, count, size in unread:
                self._waiting.remove(recipient, count, size)
            return removed

        return self._submit(job).addCallback(purged)

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
            return within_budget((_stored(row) for row in rows), limit, budget)

        return self._submit(job)


_PURGE_BEYOND_COUNT = """
DELETE FROM messages WHERE id IN (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER (PARTITION BY target ORDER BY id DESC) AS newer
        FROM messages WHERE kind = ?
    )
    WHERE newer > ?
    AND NOT EXISTS (
        SELECT 1 FROM mailbox WHERE message_id = id AND acknowledged = 0
    )
)
"""
"""Messages of a kind beyond the newest N of their room or recipient, but
none that someone has yet to acknowledge."""


_UNACKNOWLEDGED_BEFORE = """
SELECT b.recipient, count(*), sum(length(CAST(m.body AS BLOB)))
FROM messages m JOIN mailbox b ON b.message_id = m.id
WHERE m.created < ? AND b.acknowledged = 0
GROUP BY b.recipient
"""
"""Per recipient, what the age limit is about to remove unacknowledged."""

_WAITING = """
SELECT b.recipient, count(*), sum(length(CAST(m.body AS BLOB)))
FROM mailbox b JOIN messages m ON m.id = b.message_id
WHERE b.acknowledged = 0
GROUP BY b.recipient
"""


def _acknowledge_one(
    connection: sqlite3.Connection, identity: str, message_id: int
) -> tuple[int, int] | None:
    """
    Acknowledge one message of C{identity}'s mailbox; how many that was
    (none if it was already) and its bytes, or L{None} if it is not there.
    """
    entry = connection.execute(_ENTRY, (identity, message_id)).fetchone()
    if entry is None:
        return None
    acknowledged, size = entry
    if acknowledged:
        return 0, 0
    connection.execute(_ACKNOWLEDGE_ONE, (identity, message_id))
    return 1, size


def _acknowledge_up_to(
    connection: sqlite3.Connection,
    identity: str,
    message_id: int,
    rooms_seen: frozenset[int],
) -> tuple[int, int]:
    """
    Acknowledge every message of C{identity}'s mailbox sent to it up to
    C{message_id}, but the room messages not among C{rooms_seen}; how many
    that was and their bytes.
    """
    rows = [
        (entry_id, size)
        for entry_id, kind, size in connection.execute(
            _DELIVERED_UP_TO, (identity, message_id)
        )
        if kind != Kind.ROOM.value or entry_id in rooms_seen
    ]
    connection.executemany(
        _ACKNOWLEDGE_ONE, [(identity, entry_id) for entry_id, _ in rows]
    )
    return len(rows), sum(size for _, size in rows)


def waiting_totals(connection: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    """
    What waits unacknowledged for each identity, read once at startup.
    """
    return {
        recipient: (count, size)
        for recipient, count, size in connection.execute(_WAITING)
    }


def known_identities(connection: sqlite3.Connection) -> set[str]:
    """
    The identities that have logged in, read once at startup.
    """
    return {name for (name,) in connection.execute("SELECT name FROM identities")}


def _stored(row: Sequence[Any]) -> Stored:
    message_id, kind, sender, target, body, created = row
    return Stored(
        message_id, Kind(kind), sender, target, body, from_microseconds(created)
    )
