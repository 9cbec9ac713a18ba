"""
The bus the daemons of a cluster tell each other on: Redis pub/sub, one
channel, through txredisapi's protocol on Twisted's endpoints; and the same
in memory, for tests.

The bus is taken as unreliable, as Redis's pub/sub is: a message published
while a daemon is not subscribed never reaches it.  So the bus says when it
is reached again after it was lost, and the daemon then reads from the
database what it may have missed (L{secmsg.daemon.cluster.node}).  What is
published while the bus is out of reach is dropped, not queued: the
database holds it already.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from secmsg.daemon.interfaces import IBus
from secmsg.daemon.sending import PromptTransport
from secmsg.errors import ConfigurationError

log = Logger()

REACH_TIMEOUT = 5.0
"""Seconds the bus may take to answer at startup before it counts as out
of reach."""

STOP_TIMEOUT = 2.0
"""Seconds the bus waits at shutdown for what was last published to go."""

Receive = Callable[[str], None]
Reached = Callable[[], None]


def bus_address(url: str) -> tuple[str, int, int]:
    """
    The host, port and number of a C{redis://HOST:PORT/N} bus; the number
    names the cluster's channel, so that clusters can share a Redis.
    """
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379, int(parts.path[1:] or 0)


def check_reachable(url: str) -> None:
    """
    Ask the bus, once, at startup, whether it answers: before anything is
    served, a bus that cannot be reached stops the daemon in one line.

    @raise ConfigurationError: it does not answer C{PING} with C{PONG}.
    """
    host, port, _ = bus_address(url)
    try:
        with socket.create_connection((host, port), REACH_TIMEOUT) as connection:
            connection.sendall(b"PING\r\n")
            answer = connection.recv(64)
    except OSError as error:
        raise ConfigurationError(
            f"bus {url}", f"cannot be reached: {error.strerror or error}"
        ) from None
    if not answer.startswith(b"+PONG"):
        raise ConfigurationError(f"bus {url}", "answered, but not as Redis does")


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """
    Subscribes to the cluster's channel once connected, and hands on each
    message that comes on it.
    """

    def __init__(self, channel: str, receive: Receive, reached: Reached) -> None:
        super().__init__()
        self._channel = channel
        self._receive = receive
        self._reached = reached

    def connectionMade(self) -> defer.Deferred[Any]:
        ready: defer.Deferred[Any] = super().connectionMade()
        ready.addCallback(lambda _: self.subscribe(self._channel))
        ready.addCallback(lambda _: self._reached())
        return ready

    def messageReceived(self, pattern: object, channel: str, message: str) -> None:
        self._receive(message)


class _Publisher(txredisapi.RedisProtocol):  # type: ignore[misc]
    """
    Redis's protocol with each command sent at once, not when the reactor
    next polls: a segment published on a commit is in the socket before
    the 250s of its messages are sent, so that a daemon killed after a
    250 has told the others of its message.
    """

    def makeConnection(self, transport: ITransport) -> None:
        super().makeConnection(PromptTransport(transport))


@implementer(IBus)
class RedisBus:
    """
    The cluster's channel on a Redis server: one connection subscribed to
    it, one to publish on, each made again with backoff when lost.
    """

    def __init__(self, reactor: Any, url: str) -> None:
        host, port, number = bus_address(url)
        self._reactor = reactor
        self._endpoint = HostnameEndpoint(reactor, host, port, REACH_TIMEOUT)
        self._channel = f"secmsg/{number}"
        self._url = url
        self._publisher: Any = None
        self._services: list[ClientService] = []
        self._lost = False
        self._stopping = False
        self._last_sent: defer.Deferred[Any] = defer.succeed(None)

    def start(self, receive: Receive, reached: Reached) -> None:
        subscriber = Factory.forProtocol(
            lambda: _Subscriber(self._channel, receive, self._subscribed(reached))
        )
        publisher = Factory.forProtocol(_Publisher)
        subscriber.noisy = publisher.noisy = False
        policy = backoffPolicy(initialDelay=0.1, maxDelay=2.0)
        for factory, prepare in ((subscriber, None), (publisher, self._publishing)):
            service = ClientService(
                self._endpoint,
                factory,
                retryPolicy=policy,
                clock=self._reactor,
                prepareConnection=prepare,
            )
            service.startService()
            self._services.append(service)

    def _subscribed(self, reached: Reached) -> Reached:
        """
        C{reached}, told each time the subscription is made; the operator
        hears of each time after the first.
        """

        def subscribed() -> None:
            if self._lost:
                log.info("cluster: the bus {url} is back", url=self._url)
            self._lost = True
            reached()

        return subscribed

    def _publishing(self, protocol: Any) -> None:
        """
        Publish on C{protocol}, each new connection's, until it is lost.
        """
        self._publisher = protocol
        protocol.whenDisconnected().addCallback(self._publisher_lost, protocol)

    def _publisher_lost(self, _: object, protocol: Any) -> None:
        if self._publisher is not protocol:
            return
        self._publisher = None
        if not self._stopping:
            log.warn(
                "cluster: lost the bus {url}; what it misses comes from the database",
                url=self._url,
            )

    def publish(self, text: str) -> None:
        publisher = self._publisher
        if publisher is None:
            return
        try:
            sent = publisher.publish(self._channel, text)
        except txredisapi.ConnectionError:
            # Lost a moment ago, and not yet told: dropped, as while lost.
            return
        self._last_sent = sent.addErrback(self._not_published)

    def _not_published(self, failure: Failure) -> None:
        log.warn(
            "cluster: a bus message was not sent: {error}",
            error=failure.getErrorMessage(),
        )

    def stop(self) -> defer.Deferred[None]:
        """
        Once what was last published has gone (a daemon's leaving, say),
        disconnect, quietly.
        """
        self._stopping = True
        sent, self._last_sent = self._last_sent, defer.succeed(None)
        # A Redis that hangs must not hold the daemon's shutdown.
        sent.addTimeout(STOP_TIMEOUT, self._reactor)
        return sent.addBoth(lambda _: self._disconnect())

    def _disconnect(self) -> defer.Deferred[None]:
        stopped = [service.stopService() for service in self._services]
        return defer.gatherResults(stopped).addCallback(lambda _: None)


@implementer(IBus)
class MemoryBus:
    """
    A bus in memory that the daemons of one test share: each message is
    told to every daemon subscribed, itself too, on the clock's next turn,
    as Redis does.
    """

    def __init__(self, clock: IReactorTime, subscribers: list[Receive]) -> None:
        """
        @param subscribers: the list every daemon's memory bus shares.
        """
        self._clock = clock
        self._subscribers = subscribers
        self._receive: Receive | None = None
        self._reached: Reached | None = None

    def start(self, receive: Receive, reached: Reached) -> None:
        self._receive = receive
        self._reached = reached
        self._subscribers.append(receive)
        reached()

    def come_back(self) -> None:
        """
        Be reached again, as a Redis that was lost comes back: what was
        published meanwhile never came.
        """
        if self._reached is not None:
            self._reached()

    def publish(self, text: str) -> None:
        for receive in list(self._subscribers):
            self._clock.callLater(0, receive, text)

    def stop(self) -> defer.Deferred[None]:
        if self._receive in self._subscribers:
            self._subscribers.remove(self._receive)
        return defer.succeed(None)
