"""
The message store in memory, for tests: the same behaviour as the SQLite
store, answered at once and forgotten at exit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from twisted.internet import defer
from zope.interface import implementer

from secmsg.daemon.interfaces import IMessageStore
from secmsg.daemon.store.waiting import WaitingTotals
from secmsg.errors import BackupRefused, NotFound, StoreError
from secmsg.messages import (
    Draft,
    Kind,
    Pending,
    Retention,
    Stored,
    text_size,
    within_budget,
)


@dataclass
class _Entry:
    acknowledged: bool = False
    delivered: bool = False


@implementer(IMessageStore)
@dataclass
class MemoryStore:
    """
    Messages, mailboxes and known identities in dictionaries.

    @ivar failing: while true, every write fails as a full disk would.
    """

    failing: bool = False
    _messages: dict[int, Stored] = field(default_factory=dict)
    _mailboxes: dict[str, dict[int, _Entry]] = field(default_factory=dict)
    _known: set[str] = field(default_factory=set)
    _waiting: WaitingTotals = field(default_factory=WaitingTotals)
    _last_id: int = 0

    def accept(self, draft: Draft, recipients: Sequence[str]) -> defer.Deferred[Stored]:
        if self.failing:
            return defer.fail(StoreError("database or disk is full"))
        self._last_id += 1
        message = Stored.of(self._last_id, draft)
        self._messages[message.id] = message
        for recipient in recipients:
            self._mailboxes.setdefault(recipient, {})[message.id] = _Entry()
        self._waiting.add(recipients, text_size(draft.text))
        return defer.succeed(message)

    def pending(
        self, identity: str, after: int, limit: int
    ) -> defer.Deferred[list[Pending]]:
        mailbox = self._mailboxes.get(identity, {})
        waiting = [
            Pending(self._messages[message_id], entry.delivered)
            for message_id, entry in sorted(mailbox.items())
            if not entry.acknowledged and message_id > after
        ]
        return defer.succeed(waiting[:limit])

    def delivered(self, deliveries: Sequence[tuple[str, int]]) -> defer.Deferred[None]:
        for identity, message_id in deliveries:
            entry = self._mailboxes.get(identity, {}).get(message_id)
            if entry is not None:
                entry.delivered = True
        return defer.succeed(None)

    def acknowledge(
        self,
        identity: str,
        message_id: int,
        up_to: bool,
        rooms_seen: frozenset[int] = frozenset(),
    ) -> defer.Deferred[int]:
        mailbox = self._mailboxes.get(identity, {})
        if message_id not in mailbox and not up_to:
            return defer.fail(NotFound(f"no message {message_id} for {identity}"))
        fresh = [
            entry_id
            for entry_id, entry in mailbox.items()
            if not entry.acknowledged
            and (
                (not up_to and entry_id == message_id)
                or (
                    up_to
                    and entry_id <= message_id
                    and entry.delivered
                    and (
                        self._messages[entry_id].kind is not Kind.ROOM
                        or entry_id in rooms_seen
                    )
                )
            )
        ]
        for entry_id in fresh:
            mailbox[entry_id].acknowledged = True
            mailbox[entry_id].delivered = True
        size = sum(text_size(self._messages[i].text) for i in fresh)
        self._waiting.remove(identity, len(fresh), size)
        return defer.succeed(len(fresh))

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
        self._known.add(identity)
        return defer.succeed(None)

    def knows(self, identity: str) -> bool:
        return identity in self._known

    def identities(self) -> frozenset[str]:
        return frozenset(self._known)

    def waiting(self, identity: str) -> tuple[int, int]:
        return self._waiting.of(identity)

    def purge(self, now: datetime, retention: Retention) -> defer.Deferred[int]:
        doomed = {
            m.id for m in self._messages.values() if m.created < now - retention.max_age
        }
        for kind, limit in (
            (Kind.ROOM, retention.room_max),
            (Kind.DIRECT, retention.mailbox_max),
        ):
            by_target: dict[str, list[int]] = {}
            for m in sorted(self._messages.values(), key=lambda m: -m.id):
                if m.kind is kind:
                    by_target.setdefault(m.target, []).append(m.id)
            for ids in by_target.values():
                doomed.update(i for i in ids[limit:] if not self._unacknowledged(i))
        for message_id in doomed:
            size = text_size(self._messages.pop(message_id).text)
            for identity, mailbox in self._mailboxes.items():
                entry = mailbox.pop(message_id, None)
                if entry is not None and not entry.acknowledged:
                    self._waiting.remove(identity, 1, size)
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

    def _unacknowledged(self, message_id: int) -> bool:
        return any(
            not mailbox[message_id].acknowledged
            for mailbox in self._mailboxes.values()
            if message_id in mailbox
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
