"""
TLS over TCP sockets that send at once, a reactor turn's writes to a peer
gathered into one TLS record.

Three costs of a small write, each paid per reply and per push, are cut
here:

  - Nagle's algorithm, which Twisted leaves on: a small TLS record
    written while an earlier one is unacknowledged waited for the peer's
    delayed ACK, up to 40 ms on Linux.  It was the 30-40 ms p99 of every
    steady load.  Each TCP connection gets C{TCP_NODELAY}.
  - A timer per peer: Twisted's buffering TLS transport gathers a turn's
    writes to a peer and schedules their flush on a delayed call of its
    own, so a room message to a hundred members scheduled a hundred.  One
    L{TurnFlush} per port flushes every peer written to in a turn.
  - A round through the reactor per write: Twisted's TCP transport queues
    every write and sends it when the reactor next polls, registering the
    socket for writing and unregistering it again, two C{epoll_ctl} calls
    and a dispatch for each.  The TLS records are sent at once when
    nothing is queued before them (L{send_now}), and only what the socket
    does not take is queued.

The cluster's publisher writes through L{PromptTransport}, so that a
segment leaves before the 250s of its messages, which are now sent within
the turn of the commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

GATHER_LIMIT = 64_000
"""Bytes gathered for a peer before they are written without waiting for
the turn's end, as Twisted's buffering transport does: a turn that
writes megabytes holds no more than this per peer."""

_RECORDS_READ = 2**15
"""What one read of OpenSSL's outgoing buffer takes, as Twisted's does:
each write hands OpenSSL at most one record's 16 KiB, so this empties it."""


class TurnFlush:
    """
    The peers written to in this reactor turn, each flushed once when the
    turn's work is done, under one delayed call.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._written: list[PromptTLSProtocol] = []
        self._call: IDelayedCall | None = None

    def add(self, peer: PromptTLSProtocol) -> None:
        self._written.append(peer)
        if self._call is None:
            self._call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        written, self._written, self._call = self._written, [], None
        for peer in written:
            peer.flush()


def send_now(transport: ITransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}: straight to its socket when it is a
    connected TCP or UNIX transport with nothing queued, and through its
    queue for whatever the socket does not take.  What the socket refuses
    with an error is queued too, so that the transport's next write meets
    the error and loses the connection as it would have.
    """
    if (
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            data = data[sent:]
    if data:
        transport.write(data)


class PromptTransport:
    """
    A transport whose writes are sent at once (L{send_now}), for a protocol
    that writes to its transport itself, as txredisapi's does: the
    cluster's publisher, whose segment then reaches its socket before the
    250s of the segment's messages reach theirs.
    """

    def __init__(self, transport: ITransport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        send_now(self._transport, data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        send_now(self._transport, b"".join(iovec))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class PromptTLSProtocol(TLSMemoryBIOProtocol):
    """
    TLS whose writes of a turn are gathered and flushed at its end by the
    factory's L{TurnFlush}, and whose records are sent at once.
    """

    factory: PromptTLSFactory
    _gathered: list[bytes] | None = None
    """What was written this turn, from the first write; L{None} between
    turns, so that an idle session holds no list."""
    _gathered_bytes = 0

    def makeConnection(self, transport: ITransport) -> None:
        # Twisted's UNIX transport is a TCP transport too, whose
        # setTcpNoDelay does nothing.
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        super().makeConnection(transport)

    def write(self, data: bytes) -> None:
        if self._gathered is None:
            self._gathered = [data]
            self._gathered_bytes = len(data)
            self.factory.turn_flush.add(self)
        else:
            self._gathered.append(data)
            self._gathered_bytes += len(data)
        if self._gathered_bytes > GATHER_LIMIT:
            self.flush()

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.write(b"".join(iovec))

    def flush(self) -> None:
        """
        Hand what was gathered to OpenSSL, and its records to the socket.
        """
        gathered, self._gathered = self._gathered, None
        if gathered:
            super().write(b"".join(gathered))

    def loseConnection(self) -> None:
        self.flush()
        super().loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gathered = None
        super().connectionLost(reason)

    def _flushSendBIO(self) -> None:
        # Twisted's own, but for send_now: the one place its TLS transport
        # hands records to the socket's transport.
        try:
            records = self._tlsConnection.bio_read(_RECORDS_READ)
        except SSL.WantReadError:
            return
        if self.transport is not None:
            send_now(self.transport, records)


class PromptTLSFactory(TLSMemoryBIOFactory):
    """
    Twisted's TLS wrapping factory for a server, with connections that send
    at once.
    """

    protocol = PromptTLSProtocol

    def __init__(
        self,
        creator: IOpenSSLServerConnectionCreator,
        wrapped: IProtocolFactory,
        clock: IReactorTime,
    ) -> None:
        super().__init__(creator, False, wrapped, clock)
        self.turn_flush = TurnFlush(clock)
