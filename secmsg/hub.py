"""
The in-process hub: sessions, rooms and delivery inside one daemon.

Room membership belongs to a session, as in IRC: a person with two sessions
can be in a room with one and not the other.  Each delivered line is
formatted once and the same bytes pushed to every recipient.
"""

from __future__ import annotations

import itertools

from zope.interface import implementer

from secmsg import wire
from secmsg.errors import NotFound, NotPermitted
from secmsg.interfaces import IHub, IPeer, ISessionAvatar


@implementer(IHub)
class InProcessHub:
    """
    Routing for one daemon, held in memory.

    Message ids count up from 1 for the life of the process.
    """

    def __init__(self) -> None:
        self._avatars: dict[IPeer, ISessionAvatar] = {}
        self._by_identity: dict[str, list[IPeer]] = {}
        self._rooms: dict[str, dict[IPeer, str]] = {}
        self._ids = itertools.count(1)

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
        for room in [room for room, members in self._rooms.items() if peer in members]:
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

    def send_direct(self, sender: str, recipient: str, text: str) -> str:
        peers = self._by_identity.get(recipient)
        if not peers:
            raise NotFound(f"{recipient} is not online")
        message_id = self._next_id()
        line = wire.push("MSG", message_id, sender, text)
        for peer in list(peers):
            peer.push(line)
        return message_id

    def say(self, peer: IPeer, sender: str, room: str, text: str) -> str:
        members = self._rooms.get(room, {})
        if peer not in members:
            raise NotPermitted("SAY", sender, f"not a member of {room}")
        message_id = self._next_id()
        line = wire.push("SAY", message_id, room, sender, text)
        for member in list(members):
            if member is not peer:
                member.push(line)
        return message_id

    def broadcast(self, sender: str, text: str) -> str:
        message_id = self._next_id()
        line = wire.push("BROADCAST", message_id, sender, text)
        for peer in list(self._avatars):
            peer.push(line)
        return message_id

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

    def _next_id(self) -> str:
        return str(next(self._ids))
