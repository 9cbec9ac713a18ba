"""
The daemon's TLS sockets send at once: TCP_NODELAY on every TCP
connection its line and admin ports accept, so that a small reply or push
never waits behind an unacknowledged one for the peer's delayed ACK.
That the writes of a turn still leave as one TLS record is pinned by
L{tests.test_reply_writes}.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import ssl, tcp, unix
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon.sending import PromptTLSFactory
from tests.harness import Instance, temporary_directory


def accept(
    case: SynchronousTestCase, port: tcp.Port | unix.Port
) -> tuple[Any, socket.socket]:
    """
    The daemon side (its Twisted transport) of a real connection that
    C{port}, on a memory reactor, accepts, and the client's socket.
    """
    port.startListening()
    case.addCleanup(port.socket.close)
    host = port.getHost()
    if isinstance(port, unix.Port):
        client, address = socket.socket(socket.AF_UNIX), host.name
    else:
        client, address = socket.socket(), (host.host, host.port)
    case.addCleanup(client.close)
    client.connect(address)
    port.doRead()
    [server] = [r for r in port.reactor.readers if r is not port]
    case.addCleanup(server.socket.close)
    return server, client


class NoDelayTests(SynchronousTestCase):
    def accepted(self, port: tcp.Port | unix.Port) -> Any:
        server, _ = accept(self, port)
        return server

    def accepted_tcp(self, factory: IProtocolFactory) -> socket.socket:
        """
        The daemon side of a loopback TCP connection to C{factory}.
        """
        reactor = MemoryReactorClock()
        port = tcp.Port(0, factory, interface="127.0.0.1", reactor=reactor)
        server: socket.socket = self.accepted(port).socket
        return server

    def assertNoDelay(self, accepted: socket.socket) -> None:
        self.assertEqual(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    def test_the_line_port(self) -> None:
        """
        A connection to the line port has TCP_NODELAY; Twisted would leave
        Nagle's algorithm on.
        """
        self.assertNoDelay(self.accepted_tcp(Instance(self).daemon.factory))

    def test_the_admin_port(self) -> None:
        """
        So does a connection to the admin port.
        """
        self.assertNoDelay(self.accepted_tcp(Instance(self).daemon.admin))

    def test_a_unix_socket_is_accepted_as_before(self) -> None:
        """
        A connection to a UNIX socket, where there is no Nagle's algorithm
        to turn off, is made as before.
        """
        inner = Protocol()
        factory = PromptTLSFactory(
            ssl.CertificateOptions(), Factory.forProtocol(lambda: inner), Clock()
        )
        path = str(temporary_directory(self) / "line.sock")
        server = self.accepted(unix.Port(path, factory, reactor=MemoryReactorClock()))
        self.assertIsInstance(server, unix.Server)
        self.assertIs(inner.transport.transport, server)  # type: ignore[union-attr]
