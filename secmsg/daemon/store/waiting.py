"""
What waits unacknowledged in each identity's mailbox, counted in memory.

A send is judged against the bound on what may wait for each of its
recipients (L{secmsg.messages.WaitingLimit}) before the store is asked to
keep it; asking the database for every recipient of every message would
cost a query on the hot path.  So each store keeps these totals on the
reactor's thread, changes them as it hands out jobs and as their results
come back, and reads them again from its data whenever it opens.
"""

from __future__ import annotations

from collections.abc import Iterable

_NOTHING = (0, 0)


class WaitingTotals:
    """
    For each identity, how many messages wait for it unacknowledged and
    how many bytes (UTF-8) their texts hold.
    """

    def __init__(self, totals: dict[str, tuple[int, int]] | None = None) -> None:
        """
        @param totals: what already waits, as the store's data says.
        """
        self._totals = dict(totals or {})

    def of(self, identity: str) -> tuple[int, int]:
        """
        The messages and bytes that wait for C{identity}.
        """
        return self._totals.get(identity, _NOTHING)

    def add(self, identities: Iterable[str], size: int) -> None:
        """
        Count one message of C{size} bytes for each of C{identities}.
        """
        totals = self._totals
        for identity in identities:
            count, held = totals.get(identity, _NOTHING)
            totals[identity] = (count + 1, held + size)

    def remove(self, identity: str, count: int, size: int) -> None:
        """
        Stop counting C{count} messages of C{size} bytes in all for
        C{identity}: acknowledged, removed, or never stored.
        """
        if not count:
            return
        left, held = self._totals.get(identity, _NOTHING)
        left, held = left - count, held - size
        if left > 0:
            self._totals[identity] = (left, max(held, 0))
        else:
            # An identity with nothing waiting costs no memory.
            self._totals.pop(identity, None)
