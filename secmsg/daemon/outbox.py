"""
What a logged-in session is sent that it did not ask for: the messages
pushed to it, held back while what waited for it at login is being sent,
and the bound on what the daemon holds for a peer that has stopped reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel

from secmsg.daemon.audit import record_session_closed
from secmsg.daemon.pipeline import Throttle

if TYPE_CHECKING:
    from secmsg.daemon.protocol import SessionProtocol

BACKLOG_LIMIT = 1 << 20
"""Bytes of messages pushed to a peer that has stopped reading before it is
dropped: a reader that never reads must not make the daemon hold its mail."""

NOT_STORED = 0
"""The id a held line that delivers no stored message (a presence line) is
kept under: no message has it, so L{Outbox.release} never takes the line
for one L{Outbox.send_waiting} already sent."""


class Outbox:
    """
    The pushes of one session.  Until L{release}, messages pushed are held
    back, so that nothing newer overtakes what waited for the session;
    what L{send_waiting} sent meanwhile is not sent again.  While the peer
    does not read, what is written to it counts against L{BACKLOG_LIMIT}.

    Past it the session is dropped on the reactor's next turn, not at once:
    a push comes from the hub telling many sessions something, and a drop
    at once would have the hub take this session out of its rooms in the
    middle of that.  Nothing more is sent to it, nor read from it, meanwhile.

    @ivar held: the messages held back, C{(id, line)}, or L{None} once
        released.
    @ivar throttle: the session's L{Throttle}, whose C{paused} says whether
        the peer reads.
    """

    __slots__ = (
        "_backlog",
        "_clock",
        "_drain_waiters",
        "_dropping",
        "_held_bytes",
        "_sent_while_held",
        "_session",
        "held",
        "throttle",
    )

    def __init__(
        self, session: SessionProtocol, throttle: Throttle, clock: IReactorTime
    ) -> None:
        self._session = session
        self.throttle = throttle
        self._clock = clock
        self._dropping: IDelayedCall | None = None
        self.held: list[tuple[int, bytes]] | None = []
        self._held_bytes = 0
        # Made when first needed, and forgotten at release: thousands of
        # idle sessions would each hold an empty one.
        self._sent_while_held: set[int] | None = None
        self._drain_waiters: list[defer.Deferred[bool]] | None = None
        self._backlog = 0

    def push(self, line: bytes, message_id: int) -> None:
        """
        Send, or hold back, the line that delivers message C{message_id}.
        """
        if self._session.closing:
            return
        held = self.held
        if held is not None:
            held.append((message_id, line))
            self._held_bytes += len(line)
            if self._held_bytes > BACKLOG_LIMIT:
                self._drop_overloaded(
                    "new messages came while its waiting ones were being sent"
                )
            return
        self._push_now(line, message_id)

    def announce(self, line: bytes) -> None:
        """
        Send, or hold back in its place among the messages, a presence line.
        """
        self.push(line, NOT_STORED)

    def send_waiting(self, lines: Sequence[tuple[int, bytes]]) -> defer.Deferred[bool]:
        """
        Send messages that waited for the session; fire once the peer reads
        again (C{True}) or the session has ended (C{False}).
        """
        session = self._session
        if session.closing:
            return defer.succeed(False)
        if self._sent_while_held is None:
            self._sent_while_held = set()
        for message_id, line in lines:
            self._sent_while_held.add(message_id)
            session.transport.write(line)
        if not self.throttle.paused:
            return defer.succeed(True)
        drained: defer.Deferred[bool] = defer.Deferred()
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append(drained)
        return drained

    def release(self) -> None:
        """
        Send what was held back and not already sent; push at once from
        now on.
        """
        held, self.held = self.held or [], None
        sent, self._sent_while_held = self._sent_while_held or (), None
        for message_id, line in held:
            if message_id not in sent:
                self._push_now(line, message_id)

    def drained(self) -> None:
        """
        The peer reads again: count its backlog from nothing, and wake
        those waiting to send more.
        """
        self._backlog = 0
        self._wake(True)

    def ended(self) -> None:
        """
        The connection is gone: tell those waiting to send more not to, and
        drop nothing later.
        """
        if self._dropping is not None and self._dropping.active():
            self._dropping.cancel()
        self._wake(False)

    def _wake(self, open_: bool) -> None:
        waiters, self._drain_waiters = self._drain_waiters, None
        for waiter in waiters or ():
            waiter.callback(open_)

    def _push_now(self, line: bytes, message_id: int) -> None:
        if self._session.closing:
            return
        if self.throttle.paused and self.over_backlog(len(line), "messages"):
            return
        self._session.transport.write(line)

    def over_backlog(self, size: int, what: str) -> bool:
        """
        Count bytes written to a peer that has stopped reading; past
        L{BACKLOG_LIMIT}, drop it and say so.
        """
        self._backlog += size
        if self._backlog <= BACKLOG_LIMIT:
            return False
        self._drop_overloaded(f"it stopped reading, and {what} were waiting for it")
        return True

    def _drop_overloaded(self, why: str) -> None:
        """
        Drop a session that would make the daemon hold more than
        L{BACKLOG_LIMIT} bytes for it, and say why: closing now, so that
        nothing more is sent to it, and cut on the next turn.
        """
        record_session_closed(
            self._session.avatar.identity,
            self._session.address,
            f"more than {BACKLOG_LIMIT} bytes held for it: {why}",
            LogLevel.warn,
            dropped=True,
        )
        self._session.closing = True
        self._dropping = self._clock.callLater(0, self._session.drop)
