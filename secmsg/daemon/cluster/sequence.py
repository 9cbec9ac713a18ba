"""
The cluster's messages in id order, whichever daemon committed each.

Every transaction that appends holds the append lock and moves the head
(L{secmsg.daemon.store.shared_database}), so the segments the daemons
commit follow each other without a gap: each begins where the one before
it ended.  They reach a daemon in any order, though, over the bus, from
the daemon that committed each; and the bus may lose some.  L{Sequencer}
puts them back in order, so that each daemon pushes every message in id
order and never one before an older one still on its way: a client that
says C{ACK UPTO} an id must have been sent everything below it.  A
segment that does not arrive within L{GAP_WAIT} is read from the
database, as is everything after the last one had when the bus comes
back.

A daemon's own segments go through the same order, but each of their
messages waits until the daemon's delivery has handed it over, with the
session it must skip (a room message does not come back to the session
that said it): the segment is known, on the store's thread, a moment
before its messages are answered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from secmsg.daemon.interfaces import IPeer
from secmsg.daemon.store.shared_database import Segment
from secmsg.messages import Stored

log = Logger()

GAP_WAIT = 0.5
"""Seconds a segment waits for the one before it, over the bus, before it
is read from the database."""

PAGE = 500
"""Messages read from the database at a time, to fill a gap."""

Push = Callable[[Stored, IPeer | None], None]
"""Pushes a message to this daemon's sessions, but the one given."""

Fetch = Callable[[int, int, int], "defer.Deferred[tuple[list[Stored], int]]"]
"""Reads up to a number of messages with ids above one and up to another,
and the database's head."""

_UNKNOWN = object()
"""A message of our own not handed over yet."""


END = 1 << 62
"""Above every id: what a read of everything after the head goes up to."""


class Sequencer:
    """
    Puts the segments of the cluster in order and pushes their messages.

    @param head: the last id before the first segment to come: the
        store's head when it opened.
    """

    def __init__(
        self, head: int, push: Push, fetch: Fetch, clock: IReactorTime
    ) -> None:
        self._head = head
        self._push = push
        self._fetch = fetch
        self._clock = clock
        # Segments ahead of the head, by where each begins.
        self._waiting: dict[int, tuple[Segment, bool]] = {}
        # Our own messages, and the session each skips once handed over.
        self._handed: dict[int, IPeer | object | None] = {}
        # The messages of our own segment at the head, not all handed over.
        self._stalled: list[Stored] = []
        self._gap: IDelayedCall | None = None
        self._reading = False
        self._behind = False
        # The furthest head another daemon has said it has had.
        self._heard = head
        # Where the segments waiting when the last read began begin.
        self._waiting_before_read: set[int] = set()

    @property
    def head(self) -> int:
        """
        The last id pushed, or known to be no one's here.
        """
        return self._head

    def offer(self, segment: Segment, own: bool) -> None:
        """
        A segment committed, by this daemon (C{own}) or another.
        """
        if segment.last <= self._head:
            return
        self._waiting.setdefault(segment.previous, (segment, own))
        if own:
            for message in segment.messages:
                self._handed.setdefault(message.id, _UNKNOWN)
        self._advance()

    def hand_over(self, message: Stored, skip: IPeer | None) -> None:
        """
        Delivery has one of this daemon's own messages: push it, skipping
        C{skip}, once what comes before it has been pushed.
        """
        if message.id in self._handed:
            self._handed[message.id] = skip
            self._advance()

    def heard_of(self, position: int) -> None:
        """
        Another daemon has had every message up to C{position}: what of it
        has not come over the bus within L{GAP_WAIT} is read from the
        database.  This mends a segment lost on its way to the bus, which
        no later segment shows missing while none follows it.
        """
        if position > self._heard:
            self._heard = position
            self._advance()

    def catch_up(self) -> None:
        """
        The bus is back: read whatever was committed after the last
        segment had, since it may have been lost.
        """
        self._behind = True
        self._advance()

    def _advance(self) -> None:
        """
        Push what can be pushed in order: our stalled segment's messages,
        then each segment that begins where the head is; then read from
        the database what the bus has not brought.
        """
        while not self._stalled or self._push_stalled():
            entry = self._waiting.pop(self._head, None)
            if entry is None:
                break
            segment, own = entry
            self._head = segment.last
            if own:
                self._stalled = list(segment.messages)
                self._clock.callLater(GAP_WAIT, self._unstall, segment.last)
            else:
                for message in segment.messages:
                    self._push(message, None)
        if self._stalled or self._reading:
            return
        self._forget_passed()
        if self._behind:
            self._behind = False
            self._read(min(self._waiting, default=END))
        else:
            self._watch_for_gaps()

    def _push_stalled(self) -> bool:
        """
        Push the messages of our own stalled segment that have been handed
        over, in order; return whether all have.
        """
        while self._stalled:
            skip = self._handed.get(self._stalled[0].id)
            if skip is _UNKNOWN:
                return False
            message = self._stalled.pop(0)
            self._handed.pop(message.id, None)
            self._push(message, skip if IPeer.providedBy(skip) else None)
        return True

    def _unstall(self, last: int) -> None:
        """
        Push our own segment up to C{last} whether or not delivery has
        handed its messages over: no fault of delivery's may stop every
        push of this daemon.
        """
        for message in self._stalled:
            if message.id <= last and self._handed.get(message.id) is _UNKNOWN:
                self._handed[message.id] = None
        self._advance()

    def _forget_passed(self) -> None:
        """
        Drop what the head has passed: segments read from the database
        meanwhile, and our own messages that were read with them.
        """
        head = self._head
        for previous in [p for p, (s, _) in self._waiting.items() if s.last <= head]:
            del self._waiting[previous]
        for message_id in [i for i in self._handed if i <= head]:
            del self._handed[message_id]

    def _gap_end(self) -> int | None:
        """
        Where the gap after the head ends, if there is one: where the
        first waiting segment begins, or the furthest head heard of.
        """
        if self._waiting:
            return min(self._waiting)
        return self._heard if self._heard > self._head else None

    def _watch_for_gaps(self) -> None:
        """
        Read from the database, after a moment, the gap after the head, if
        the bus has not filled it by then.
        """
        if self._gap_end() is None:
            if self._gap is not None and self._gap.active():
                self._gap.cancel()
            self._gap = None
        elif self._gap is None or not self._gap.active():
            self._gap = self._clock.callLater(GAP_WAIT, self._fill_gap)

    def _fill_gap(self) -> None:
        self._gap = None
        end = self._gap_end()
        if end is not None and not self._stalled and not self._reading:
            self._read(end)

    def _read(self, up_to: int) -> None:
        """
        Read and push what was committed above the head and up to
        C{up_to}: a gap that ends where a waiting segment begins, or
        everything (L{END}).
        """
        self._reading = True
        self._waiting_before_read = set(self._waiting)
        self._fetch(self._head, up_to, PAGE).addCallbacks(
            self._read_page, self._read_failed, (up_to,)
        )

    def _read_page(self, read: tuple[Sequence[Stored], int], up_to: int) -> None:
        self._reading = False
        messages, database_head = read
        for message in messages:
            if message.id > self._head:
                self._head = message.id
                skip = self._handed.pop(message.id, None)
                self._push(message, skip if IPeer.providedBy(skip) else None)
        if len(messages) == PAGE:
            self._read(up_to)
            return
        if up_to != END:
            # Everything up to where the segment begins was committed
            # before it, and has been read whole; but no segment begins
            # beyond the database's head.
            self._head = max(self._head, min(up_to, database_head))
        self._forget_impossible(database_head)
        self._advance()

    def _forget_impossible(self, database_head: int) -> None:
        """
        Drop what no daemon of the cluster can have said: a segment that
        begins, or a head heard of, beyond the database's head (every
        segment is told after its commit).  Only a segment that was waiting
        before the read began: one told since may have committed since.
        """
        self._heard = min(self._heard, max(database_head, self._head))
        beyond = [p for p in self._waiting_before_read if p > database_head]
        for previous in [p for p in beyond if p in self._waiting]:
            log.warn(
                "cluster: dropped a segment beyond the database's head "
                "({previous} > {head})",
                previous=previous,
                head=database_head,
            )
            del self._waiting[previous]

    def _read_failed(self, failure: Failure) -> None:
        self._reading = False
        self._behind = True
        log.error(
            "cluster: could not read missed messages from the database: {error}",
            error=failure.getErrorMessage(),
        )
        self._gap = self._clock.callLater(GAP_WAIT, self._advance)
