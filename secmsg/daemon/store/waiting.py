"""
What waits unacknowledged for each identity, counted in memory, by kind.

A direct message is judged against the bound on what may wait in its
recipient's inbox (L{secmsg.messages.WaitingLimit}) before the store is
asked to keep it; asking the database for it would cost a query on the hot
path.  What waits of every kind also says whether a login has anything to
be sent, without a query.  So each store keeps these totals on the
reactor's thread, changes them as it hands out jobs and as their results
come back, and reads them again from its data whenever it opens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from secmsg.messages import Kind

_NOTHING = (0, 0)

Taken = tuple[Kind, int, int]
"""Of one kind, how many messages and how many bytes."""


class WaitingTotals:
    """
    For each identity and kind of message, how many wait for it
    unacknowledged and how many bytes (UTF-8) their texts hold.
    """

    def __init__(
        self, totals: Mapping[tuple[str, Kind], tuple[int, int]] | None = None
    ) -> None:
        """
        @param totals: what already waits, as the store's data says.
        """
        self._totals = dict(totals or {})

    def of(self, identity: str, kind: Kind | None = None) -> tuple[int, int]:
        """
        The messages and bytes that wait for C{identity}: of C{kind}, or
        of every kind.
        """
        totals = self._totals
        if kind is not None:
            return totals.get((identity, kind), _NOTHING)
        count = size = 0
        for each in Kind:
            held, held_bytes = totals.get((identity, each), _NOTHING)
            count, size = count + held, size + held_bytes
        return count, size

    def add(self, identities: Iterable[str], kind: Kind, size: int) -> None:
        """
        Count one message of C{kind} and C{size} bytes for each of
        C{identities}.
        """
        totals = self._totals
        for identity in identities:
            count, held = totals.get((identity, kind), _NOTHING)
            totals[identity, kind] = (count + 1, held + size)

    def remove(self, identity: str, taken: Iterable[Taken]) -> None:
        """
        Stop counting, for C{identity}, what C{taken} says of each kind:
        acknowledged, parted, removed, or never stored.
        """
        for kind, count, size in taken:
            if not count:
                continue
            left, held = self._totals.get((identity, kind), _NOTHING)
            left, held = left - count, held - size
            if left > 0:
                self._totals[identity, kind] = (left, max(held, 0))
            else:
                # An identity with nothing waiting costs no memory.
                self._totals.pop((identity, kind), None)

    def renew(self, identity: str, totals: Mapping[Kind, tuple[int, int]]) -> None:
        """
        Take what the store's data now says waits for C{identity}, which
        another daemon of a cluster changed.
        """
        for kind in Kind:
            self._totals.pop((identity, kind), None)
        for kind, held in totals.items():
            if held[0]:
                self._totals[identity, kind] = held
