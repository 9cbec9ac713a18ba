"""
What both message stores answer from memory, without a job or a wait: who
reads which stream (L{secmsg.daemon.store.members}) and how much waits for
each identity (L{secmsg.daemon.store.waiting}).  Each store keeps the two
tables as it hands out its jobs; this is the one reading of them.
"""

from __future__ import annotations

from secmsg.daemon.store.members import Memberships
from secmsg.daemon.store.waiting import WaitingTotals
from secmsg.messages import Kind


class AnsweredFromMemory:
    """
    The L{secmsg.daemon.interfaces.IMessageStore} methods that read the
    store's tables in memory, for a store that keeps them as
    C{_members} and C{_waiting}.
    """

    _members: Memberships
    _waiting: WaitingTotals

    def audience(self, kind: Kind, sender: str, target: str) -> frozenset[str]:
        return self._members.audience(kind, sender, target)

    def rooms_of(self, identity: str) -> frozenset[str]:
        return self._members.rooms_of(identity)

    def members(self, room: str) -> frozenset[str]:
        return self._members.members(room)

    def rooms(self) -> dict[str, int]:
        return self._members.rooms()

    def knows(self, identity: str) -> bool:
        return self._members.knows(identity)

    def identities(self) -> frozenset[str]:
        return self._members.identities()

    def waiting(self, identity: str, kind: Kind | None = None) -> tuple[int, int]:
        return self._waiting.of(identity, kind)
