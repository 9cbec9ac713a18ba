"""
The message store on PostgreSQL: the SQL store (L{secmsg.daemon.store.sql})
on a database (L{secmsg.daemon.store.shared_database}) that one daemon
holds alone, or that the daemons of a cluster share, each telling the
others what it changed.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import Protocol, TypeVar

import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from secmsg.daemon.interfaces import IMessageStore, IStoreWorker
from secmsg.daemon.store import streams
from secmsg.daemon.store.appends import Appends
from secmsg.daemon.store.members import Memberships
from secmsg.daemon.store.shared_database import (
    PostgresConnection,
    Segment,
    describe,
    first_line,
    open_shared_database,
)
from secmsg.daemon.store.sql import StreamStore, read_tables
from secmsg.daemon.store.waiting import WaitingTotals
from secmsg.daemon.store.worker import Connection
from secmsg.errors import ConfigurationError
from secmsg.messages import Draft, Kind, Stored, text_size

T = TypeVar("T")


class Sharers(Protocol):
    """
    The other daemons of a cluster, as a shared store tells them what it
    changed (L{secmsg.daemon.cluster.node.ClusterNode}).
    """

    def committed(self, segment: Segment) -> None:
        """
        This daemon committed C{segment}; called on the store's thread.
        """

    def changed(self, identity: str) -> None:
        """
        This daemon changed what the store keeps of C{identity}.
        """


@implementer(IMessageStore)
class PostgresStore(StreamStore):
    """
    Messages and cursors in a PostgreSQL database, through one worker.

    @param shared: whether other daemons share the database, as the
        daemons of a cluster do, and are told what this one changes
        (L{share_with}); otherwise this daemon holds it alone.
    """

    def __init__(
        self,
        url: str,
        start_worker: Callable[[PostgresConnection], IStoreWorker],
        clock: IReactorTime,
        shared: bool = False,
    ) -> None:
        super().__init__(start_worker, clock)
        self._url = url
        self._shared = shared
        self._sharers: Sharers | None = None
        self._database: PostgresConnection | None = None
        self._appends: Appends | None = None
        self.head = 0
        """The id of the last message appended when the store opened."""
        self.bus_key = b""
        """The key the daemons of a cluster seal their bus messages with."""

    def share_with(self, sharers: Sharers) -> None:
        """
        Tell C{sharers} from now on what this daemon changes.
        """
        self._sharers = sharers

    def open_connection(self) -> PostgresConnection:
        committed = self._segment_committed if self._shared else None
        database = open_shared_database(self._url, committed, self._clock.seconds)
        where = f"database {describe(self._url)}"
        try:
            head = database.execute("SELECT position FROM head").fetchone()
            key = database.execute("SELECT secret FROM bus_key").fetchone()
        except psycopg.Error as error:
            database.close()
            raise ConfigurationError(where, first_line(error)) from None
        if head is None or key is None:
            database.close()
            raise ConfigurationError(
                where, "holds a secmsg store without its head or its bus key"
            )
        self.head, self.bus_key = head[0], bytes(key[0])
        self._database = database
        return database

    def _segment_committed(self, segment: Segment) -> None:
        if self._sharers is not None:
            self._sharers.committed(segment)

    def changed(self, identity: str) -> None:
        if self._sharers is not None:
            self._sharers.changed(identity)

    def _append(self, draft: Draft) -> Deferred[Stored]:
        """
        Append C{draft} with every other accepted until the store's thread
        comes to their job: one statement for them all
        (L{secmsg.daemon.store.appends}).
        """
        database = self._database
        if database is None:
            return super()._append(draft)
        added = None if self._appends is None else self._appends.add(draft)
        if added is not None:
            return added
        appends = self._appends = Appends(draft)
        self._submit_alone(lambda _: database.append_all(appends.take())).addBoth(
            appends.settle
        )
        return appends.first

    def between(
        self, after: int, up_to: int, limit: int
    ) -> Deferred[tuple[list[Stored], int]]:
        """
        Up to C{limit} messages of every stream above C{after} and up to
        C{up_to}, oldest first: what a daemon of a cluster missed; and the
        head, beyond which no segment can yet begin.
        """

        def read(connection: Connection) -> tuple[list[Stored], int]:
            (head,) = connection.execute("SELECT position FROM head").fetchone()
            return streams.between(connection, after, up_to, limit), head

        return self._submit(read)

    def renew(self, identity: str) -> Deferred[None]:
        """
        Read again what the data says of C{identity}, which another daemon
        changed: its rooms, what waits for it, whether it is known.
        """

        def renewed(
            now: tuple[bool, list[tuple[str, bool]], dict[Kind, tuple[int, int]]],
        ) -> None:
            known, rooms, totals = now
            self._members.renew(identity, known, rooms)
            self._waiting.renew(identity, totals)

        return self._read_settled(
            lambda connection: streams.identity_now(connection, identity), renewed
        )

    def renew_all(self) -> Deferred[None]:
        """
        Read again who reads what and what waits for whom, for every
        identity: what the other daemons said of them may have been lost.
        """

        def renewed(tables: tuple[Memberships, WaitingTotals]) -> None:
            self._members, self._waiting = tables

        return self._read_settled(read_tables, renewed)

    def _read_settled(
        self, read: Callable[[Connection], T], take: Callable[[T], None]
    ) -> Deferred[None]:
        """
        Read the data with C{read} and C{take} what it says, unless this
        daemon changed who reads what meanwhile, ahead of its commit: the
        read may not have seen that change, and would undo it in memory.
        Then read again, after the change's job.
        """
        changes = self.changes

        def settled(found: T) -> Deferred[None] | None:
            if self.changes != changes:
                return self._read_settled(read, take)
            take(found)
            return None

        return self._submit(read).addCallback(settled)

    def count_elsewhere(self, message: Stored, recipients: Set[str]) -> None:
        """
        Count C{message}, which another daemon accepted, as waiting for
        C{recipients}.
        """
        self._waiting.add(recipients, message.kind, text_size(message.text))
