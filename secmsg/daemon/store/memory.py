"""
The message store in memory, for tests: the same behaviour as the SQLite
store, answered at once and forgotten at exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from twisted.internet import defer
from zope.interface import implementer

from secmsg.daemon.interfaces import IMessageStore
from secmsg.daemon.store.members import Memberships
from secmsg.daemon.store.views import AnsweredFromMemory
from secmsg.daemon.store.waiting import WaitingTotals
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
    within_budget,
)


@dataclass
class _Cursor:
    """
    How far one identity has got in one stream: what is above C{since} is
    for it, what is up to C{acknowledged} it has acknowledged, and what is
    up to C{sent} was pushed to it.
    """

    since: int
    acknowledged: int
    sent: int


@implementer(IMessageStore)
@dataclass
class MemoryStore(AnsweredFromMemory):
    """
    Messages, cursors and known identities in dictionaries.

    @ivar failing: while true, every write fails as a full disk would.
    """

    failing: bool = False
    _messages: dict[int, Stored] = field(default_factory=dict)
    _cursors: dict[tuple[str, Stream], _Cursor] = field(default_factory=dict)
    _acknowledged: set[tuple[str, int]] = field(default_factory=set)
    _members: Memberships = field(default_factory=Memberships)
    _waiting: WaitingTotals = field(default_factory=WaitingTotals)
    _last_id: int = 0

    def accept(self, draft: Draft, recipients: Set[str]) -> defer.Deferred[Stored]:
        if self.failing:
            return defer.fail(StoreError("database or disk is full"))
        self._last_id += 1
        message = Stored.of(self._last_id, draft)
        self._messages[message.id] = message
        self._waiting.add(recipients, draft.kind, text_size(draft.text))
        return defer.succeed(message)

    def pending(
        self, identity: str, after: int, limit: int, rooms: frozenset[str]
    ) -> defer.Deferred[list[Pending]]:
        waiting = [
            Pending(message, message.id <= self._cursors[key].sent)
            for message in sorted(self._messages.values(), key=lambda m: m.id)
            if message.id > after
            and self._unread_by(identity, message)
            and (message.kind is not Kind.ROOM or message.target in rooms)
            for key in ((identity, stream_of(message)),)
        ]
        return defer.succeed(waiting[:limit])

    def sent(self, deliveries: Iterable[tuple[str, Stored]]) -> None:
        for identity, message in deliveries:
            cursor = self._cursors.get((identity, stream_of(message)))
            if cursor is not None:
                cursor.sent = max(cursor.sent, message.id)

    def acknowledge(
        self, identity: str, message_id: int, up_to: bool, rooms: frozenset[str]
    ) -> defer.Deferred[int]:
        if up_to:
            taken = [
                m
                for m in self._messages.values()
                if m.id <= message_id
                and self._unread_by(identity, m)
                and m.id <= self._cursors[(identity, stream_of(m))].sent
                and (m.kind is not Kind.ROOM or m.target in rooms)
            ]
        else:
            message = self._messages.get(message_id)
            if (
                message is None
                or not self._is_for(identity, message)
                or (message.kind is Kind.ROOM and message.target not in rooms)
            ):
                return defer.fail(NotFound(f"no message {message_id} for {identity}"))
            taken = [message] if self._unread_by(identity, message) else []
        for message in taken:
            self._acknowledged.add((identity, message.id))
        self._waiting.remove(identity, [(m.kind, 1, text_size(m.text)) for m in taken])
        return defer.succeed(len(taken))

    def join(self, identity: str, room: str, reads: bool) -> defer.Deferred[bool]:
        if not self._members.join(identity, room, reads):
            return defer.succeed(False)
        self._open(identity, room_stream(room), self._last_id)
        return defer.succeed(True)

    def start_reading(self, identity: str, room: str) -> defer.Deferred[None]:
        if self._members.start_reading(identity, room):
            last = self._last_id
            self._cursors[(identity, room_stream(room))] = _Cursor(last, last, last)
        return defer.succeed(None)

    def part(self, identity: str, room: str) -> defer.Deferred[bool]:
        self._drop_unread(identity, room)
        if not self._members.part(identity, room):
            return defer.succeed(False)
        del self._cursors[(identity, room_stream(room))]
        return defer.succeed(True)

    def _drop_unread(self, identity: str, room: str) -> None:
        """
        What waited for C{identity} in C{room} waits no more.
        """
        left = [
            m
            for m in self._messages.values()
            if stream_of(m) == room_stream(room) and self._unread_by(identity, m)
        ]
        self._waiting.remove(
            identity, [(Kind.ROOM, len(left), sum(text_size(m.text) for m in left))]
        )

    def room_history(
        self, room: str, limit: int, budget: int
    ) -> defer.Deferred[list[Stored]]:
        return defer.succeed(
            self._newest(
                lambda m: m.kind is Kind.ROOM and m.target == room, limit, budget
            )
        )

    def conversation(
        self, identity: str, other: str, limit: int, budget: int
    ) -> defer.Deferred[list[Stored]]:
        pair = {identity, other}
        return defer.succeed(
            self._newest(
                lambda m: m.kind is Kind.DIRECT and {m.sender, m.target} == pair,
                limit,
                budget,
            )
        )

    def remember(self, identity: str, when: datetime) -> defer.Deferred[None]:
        if self._members.add_identity(identity):
            self._open(identity, inbox(identity), 0)
            self._open(identity, BROADCASTS, self._last_id)
        return defer.succeed(None)

    def purge(self, now: datetime, retention: Retention) -> defer.Deferred[int]:
        doomed = {
            m.id for m in self._messages.values() if m.created < now - retention.max_age
        }
        for kind, limit in (
            (Kind.ROOM, retention.room_max),
            (Kind.DIRECT, retention.mailbox_max),
        ):
            by_target: dict[str, list[Stored]] = {}
            for m in sorted(self._messages.values(), key=lambda m: -m.id):
                if m.kind is kind:
                    by_target.setdefault(m.target, []).append(m)
            for newest_first in by_target.values():
                doomed.update(
                    m.id for m in newest_first[limit:] if not self._unread_by_anyone(m)
                )
        for message_id in sorted(doomed):
            message = self._messages[message_id]
            for identity, stream in list(self._cursors):
                if stream == stream_of(message) and self._unread_by(identity, message):
                    taken = (message.kind, 1, text_size(message.text))
                    self._waiting.remove(identity, [taken])
            del self._messages[message_id]
        return defer.succeed(len(doomed))

    def backup(self, destination: Path, replace: bool) -> defer.Deferred[int]:
        return defer.fail(
            BackupRefused(
                f"not written to {destination}: this daemon keeps its "
                "messages in memory, with nothing on disk to copy"
            )
        )

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def _open(self, identity: str, stream: Stream, since: int) -> None:
        self._cursors.setdefault((identity, stream), _Cursor(since, since, since))

    def _is_for(self, identity: str, message: Stored) -> bool:
        """
        Whether C{message} is in a stream C{identity} reads, from after its
        cursor began, and not of its own saying.
        """
        cursor = self._cursors.get((identity, stream_of(message)))
        if cursor is None or message.id <= cursor.since:
            return False
        if message.kind is Kind.ROOM and not self._members.reads(
            identity, message.target
        ):
            return False
        return message.kind is Kind.DIRECT or message.sender != identity

    def _unread_by(self, identity: str, message: Stored) -> bool:
        return (
            self._is_for(identity, message)
            and (identity, message.id) not in self._acknowledged
        )

    def _unread_by_anyone(self, message: Stored) -> bool:
        return any(
            self._unread_by(identity, message)
            for identity, stream in self._cursors
            if stream == stream_of(message)
        )

    def _newest(
        self, wanted: Callable[[Stored], bool], limit: int, budget: int
    ) -> list[Stored]:
        """
        The newest C{limit} messages C{wanted} picks, within C{budget},
        oldest first.
        """
        newest = sorted(self._messages.values(), key=lambda m: -m.id)
        return within_budget((m for m in newest if wanted(m)), limit, budget)
