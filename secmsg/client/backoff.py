"""
How long C{secmsg listen} waits before connecting again: exponentially
longer after each failure, up to a cap, with jitter, so that many bots cut
off by one daemon restart neither hammer it nor come back all at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable

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
