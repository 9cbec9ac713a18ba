"""
Messages that one job of the store appends together.

On PostgreSQL each statement is a round trip to the server, which the
store's thread waits out; a message appended by a statement of its own
costs one, and a batch of them as many, one after another.  So the
PostgreSQL store appends every message accepted until its job runs in one
statement: the reactor adds drafts to the open L{Appends}, and the store's
thread takes them all at once when it comes to the job; a draft that comes
after that goes to the next.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from twisted.internet import defer
from twisted.python.failure import Failure

from secmsg.messages import Draft, Stored

MOST = 512
"""Drafts one statement appends at most, as a batch of jobs is bounded."""


class Appends:
    """
    The drafts of one job, and the Deferred of each.

    @ivar first: the Deferred of the first draft, which opens it.
    """

    def __init__(self, first: Draft) -> None:
        self._lock = threading.Lock()
        self._drafts = [first]
        self.first: defer.Deferred[Stored] = defer.Deferred()
        self._waiting = [self.first]
        self._taken = False

    def add(self, draft: Draft) -> defer.Deferred[Stored] | None:
        """
        Add C{draft}, on the reactor's thread; L{None} if the store's
        thread has taken the drafts already, or there are enough.
        """
        with self._lock:
            if self._taken or len(self._drafts) >= MOST:
                return None
            self._drafts.append(draft)
            done: defer.Deferred[Stored] = defer.Deferred()
            self._waiting.append(done)
            return done

    def take(self) -> list[Draft]:
        """
        Take every draft added, on the store's thread: no more come.
        """
        with self._lock:
            self._taken = True
            return list(self._drafts)

    def settle(self, stored: Sequence[Stored] | Failure) -> None:
        """
        Fire each draft's Deferred with its stored message, or each with
        the failure of the job that held them all, which may have failed
        before it took them: no draft comes after this.
        """
        with self._lock:
            self._taken = True
            waiting = list(self._waiting)
        for index, done in enumerate(waiting):
            if isinstance(stored, Failure):
                done.errback(stored)
            else:
                done.callback(stored[index])
