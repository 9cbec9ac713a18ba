"""
The in-process hub: sessions, rooms and delivery inside one daemon.

Room membership belongs to a session, as in IRC: a person with two sessions
can be in a room with one and not the other.  The hub delivers messages the
store has already accepted; each is formatted once and the same bytes
pushed to every session that gets it.

Presence is told as it happens, and kept nowhere: a room's readers hear
C{JOINED} when an identity's first session enters it and C{PARTED} when
its last one leaves (by PART, a reload, or the session ending), and the
sessions that hold PRESENCE hear C{ONLINE} at an identity's first greeted
session and C{OFFLINE} when its last one ends.  Each line is formatted
once per event; finding who hears it costs a look at the room's members
(or the PRESENCE holders) and at the identity's own few sessions, never at
every pair of members.

Rooms are bounded (L{RoomLimits}): the rooms an identity is in, counted
across its sessions since presence and C{ROOMS} count identities, not
sessions, and the rooms the daemon holds.  A JOIN past either is refused
with C{403} in words and changes nothing.

The hub is never entered again from inside one of its own announcements or
deliveries: a session that falls too far behind is cut on the reactor's
next turn (L{secmsg.daemon.outbox}), not while it is being told something,
and a session that ends is taken out of every room and table before anyone
is told that it left.
"""

from __future__ import annotations

from collections import Counter

from zope.interface import implementer

from secmsg import wire
from secmsg.daemon.interfaces import IHub, IPeer, ISessionAvatar
from secmsg.daemon.limits import RoomLimits, count_down
from secmsg.daemon.policy import PRESENCE
from secmsg.errors import NotFound, NotPermitted
from secmsg.messages import Kind, Stored


@implementer(IHub)
class InProcessHub:
    """
    Routing for one daemon, held in memory.
    """

    def __init__(self, room_limits: RoomLimits | None = None) -> None:
        self._room_limits = room_limits or RoomLimits()
        self._avatars: dict[IPeer, ISessionAvatar] = {}
        self._by_identity: dict[str, list[IPeer]] = {}
        self._rooms: dict[str, dict[IPeer, str]] = {}
        # How many rooms each identity is in, by any of its sessions.
        self._rooms_per_identity: Counter[str] = Counter()
        # Sessions greeted, and those of them that hold PRESENCE, with
        # their identities: an attached session may yet be refused at
        # login, and must not be announced until it is not.
        self._greeted: set[IPeer] = set()
        self._watchers: dict[IPeer, str] = {}
        self._quiet = False

    def attach(self, avatar: ISessionAvatar, peer: IPeer) -> None:
        self._avatars[peer] = avatar
        self._by_identity.setdefault(avatar.identity, []).append(peer)

    def greeted(self, peer: IPeer) -> None:
        avatar = self._avatars.get(peer)
        if avatar is None:
            return
        identity = avatar.identity
        first = not any(p in self._greeted for p in self._by_identity[identity])
        self._greeted.add(peer)
        if first:
            self._tell_watchers(wire.push("ONLINE", identity), identity)
        self._watch(peer, avatar)

    def detach(self, peer: IPeer) -> None:
        avatar = self._avatars.pop(peer, None)
        if avatar is None:
            return
        identity = avatar.identity
        peers = self._by_identity[identity]
        peers.remove(peer)
        if not peers:
            del self._by_identity[identity]
        self._watchers.pop(peer, None)
        was_greeted = peer in self._greeted
        self._greeted.discard(peer)
        # Out of every room and table before anyone is told: whatever the
        # announcements lead to finds the hub already without this session.
        left = [room for room in self.rooms_of(peer) if self._remove(peer, room)]
        offline = was_greeted and not any(p in self._greeted for p in peers)
        for room in left:
            self._tell_room(room, wire.push("PARTED", room, identity), identity)
        if offline:
            self._tell_watchers(wire.push("OFFLINE", identity), identity)

    def shutting_down(self) -> None:
        self._quiet = True

    def regranted(self, peer: IPeer) -> None:
        if peer in self._greeted:
            self._watch(peer, self._avatars[peer])

    def _watch(self, peer: IPeer, avatar: ISessionAvatar) -> None:
        """
        Count a greeted session among those told who comes and goes, or
        not, as its grant says.
        """
        if PRESENCE in avatar.commands:
            self._watchers[peer] = avatar.identity
        else:
            self._watchers.pop(peer, None)

    def sessions(self) -> list[tuple[ISessionAvatar, IPeer]]:
        return [(avatar, peer) for peer, avatar in self._avatars.items()]

    def online(self, room: str | None = None) -> list[str]:
        if room is None:
            return sorted(self._by_identity)
        if room not in self._rooms:
            raise NotFound(f"no room {room}")
        return sorted(set(self._rooms[room].values()))

    def rooms(self) -> dict[str, int]:
        return {
            room: len(set(members.values()))
            for room, members in sorted(self._rooms.items())
        }

    def join(self, peer: IPeer, room: str) -> bool:
        members = self._rooms.get(room, {})
        if peer in members:
            return False
        identity = self._avatars[peer].identity
        first = not self._has_session_in(identity, members)
        if first:
            self._check_room_limits(identity, room)
            self._rooms_per_identity[identity] += 1
        self._rooms.setdefault(room, members)[peer] = identity
        if first:
            self._tell_room(room, wire.push("JOINED", room, identity), identity)
        return True

    def _check_room_limits(self, identity: str, room: str) -> None:
        """
        Refuse C{identity} one more room, or the daemon one more, past the
        operator's bounds, saying which and what to do.

        @raise NotPermitted: naming the bound.
        """
        limits = self._room_limits
        joined = self._rooms_per_identity[identity]
        if joined >= limits.max_per_identity:
            raise NotPermitted(
                "JOIN",
                identity,
                f"already in {joined} rooms, the most one identity may be in "
                f"(max-rooms-per-identity); PART one to join another",
            )
        if room not in self._rooms and len(self._rooms) >= limits.max_rooms:
            raise NotPermitted(
                "JOIN",
                identity,
                f"the server holds {len(self._rooms)} rooms, the most it may "
                f"(max-rooms); join one that has members, or try again later",
            )

    def part(self, peer: IPeer, room: str) -> None:
        if peer not in self._rooms.get(room, {}):
            raise NotFound(f"you are not in {room}")
        identity = self._avatars[peer].identity
        if self._remove(peer, room):
            self._tell_room(room, wire.push("PARTED", room, identity), identity)

    def rooms_of(self, peer: IPeer) -> list[str]:
        return sorted(room for room, members in self._rooms.items() if peer in members)

    def in_room(self, peer: IPeer, room: str) -> bool:
        return peer in self._rooms.get(room, {})

    def room_identities(self, room: str) -> set[str]:
        return {self._avatars[peer].identity for peer in self._readers(room)}

    def _readers(self, room: str) -> list[IPeer]:
        """
        The members of C{room} whose avatars may be sent its messages.
        """
        return [
            peer for peer in self._rooms.get(room, {}) if self._may_read(peer, room)
        ]

    def _may_read(self, peer: IPeer, room: str) -> bool:
        """
        Whether C{peer} is attached still and its avatar may read C{room}.
        """
        avatar = self._avatars.get(peer)
        return avatar is not None and avatar.may_read(room)

    def is_online(self, identity: str) -> bool:
        return identity in self._by_identity

    def deliver(self, message: Stored, exclude: IPeer | None = None) -> set[str]:
        if message.kind is Kind.DIRECT:
            peers = list(self._by_identity.get(message.target, ()))
        elif message.kind is Kind.ROOM:
            peers = self._readers(message.target)
        else:
            peers = list(self._avatars)
        line = wire.message_push(message)
        # Names first: what a push leads to (a kick, a close) must not change
        # who this message is for.
        recipients = [(p, self._avatars[p].identity) for p in peers if p is not exclude]
        for peer, _ in recipients:
            peer.push(line, message.id)
        return {identity for _, identity in recipients}

    def kick(self, identity: str, by: str, reason: str) -> int:
        peers = list(self._by_identity.get(identity, ()))
        for peer in peers:
            peer.kick(by, reason)
        return len(peers)

    def _remove(self, peer: IPeer, room: str) -> bool:
        """
        Take C{peer} out of C{room}, telling no one.

        @return: whether its identity has left the room and others remain
            to be told.
        """
        members = self._rooms[room]
        identity = members.pop(peer)
        left = not self._has_session_in(identity, members)
        if left:
            count_down(self._rooms_per_identity, identity)
        if not members:
            del self._rooms[room]
            return False
        return left

    def _has_session_in(self, identity: str, members: dict[IPeer, str]) -> bool:
        """
        Whether another session of C{identity} is among C{members}: a look
        at the identity's few sessions, not at the room's many members.
        """
        return any(peer in members for peer in self._by_identity.get(identity, ()))

    def _tell_room(self, room: str, line: bytes, identity: str) -> None:
        """
        Announce C{line}, about C{identity}, to the members of C{room} that
        may read it, but C{identity}'s own.
        """
        if self._quiet:
            return
        members = self._rooms.get(room, {})
        # Listed first: what an announcement leads to must not change who
        # hears it.
        hearers = [
            peer
            for peer, who in members.items()
            if who != identity and self._may_read(peer, room)
        ]
        for peer in hearers:
            peer.announce(line)

    def _tell_watchers(self, line: bytes, identity: str) -> None:
        """
        Announce C{line}, about C{identity}, to the sessions that hold
        PRESENCE, but C{identity}'s own.
        """
        if self._quiet:
            return
        hearers = [peer for peer, who in self._watchers.items() if who != identity]
        for peer in hearers:
            peer.announce(line)
