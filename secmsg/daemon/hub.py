"""
The in-process hub: the sessions of one daemon, and pushing to them.

The hub knows sessions; who reads what is the store's (a room's members
are identities, whose membership lasts until PART).  It delivers messages
the store has already accepted, to the sessions of the identities they are
for; each is formatted once and the same bytes pushed to every session
that gets it.

Presence is told as it happens, and kept nowhere: a room's readers hear
C{JOINED} and C{PARTED} when an identity joins or parts it, and the
sessions that hold PRESENCE hear C{ONLINE} at an identity's first greeted
session and C{OFFLINE} when its last one ends.  Each line is formatted
once per event; finding who hears it costs a look at the room's members
(or the PRESENCE holders), never at every pair of members.

The hub is never entered again from inside one of its own announcements or
deliveries: a session that falls too far behind is cut on the reactor's
next turn (L{secmsg.daemon.outbox}), not while it is being told something,
and a session that ends is taken out of every table before anyone is told
that it left.
"""

from __future__ import annotations

from collections.abc import Callable, Set

from zope.interface import implementer

from secmsg import wire
from secmsg.daemon.interfaces import IHub, IPeer, ISessionAvatar
from secmsg.daemon.policy import PRESENCE
from secmsg.messages import Kind, Stored


@implementer(IHub)
class InProcessHub:
    """
    Routing for one daemon, held in memory.

    @param elsewhere: for one of the daemons of a cluster, whether an
        identity has a session on another daemon, so that its coming and
        going here is not told as its coming online or going offline.
    """

    def __init__(self, elsewhere: Callable[[str], bool] | None = None) -> None:
        self._elsewhere = elsewhere
        self._avatars: dict[IPeer, ISessionAvatar] = {}
        self._by_identity: dict[str, list[IPeer]] = {}
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
        if first and not self._is_elsewhere(identity):
            self.tell_watchers(wire.push("ONLINE", identity), identity)
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
        # Out of every table before anyone is told: whatever the
        # announcement leads to finds the hub already without this session.
        last = was_greeted and not any(p in self._greeted for p in peers)
        if last and not self._is_elsewhere(identity):
            self.tell_watchers(wire.push("OFFLINE", identity), identity)

    def _is_elsewhere(self, identity: str) -> bool:
        return self._elsewhere is not None and self._elsewhere(identity)

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

    def online(self) -> list[str]:
        return sorted(self._by_identity)

    def is_online(self, identity: str) -> bool:
        return identity in self._by_identity

    def sessions_elsewhere(self, identity: str) -> int:
        # This hub knows only its own sessions: a cluster's hub, around
        # it, counts the other daemons'.
        return 0

    def held_elsewhere(self) -> list[tuple[str, str, int]]:
        return []

    def deliver(
        self, message: Stored, recipients: Set[str], exclude: IPeer | None = None
    ) -> set[str]:
        line = wire.message_push(message)
        room = message.target if message.kind is Kind.ROOM else None
        # Names first: what a push leads to (a kick, a close) must not change
        # who this message is for.
        reached = [
            (peer, identity)
            for peer, identity in self._sessions_of(recipients)
            if peer is not exclude and (room is None or self._may_read(peer, room))
        ]
        for peer, _ in reached:
            peer.push(line, message.id)
        return {identity for _, identity in reached}

    def _sessions_of(self, identities: Set[str]) -> list[tuple[IPeer, str]]:
        """
        The sessions of C{identities}, found by whichever of them and the
        identities online is the smaller: a room of thousands with a few
        members online costs a look at those few.
        """
        by_identity = self._by_identity
        if len(identities) > len(by_identity):
            online = [i for i in by_identity if i in identities]
        else:
            online = [i for i in identities if i in by_identity]
        return [
            (peer, identity) for identity in online for peer in by_identity[identity]
        ]

    def joined(self, room: str, identity: str, members: Set[str]) -> None:
        self.tell_room(room, members, wire.push("JOINED", room, identity), identity)

    def parted(self, room: str, identity: str, members: Set[str]) -> None:
        self.tell_room(room, members, wire.push("PARTED", room, identity), identity)

    def counts(self) -> dict[str, int]:
        """
        How many sessions each identity online has here: what a daemon of
        a cluster tells the others on each beat.
        """
        return {identity: len(peers) for identity, peers in self._by_identity.items()}

    def kick(self, identity: str, by: str, reason: str) -> int:
        peers = list(self._by_identity.get(identity, ()))
        for peer in peers:
            peer.kick(by, reason)
        return len(peers)

    def _may_read(self, peer: IPeer, room: str) -> bool:
        """
        Whether C{peer} is attached still and its avatar may read C{room}.
        """
        avatar = self._avatars.get(peer)
        return avatar is not None and avatar.may_read(room)

    def tell_room(
        self, room: str, members: Set[str], line: bytes, identity: str
    ) -> None:
        """
        Announce C{line}, about C{identity}, to the sessions of C{room}'s
        C{members} that may read it, but C{identity}'s own.
        """
        if self._quiet:
            return
        # Listed first: what an announcement leads to must not change who
        # hears it.
        hearers = [
            peer
            for peer, who in self._sessions_of(members)
            if who != identity and self._may_read(peer, room)
        ]
        for peer in hearers:
            peer.announce(line)

    def tell_watchers(self, line: bytes, identity: str) -> None:
        """
        Announce C{line}, about C{identity}, to the sessions that hold
        PRESENCE, but C{identity}'s own.
        """
        if self._quiet:
            return
        hearers = [peer for peer, who in self._watchers.items() if who != identity]
        for peer in hearers:
            peer.announce(line)
