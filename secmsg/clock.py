"""
Time from an injected clock, so that everything that reads the time reads
the reactor (or a test's Clock), never the wall.
"""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.internet.interfaces import IReactorTime


def clock_time(clock: IReactorTime) -> datetime:
    """
    The clock's time as an aware datetime in UTC.
    """
    return datetime.fromtimestamp(clock.seconds(), UTC)
