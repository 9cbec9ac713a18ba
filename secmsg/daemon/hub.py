"""
The in-process hub: sessions, rooms and delivery inside one daemon.

Room membership belongs to a session, as in IRC: a person with two sessions
can be in a room with one and not the other.  The hub delivers messages the
store has already accepted; each is formatted once and the same bytes
pushed to every session that gets it.
"""

from __future__ import annotations

from zope.interface import implementer

from secmsg import wire
from secmsg.daemon.interfaces import IHub, IPeer, ISessionAvatar
from secmsg.errors import NotFound
from secmsg.messages import Kind, Stored


@implementer(IHub)
class InProcessHub:
    """
    Routing for one daemon, held in memory.
    """

    def __init__(self) -> None:
        self._avatars: dict[IPeer, ISessionAvatar] = {}
        self._by_identity: dict[str, list[IPeer]] = {}
        self._rooms: dict[str, dict[IPeer, str]] = {}

    def attach(self, avatar: ISessionAvatar, peer: IPeer) -> None:
        self._avatars[peer] = avatar
        self._by_identity.setdefault(avatar.identity, []).append(peer)

    def detach(self, peer: IPeer) -> None:
        avatar = self._avatars.pop(peer, None)
        if avatar is None:
            return
        peers = self._by_identity[avatar.identity]
        peers.remove(peer)
        if not peers:
            del self._by_identity[avatar.identity]
        for room in self.rooms_of(peer):
            self._leave(peer, room)

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
        members = self._rooms.setdefault(room, {})
        if peer in members:
            return False
        members[peer] = self._avatars[peer].identity
        return True

    def part(self, peer: IPeer, room: str) -> None:
        if peer not in self._rooms.get(room, {}):
            raise NotFound(f"you are not in {room}")
        self._leave(peer, room)

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
            peer
            for peer in self._rooms.get(room, {})
            if self._avatars[peer].may_read(room)
        ]

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
        # Names first: a push may drop a peer that stopped reading, and with
        # it the peer's entry here.
        recipients = [(p, self._avatars[p].identity) for p in peers if p is not exclude]
        for peer, _ in recipients:
            peer.push(line, message.id)
        return {identity for _, identity in recipients}

    def kick(self, identity: str, by: str, reason: str) -> int:
        peers = list(self._by_identity.get(identity, ()))
        for peer in peers:
            peer.kick(by, reason)
        return len(peers)

    def _leave(self, peer: IPeer, room: str) -> None:
        members = self._rooms[room]
        del members[peer]
        if not members:
            del self._rooms[room]
