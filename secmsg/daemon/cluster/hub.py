"""
The hub of a daemon of a cluster: this daemon's sessions, in the
in-process hub, and the others' through the bus
(L{secmsg.daemon.cluster.node}).

Who is online is everyone with a session here or on a daemon alive; a
message is pushed here in the cluster's one order, once delivery has
handed it over; JOINED, PARTED and KICK reach the sessions of every
daemon.
"""

from __future__ import annotations

from collections.abc import Set

from zope.interface import implementer

from secmsg.daemon.cluster import events
from secmsg.daemon.cluster.node import ClusterNode
from secmsg.daemon.hub import InProcessHub
from secmsg.daemon.interfaces import IHub, IPeer, ISessionAvatar
from secmsg.messages import Stored


@implementer(IHub)
class ClusterHub:
    """
    Routing over the daemons of a cluster.

    @param local: this daemon's sessions, told of the others' presence by
        C{node}'s.
    """

    def __init__(self, local: InProcessHub, node: ClusterNode) -> None:
        self._local = local
        self._node = node

    def attach(self, avatar: ISessionAvatar, peer: IPeer) -> None:
        self._local.attach(avatar, peer)

    def greeted(self, peer: IPeer) -> None:
        self._local.greeted(peer)

    def detach(self, peer: IPeer) -> None:
        self._local.detach(peer)

    def shutting_down(self) -> None:
        self._local.shutting_down()
        self._node.stop()

    def regranted(self, peer: IPeer) -> None:
        self._local.regranted(peer)

    def sessions(self) -> list[tuple[ISessionAvatar, IPeer]]:
        return self._local.sessions()

    def online(self) -> list[str]:
        return sorted({*self._local.online(), *self._node.elsewhere.identities()})

    def is_online(self, identity: str) -> bool:
        return self._local.is_online(identity) or self._node.elsewhere.is_online(
            identity
        )

    def sessions_elsewhere(self, identity: str) -> int:
        return self._node.elsewhere.sessions(identity)

    def held_elsewhere(self) -> list[tuple[str, str, int]]:
        return self._node.elsewhere.held()

    def deliver(
        self, message: Stored, recipients: Set[str], exclude: IPeer | None = None
    ) -> set[str]:
        # Pushed once what comes before it in the cluster has been; the
        # push notes whom it reached.
        self._node.sequencer.hand_over(message, exclude)
        return set()

    def joined(self, room: str, identity: str, members: Set[str]) -> None:
        self._local.joined(room, identity, members)
        self._node.tell(events.Announced(self._node.name, "JOINED", identity, room))

    def parted(self, room: str, identity: str, members: Set[str]) -> None:
        self._local.parted(room, identity, members)
        self._node.tell(events.Announced(self._node.name, "PARTED", identity, room))

    def kick(self, identity: str, by: str, reason: str) -> int:
        here = self._local.kick(identity, by, reason)
        self._node.tell(events.Kicked(self._node.name, identity, by, reason))
        return here + self._node.elsewhere.sessions(identity)
