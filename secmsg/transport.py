"""
The transport every secmsg connection runs on, named once for the type
checker.

Twisted types a protocol's C{transport} as an optional plain
L{ITransport}, which has no C{abortConnection}, C{getHandle} nor flow
control; our connections are TLS over TCP, which has all of them once the
connection is made, and our protocols touch their transport only from
then on.  A protocol that declares C{transport: IConnection} says so in
one line instead of checking for L{None} at every write.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    ISystemHandle,
    ITLSTransport,
)


class IConnection(ITLSTransport, ISystemHandle, IConsumer, IPushProducer):
    """
    A connected TLS transport, as Twisted's TLS protocol over TCP provides
    it: it writes, aborts, hands out its pyOpenSSL connection, takes a
    producer, and can itself be paused (standard I/O provides the flow
    control part of it too).
    """

    def getHandle() -> SSL.Connection:
        """
        The pyOpenSSL connection under the TLS layer, which holds the
        peer's verified chain (L{ISystemHandle} says only C{object}).
        """
