"""
Where the daemon listens: Twisted server endpoint strings, under our TLS.

An operator names a socket as Twisted does (C{tcp:7443:interface=::},
C{unix:/run/secmsg/secmsg.sock}, C{systemd:domain=INET:index=0} for a
socket systemd hands over), and the daemon listens on it with its own TLS
factory: the verify callback, the reloadable context and the handshake
budget stay the daemon's whatever the socket.  Twisted's own C{ssl:}
endpoint would put a second, unverifying TLS in their place, so it is
refused rather than quietly layered.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IStreamServerEndpoint

from secmsg.daemon.limits import describe_address
from secmsg.errors import ConfigurationError

TLS_TYPES = ("ssl", "tls")
"""Endpoint types that would do TLS themselves, in place of the daemon's."""


def plain_endpoint_problem(description: str) -> str | None:
    """
    Why an endpoint string cannot be listened on, as far as can be told
    without a reactor; L{None} if nothing is wrong with it yet.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if not kind:
        return f"{description!r} names no endpoint type, as tcp:7443 does"
    if kind in TLS_TYPES:
        return (
            f"{description!r} is a TLS endpoint; secmsg puts its own TLS "
            "(client certificates checked against its CA and CRLs, renewed "
            "on reload) on every endpoint, so give the plain one beneath, "
            "such as tcp:7443"
        )
    return None


def server_endpoint(
    reactor: Any, description: str, where: str
) -> IStreamServerEndpoint:
    """
    The endpoint an operator's string names, or a configuration error that
    says why not.

    @param where: the setting it came from, for the error.
    @raise ConfigurationError: the string is not one Twisted can listen on.
    """
    problem = plain_endpoint_problem(description)
    if problem is None:
        try:
            endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
            return endpoint
        except (IndexError, KeyError):
            # Only the systemd parser looks something up: the descriptor
            # it was told to adopt.
            problem = (
                f"{description!r}: systemd handed this daemon no such socket "
                "(LISTEN_FDS and LISTEN_FDNAMES name none); start it from its "
                "socket unit, secmsg.socket, or with systemd-socket-activate "
                "--fdname"
            )
        except (ValueError, TypeError, AttributeError) as error:
            problem = f"{description!r}: not an endpoint secmsg can listen on: {error}"
    raise ConfigurationError(where, problem)


def describe_listening(address: IAddress) -> str:
    """
    A listening address as an operator writes it: C{host:port}, or
    C{unix:PATH} for a UNIX socket.
    """
    if isinstance(address, UNIXAddress) and address.name is not None:
        return f"unix:{os.fsdecode(address.name)}"
    return describe_address(address)
