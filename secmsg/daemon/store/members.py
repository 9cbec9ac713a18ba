"""
Who reads which stream, held in memory beside the store's data: the
identities known (each reads its inbox and the broadcasts) and the members
of each room (each reads the room's timeline).

A room's membership belongs to the identity, not to a session: it is a
cursor in the store, made by C{JOIN} and dropped by C{PART}, and lasts
across sessions and restarts.  The store changes these tables as it hands
out the jobs that make a change durable, not once they commit: jobs run in
the order they are handed out, so a message accepted after a JOIN is in
the new member's stream on disk, and must be counted for it here too.
"""

from __future__ import annotations

from collections.abc import Iterable

from secmsg.messages import Kind


class Memberships:
    """
    The known identities and the rooms' members.
    """

    def __init__(
        self,
        known: Iterable[str] = (),
        rooms: Iterable[tuple[str, str, bool]] = (),
    ) -> None:
        """
        @param known: the identities the store's data knows.
        @param rooms: each C{(identity, room, reads)} membership, as the
            store's data has them.
        """
        self._known = set(known)
        self._members: dict[str, set[str]] = {}
        self._rooms_of: dict[str, set[str]] = {}
        # The members of each room that nothing said there is kept for.
        self._deaf: dict[str, set[str]] = {}
        for identity, room, reads in rooms:
            self.join(identity, room, reads)

    def knows(self, identity: str) -> bool:
        """
        Whether C{identity} reads its inbox and the broadcasts.
        """
        return identity in self._known

    def identities(self) -> frozenset[str]:
        """
        Every identity known.
        """
        return frozenset(self._known)

    def add_identity(self, identity: str) -> bool:
        """
        Know C{identity} from now on; return whether it was not before.
        """
        if identity in self._known:
            return False
        self._known.add(identity)
        return True

    def forget_identity(self, identity: str) -> None:
        """
        Undo L{add_identity}: the write that would have made it last failed.
        """
        self._known.discard(identity)

    def join(self, identity: str, room: str, reads: bool) -> bool:
        """
        Make C{identity} a member of C{room}, that what is said there is
        kept for if it C{reads}; return whether it was not a member.
        """
        members = self._members.setdefault(room, set())
        if identity in members:
            return False
        members.add(identity)
        self._rooms_of.setdefault(identity, set()).add(room)
        if not reads:
            self._deaf.setdefault(room, set()).add(identity)
        return True

    def reads(self, identity: str, room: str) -> bool:
        """
        Whether what is said in C{room} is kept for C{identity}, a member.
        """
        return identity not in self._deaf.get(room, ())

    def start_reading(self, identity: str, room: str) -> bool:
        """
        Keep what is said in C{room} for C{identity} from now; return
        whether nothing was before.
        """
        deaf = self._deaf.get(room, set())
        if identity not in deaf:
            return False
        deaf.discard(identity)
        if not deaf:
            del self._deaf[room]
        return True

    def part(self, identity: str, room: str) -> bool:
        """
        Take C{identity} out of C{room}; return whether it was in.
        """
        members = self._members.get(room)
        if members is None or identity not in members:
            return False
        members.discard(identity)
        self.start_reading(identity, room)
        if not members:
            del self._members[room]
        rooms = self._rooms_of[identity]
        rooms.discard(room)
        if not rooms:
            del self._rooms_of[identity]
        return True

    def renew(
        self, identity: str, known: bool, rooms: Iterable[tuple[str, bool]]
    ) -> None:
        """
        Take what the store's data now says of C{identity}, which another
        daemon of a cluster changed: whether it is known, and each C{(room,
        reads)} membership of its.
        """
        for room in self.rooms_of(identity):
            self.part(identity, room)
        if known:
            self.add_identity(identity)
        else:
            self.forget_identity(identity)
        for room, reads in rooms:
            self.join(identity, room, reads)

    def rooms_of(self, identity: str) -> frozenset[str]:
        """
        The rooms C{identity} is a member of.
        """
        return frozenset(self._rooms_of.get(identity, ()))

    def members(self, room: str) -> frozenset[str]:
        """
        The identities that are members of C{room}.
        """
        return frozenset(self._members.get(room, ()))

    def rooms(self) -> dict[str, int]:
        """
        Each room with members, sorted, and how many it has.
        """
        return {room: len(self._members[room]) for room in sorted(self._members)}

    def audience(self, kind: Kind, sender: str, target: str) -> frozenset[str]:
        """
        The identities a message is for: the recipient of a direct message
        (the sender too, if it writes to itself), or the room's members that
        it is kept for or every identity known, but the sender.
        """
        if kind is Kind.DIRECT:
            return frozenset((target,))
        if kind is Kind.BROADCAST:
            return frozenset(self._known).difference((sender,))
        members = self._members.get(target, ())
        return frozenset(members).difference((sender,), self._deaf.get(target, ()))
