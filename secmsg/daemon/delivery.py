"""
What happens to a message between its sender and its recipients: stored
first, pushed after, and kept until acknowledged.

A message is committed to the store, once, in its stream, before anyone is
told of it: only then does the sender get its 250 and the online
recipients their push.  It waits for each identity it is for until that
identity acknowledges it, so that an identity that was offline, or whose
session ended before it said ACK, gets it at its next login, ahead of
anything newer.  What may wait unacknowledged in one identity's inbox is
bounded: a direct message that would pass the bound is refused to its
sender before anything is stored.  Room messages and broadcasts are kept
once for all their readers, so no reader that never reads can make them
cost more: retention bounds them, and they are never refused for a
reader's sake.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Set

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from secmsg import wire
from secmsg.clock import clock_time
from secmsg.daemon.interfaces import IHub, IMessageStore, IPeer, ISessionAvatar
from secmsg.daemon.metrics import Metrics
from secmsg.errors import MailboxFull
from secmsg.messages import Draft, Kind, Stored, WaitingLimit, text_size

log = Logger()

PAGE_SIZE = 100
"""Waiting messages read and sent at a time: a mailbox of any size costs a
page of memory, and the next page waits until the peer has read this one."""


class Delivery:
    """
    Sends accepted messages through the store and the hub, and catches a
    session up at login.

    @param listed: the identities the policy names, which are known even
        before they first log in.
    @param waiting_limit: how much may wait unacknowledged for one
        identity before a message to it is refused.
    """

    def __init__(
        self,
        hub: IHub,
        store: IMessageStore,
        clock: IReactorTime,
        listed: Callable[[], Collection[str]],
        metrics: Metrics,
        waiting_limit: WaitingLimit,
    ) -> None:
        self._hub = hub
        self._store = store
        self._clock = clock
        self._listed = listed
        self._metrics = metrics
        self._waiting_limit = waiting_limit

    def is_known(self, identity: str) -> bool:
        """
        Whether messages to C{identity} are kept while it is offline: it is
        named by the policy, has logged in before, or is online now.
        """
        return (
            identity in self._listed()
            or self._store.knows(identity)
            or self._hub.is_online(identity)
        )

    def waiting(self) -> int:
        """
        How many deliveries wait in mailboxes unacknowledged, for the
        metrics: summed at each scrape over every identity a message can
        be kept for, from the store's memory.
        """
        everyone = {*self._listed(), *self._store.identities(), *self._hub.online()}
        waiting = self._store.waiting
        return sum(waiting(identity)[0] for identity in everyone)

    def send(
        self,
        kind: Kind,
        sender: IPeer | None,
        identity: str,
        target: str,
        text: str,
    ) -> defer.Deferred[Stored]:
        """
        Store a message in its stream, then push it.

        @param sender: the sending session, which a room message skips;
            L{None} for a message sent through the admin interface.
        @return: fires with the stored message once it is committed, or
            fails with L{MailboxFull}, nothing stored, if it would take
            what waits for one of its recipients past the bound.
        """
        self._know_listed(kind, target)
        recipients = self._store.audience(kind, identity, target)
        if kind is Kind.DIRECT:
            full = self._past_the_bound(target, text_size(text))
            if full is not None:
                return defer.fail(full)
        draft = Draft(kind, identity, target, text, clock_time(self._clock))
        started = self._clock.seconds()
        accepted = self._store.accept(draft, recipients)
        accepted.addCallback(self._stored, started, sender, recipients)
        return accepted

    def _know_listed(self, kind: Kind, target: str) -> None:
        """
        Make the identities the policy names, that a message is for, known
        to the store before it is stored: they read their inbox and the
        broadcasts before their first login.
        """
        if kind is Kind.ROOM:
            return
        listed = self._listed()
        named = (target,) if kind is Kind.DIRECT else listed
        when = clock_time(self._clock)
        for identity in named:
            if identity in listed and not self._store.knows(identity):
                self._store.remember(identity, when).addErrback(
                    self._log_failure, "remember", identity
                )

    def _past_the_bound(self, recipient: str, size: int) -> MailboxFull | None:
        """
        The refusal of a direct message of C{size} bytes that would take
        what waits in C{recipient}'s inbox past the bound, or L{None}: one
        lookup in the store's memory.
        """
        limit = self._waiting_limit
        count, held = self._store.waiting(recipient, Kind.DIRECT)
        if count >= limit.messages:
            return MailboxFull(recipient, "messages", count, limit.messages, size)
        if held + size > limit.text_bytes:
            return MailboxFull(recipient, "bytes", held, limit.text_bytes, size)
        return None

    def _stored(
        self,
        message: Stored,
        started: float,
        sender: IPeer | None,
        recipients: Set[str],
    ) -> Stored:
        """
        A message is committed: time it, and push it.  One callback, not
        two: each costs its Deferred a step, thousands of times a second.
        """
        self._metrics.store_latency(self._clock.seconds() - started)
        # A room message shows on its sender's other sessions, a broadcast
        # on all of them, though neither waits for the sender in a stream.
        if message.kind is Kind.DIRECT:
            reached = self._hub.deliver(message, recipients)
        else:
            exclude = sender if message.kind is Kind.ROOM else None
            audience = recipients | {message.sender}
            reached = self._hub.deliver(message, audience, exclude) & recipients
        self._metrics.message(len(reached), len(recipients) - len(reached))
        if reached:
            self._store.sent([(identity, message) for identity in reached])
        return message

    def catch_up(self, peer: IPeer, avatar: ISessionAvatar) -> defer.Deferred[None]:
        """
        Send a session that has just logged in what waits for its identity,
        oldest first and before anything pushed meanwhile (the session holds
        those back until released), a page at a time as the peer takes them;
        note that the identity is known from now on.  Nothing waiting costs
        no query: the store counts what waits in memory.

        The rooms are the identity's, but room rights are the session's
        (they follow its certificate and the policy in force): a message
        of a room this session may not read stays waiting, unsent.
        """
        identity = avatar.identity
        self._store.remember(identity, clock_time(self._clock)).addErrback(
            self._log_failure, "remember", identity
        )
        if not self._store.waiting(identity)[0]:
            peer.release()
            return defer.succeed(None)
        sending = defer.Deferred.fromCoroutine(self._send_pages(peer, avatar))
        sending.addCallbacks(
            lambda _: peer.release(),
            self._mailbox_failed,
            errbackArgs=(peer, identity),
        )
        return sending

    async def _send_pages(self, peer: IPeer, avatar: ISessionAvatar) -> None:
        identity = avatar.identity
        rooms = frozenset(
            room for room in self._store.rooms_of(identity) if avatar.may_read(room)
        )
        after = sent = 0
        while True:
            page = await self._store.pending(identity, after, PAGE_SIZE, rooms)
            if not page:
                break
            lines = [
                (p.message.id, wire.message_push(p.message, p.redelivery)) for p in page
            ]
            taken = await peer.send_waiting(lines)
            if taken:
                self._store.sent([(identity, p.message) for p in page])
                sent += len(page)
            if not taken or len(page) < PAGE_SIZE:
                break
            after = page[-1].message.id
        if sent:
            log.info(
                "delivered {count} waiting message(s) to {identity}",
                count=sent,
                identity=identity,
            )

    def _mailbox_failed(self, failure: Failure, peer: IPeer, identity: str) -> None:
        """
        Without what waited, newer messages would overtake older ones:
        close the session, which can come back once the store works again.
        """
        self._log_failure(failure, "read the mailbox of", identity)
        peer.close("message store failed; try again later")

    def _log_failure(self, failure: Failure, doing: str, whom: str) -> None:
        log.error(
            "message store: could not {doing} {whom}: {error}",
            doing=doing,
            whom=whom,
            error=failure.getErrorMessage(),
        )
