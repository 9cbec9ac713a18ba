"""
Whether, and how long after, C{secmsg listen} and C{secmsg connect} on a
terminal connect again when a session ends: not after an ending that
coming back would not mend; otherwise after a wait exponentially longer
after each failure, up to a cap, with jitter, so that many clients cut off
by one daemon restart neither hammer it nor come back all at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from secmsg.client.protocol import ExitStatus, SessionEnded

FIRST_WAIT = 1.0
"""Seconds before the first attempt again."""

LONGEST_WAIT = 60.0
"""The cap: however long the daemon is away, a bot tries once a minute."""

STEADY = 60.0
"""Seconds a session must have lasted for its end to start the waits again
from the shortest: a daemon that greets and at once closes (its store
failing, say) is waited for longer each time, as one that cannot be
reached is."""


class Backoff:
    """
    The waits between attempts: C{first}, then twice as long each time up
    to C{longest}, each taken at random between half and all of that.

    @param fraction: a number in [0, 1) at each call; L{random.random} by
        default, a fixed one in tests.
    """

    def __init__(
        self,
        first: float = FIRST_WAIT,
        longest: float = LONGEST_WAIT,
        fraction: Callable[[], float] = random.random,
    ) -> None:
        self._first = first
        self._longest = longest
        self._fraction = fraction
        self._failures = 0

    def next_wait(self) -> float:
        """
        Seconds to wait after one more failure.
        """
        ceiling = min(self._longest, self._first * 2.0 ** min(self._failures, 64))
        self._failures += 1
        return ceiling * (0.5 + self._fraction() / 2)

    def reset(self) -> None:
        """
        Start again from the shortest wait: the last attempt succeeded.
        """
        self._failures = 0


def ends_for_good(ending: SessionEnded, kicked: bool) -> bool:
    """
    Whether an ending is one that connecting again would not mend: the
    server refused our certificate or identity (at login, or a reload's
    new policy or CRL), or an operator kicked us.  Coming back would be
    against their word; anything else (a shutdown, a lost connection, a
    limit) may pass.
    """
    return kicked or ending.status is ExitStatus.CERTIFICATE_REFUSED


def connecting_again(ending: SessionEnded, wait: float) -> str:
    """
    The words that say why a session ended and when the next attempt is.
    """
    # Twisted's words for a refused connection end in a full stop.
    return f"{ending.words.rstrip('.')}; connecting again in {wait:.1f} s"


class Reconnection:
    """
    The waits of one client's attempts to connect again: a L{Backoff} that
    starts again from the shortest after a session that lasted L{STEADY}.
    """

    def __init__(self, clock: IReactorTime, backoff: Backoff | None = None) -> None:
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._logged_in: float | None = None

    def logged_in(self) -> None:
        """
        Note that a session has begun, to know later whether it lasted.
        """
        self._logged_in = self._clock.seconds()

    def next_wait(self) -> float:
        """
        Seconds to wait before the next attempt, now that a session or an
        attempt has ended.
        """
        began, self._logged_in = self._logged_in, None
        if began is not None and self._clock.seconds() - began >= STEADY:
            self._backoff.reset()
        return self._backoff.next_wait()
