"""
A TCP port that several daemons of one host listen on at once
(C{SO_REUSEPORT}), so that each core runs a daemon and the kernel spreads
the new connections over them.

Twisted's TCP endpoints have no such option, so the socket is made here,
bound and listening, and handed to the reactor to adopt
(L{IReactorSocket.adoptStreamPort}); wrapped as an endpoint, it leaves the
rest of the daemon speaking of endpoints alone.
"""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorSocket,
    IStreamServerEndpoint,
)
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    A TCP server endpoint whose socket other processes may bind beside it:
    C{SO_REUSEPORT} to share the port, and C{SO_REUSEADDR} as Twisted's own
    TCP ports have, so that a restart does not wait out TIME_WAIT.

    On Linux only sockets of the same user share a port, so a daemon of
    another user cannot take a share of the connections.
    """

    def __init__(
        self, reactor: IReactorSocket, port: int, interface: str, backlog: int
    ) -> None:
        """
        @param interface: an IPv4 or IPv6 address (any with a colon is
            IPv6, as for Twisted's own endpoints), or C{""} for every IPv4
            address.
        """
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        """
        Bind and listen at once, as Twisted's TCP endpoints do, so that a
        port that cannot be had is known before this returns; its failure
        is Twisted's L{CannotListenError}, which the daemon words as it
        does for any port.
        """
        return defer.execute(self._adopt, factory)

    def _adopt(self, factory: IProtocolFactory) -> IListeningPort:
        """
        The listening port the reactor makes of our socket.  The reactor
        keeps a duplicate of its descriptor, so ours is closed at once.
        """
        family = socket.AF_INET6 if ":" in self._interface else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as listening:
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                listening.bind((self._interface, self._port))
                listening.listen(self._backlog)
                listening.setblocking(False)
                # Annotated as taking a ServerFactory, the reactor's ports
                # take any protocol factory, as Twisted's own adopting
                # endpoint hands them.
                return self._reactor.adoptStreamPort(
                    listening.fileno(),
                    family,
                    factory,  # type: ignore[arg-type]
                )
        except OSError as error:
            raise CannotListenError(self._interface, self._port, error) from None
