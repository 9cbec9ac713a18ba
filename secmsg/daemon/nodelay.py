"""
TLS over TCP sockets that send at once.

Twisted leaves Nagle's algorithm on, and under it a small TLS record
written while an earlier one is unacknowledged waits for the peer's
delayed ACK, up to 40 ms on Linux.  A daemon that writes a reply or a
push as soon as it has one pays that wait on a steady stream of small
messages: it was the 30-40 ms p99 of every steady load.  Twisted's
buffering TLS transport, kept here, still gathers the writes of one
reactor turn into one TLS record, so a turn's replies and pushes to a
peer leave in one packet, not one each.
"""

from __future__ import annotations

from twisted.internet.interfaces import ITCPTransport, ITransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory


class NoDelayTLSProtocol(BufferingTLSTransport):
    """
    TLS whose TCP socket has TCP_NODELAY.  Twisted's UNIX transport is a
    TCP transport too, whose C{setTcpNoDelay} does nothing.
    """

    def makeConnection(self, transport: ITransport) -> None:
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        super().makeConnection(transport)


class NoDelayTLSFactory(TLSMemoryBIOFactory):
    """Twisted's TLS wrapping factory, with sockets that send at once."""

    protocol = NoDelayTLSProtocol
