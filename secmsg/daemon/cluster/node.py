"""
One daemon of a cluster: what it tells the others over the bus, and what
it does with what they tell it.

It tells them each segment of messages it commits, each identity whose
rooms or waiting messages it changed, who is online here (on every beat),
the JOINED and PARTED of its sessions, its kicks, and that it is leaving.
From them it pushes their messages to its own sessions, in the one order
of the cluster's ids (L{secmsg.daemon.cluster.sequence}); reads again from
the database what they changed; and keeps who is online on each of them
(L{secmsg.daemon.cluster.presence}).  Each time the bus is reached, the
first time too, it reads from the database whatever it may have missed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from secmsg import wire
from secmsg.daemon.cluster import events
from secmsg.daemon.cluster.envelope import Envelope
from secmsg.daemon.cluster.presence import BEAT, CHECK, Elsewhere
from secmsg.daemon.cluster.sequence import Sequencer
from secmsg.daemon.hub import InProcessHub
from secmsg.daemon.interfaces import IBus, IPeer
from secmsg.daemon.store.postgresql import PostgresStore
from secmsg.daemon.store.shared_database import Segment
from secmsg.messages import Kind, Stored

log = Logger()


class ClusterNode:
    """
    This daemon's side of the bus.

    @param name: this daemon's name in the cluster.
    @param call_from_thread: the reactor's, for what the store's thread
        tells.
    """

    def __init__(
        self,
        name: str,
        bus: IBus,
        store: PostgresStore,
        local: InProcessHub,
        elsewhere: Elsewhere,
        clock: IReactorTime,
        call_from_thread: Callable[..., None],
    ) -> None:
        self.name = name
        self.elsewhere = elsewhere
        self._bus = bus
        self._store = store
        self._local = local
        self._clock = clock
        self._call_from_thread = call_from_thread
        # Both made again at start, from the open store's head and key.
        self.sequencer = Sequencer(0, self._push, store.between, clock)
        self._envelope = Envelope(b"", "", clock.seconds)
        self._loops = [LoopingCall(self._beat), LoopingCall(self._check)]
        self._twins_told = False
        self._left = False

    def start(self) -> None:
        """
        Join the cluster, once the store is open: share it, subscribe from
        its head, beat.
        """
        store = self._store
        self.sequencer = Sequencer(store.head, self._push, store.between, self._clock)
        self._envelope = Envelope(
            store.bus_key, secrets.token_hex(8), self._clock.seconds
        )
        store.share_with(self)
        self._bus.start(self._received, self._reached)
        for loop, interval in zip(self._loops, (BEAT, CHECK), strict=True):
            loop.clock = self._clock
            loop.start(interval)

    def stop(self) -> None:
        """
        Leave the cluster, once: tell the others this daemon's sessions
        are gone.
        """
        if self._left:
            return
        self._left = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self.tell(events.Leaving(self.name))

    def tell(self, event: events.Event) -> None:
        """
        Publish C{event} on the bus.
        """
        self._bus.publish(self._envelope.seal(event))

    def committed(self, segment: Segment) -> None:
        self._call_from_thread(self._committed_here, segment)

    def _committed_here(self, segment: Segment) -> None:
        self.tell(events.Committed(self.name, segment))
        self.sequencer.offer(segment, own=True)

    def changed(self, identity: str) -> None:
        self.tell(events.Changed(self.name, identity))

    def _push(self, message: Stored, skip: IPeer | None) -> None:
        """
        Push a message of the cluster to this daemon's sessions it is for
        (a room's or a broadcast's also to its sender's, but C{skip}), and
        note whom it reached.
        """
        audience = self._store.audience(message.kind, message.sender, message.target)
        if message.kind is Kind.DIRECT:
            reached = self._local.deliver(message, audience)
        else:
            everyone = audience | {message.sender}
            reached = self._local.deliver(message, everyone, skip) & audience
        if reached:
            self._store.sent([(identity, message) for identity in reached])

    def _reached(self) -> None:
        """
        The bus is reached, the first time or again: read what may have
        been missed before, the messages and what the others changed.
        """
        self.sequencer.catch_up()
        self._store.renew_all().addErrback(self._failed, "read the store again")

    def _received(self, text: str) -> None:
        try:
            opened = self._envelope.open(text)
        except events.BadEvent as refused:
            log.warn("cluster: refused a bus message: {why}", why=str(refused))
            return
        except Exception as error:  # noqa: BLE001 -- no bus message may end the subscription
            log.warn("cluster: refused a bus message: {error!r}", error=error)
            return
        if opened.instance == self._envelope.instance:
            return
        if opened.event.node == self.name:
            self._tell_twins()
        self._handle(opened.event)

    def _tell_twins(self) -> None:
        """
        Another daemon goes by this one's name: the others cannot tell the
        two apart in WHO, and the operator must name each.
        """
        if not self._twins_told:
            self._twins_told = True
            log.error(
                "cluster: another daemon is named {node} too; give each its "
                "own name with --node",
                node=self.name,
            )

    def _handle(self, event: events.Event) -> None:
        if isinstance(event, events.Committed):
            self._committed_elsewhere(event.segment)
        elif isinstance(event, events.Changed):
            self._store.renew(event.identity).addErrback(
                self._failed, f"read {event.identity} again"
            )
        elif isinstance(event, events.Present):
            came, went = self.elsewhere.beat(event.node, event.sessions)
            self._tell_presence(came, went)
            self.sequencer.heard_of(event.head)
        elif isinstance(event, events.Announced):
            self._announced(event)
        elif isinstance(event, events.Kicked):
            kicked = self._local.kick(event.identity, event.by, event.reason)
            if kicked:
                log.info(
                    "cluster: kicked {count} sessions of {identity} here, as "
                    "{by} asked on {node}",
                    count=kicked,
                    identity=event.identity,
                    by=event.by,
                    node=event.node,
                )
        else:
            self._tell_presence(set(), self.elsewhere.gone(event.node))

    def _committed_elsewhere(self, segment: Segment) -> None:
        for message in segment.messages:
            audience = self._store.audience(
                message.kind, message.sender, message.target
            )
            self._store.count_elsewhere(message, audience)
        self.sequencer.offer(segment, own=False)

    def _announced(self, event: events.Announced) -> None:
        line = wire.push(event.word, *filter(None, (event.room, event.identity)))
        if event.room is None:
            self._local.tell_watchers(line, event.identity)
        else:
            members = self._store.members(event.room)
            self._local.tell_room(event.room, members, line, event.identity)

    def _tell_presence(self, came: set[str], went: set[str]) -> None:
        """
        Tell this daemon's watchers of identities that came online, or
        went offline, on the other daemons and are not online here.
        """
        here = self._local.is_online
        for identity in sorted(came):
            if not here(identity):
                self._local.tell_watchers(wire.push("ONLINE", identity), identity)
        for identity in sorted(went):
            if not here(identity):
                self._local.tell_watchers(wire.push("OFFLINE", identity), identity)

    def _beat(self) -> None:
        counts = self._local.counts()
        self.tell(events.Present(self.name, counts, self.sequencer.head))

    def _check(self) -> None:
        alive = len(self.elsewhere.nodes())
        self._tell_presence(set(), self.elsewhere.expire())
        if len(self.elsewhere.nodes()) < alive:
            self._another_died()

    def _another_died(self) -> None:
        """
        A daemon stopped beating.  It may have committed, and confirmed,
        messages whose segment it died before publishing, and no segment
        of its will follow to show them missing: read what was committed
        after the head, as when the bus comes back.
        """
        self.sequencer.catch_up()
        self._store.renew_all().addErrback(self._failed, "read the store again")

    def _failed(self, failure: Failure, doing: str) -> None:
        log.error(
            "cluster: could not {doing}: {error}",
            doing=doing,
            error=failure.getErrorMessage(),
        )
