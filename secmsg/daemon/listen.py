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
import socket
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    _parse,
    serverFromString,
)
from twisted.internet.interfaces import IAddress, IStreamServerEndpoint

from secmsg.daemon.limits import describe_address
from secmsg.daemon.reuseport import ReusePortEndpoint
from secmsg.errors import ConfigurationError

LISTEN_BACKLOG = 511
"""Pending connections the kernel holds; Twisted's default of 50 overflows
under bursts of new connections and turns them into one-second stalls."""

TLS_TYPES = ("ssl", "tls")
"""Endpoint types that would do TLS themselves, in place of the daemon's."""

WRAPPER_TYPES = ("haproxy",)
"""Endpoint types whose arguments are the endpoint they wrap."""


def endpoint_types(description: str) -> list[str]:
    """
    The endpoint types Twisted reads in C{description}, lower-cased: its
    own, and for a wrapper (C{haproxy:tcp:7443}) the wrapped one's too.
    Read by Twisted's own parser, after its unescaping, so that
    C{\\ssl:7443} or C{a=b:ssl:7443} shows as the C{ssl} it resolves to.

    @raise ValueError: the string cannot be parsed at all.
    """
    try:
        # Private, but it is what serverFromString itself reads the string
        # with: a copy of its rules could drift from them.
        arguments, _ = _parse(description)
    except RuntimeError:
        # The tokenizer's StopIteration, turned into this by its generator.
        raise ValueError("it ends in a backslash that escapes nothing") from None
    kinds: list[str] = []
    for argument in arguments:
        kinds.append(str(argument).strip().lower())
        if kinds[-1] not in WRAPPER_TYPES:
            break
    return kinds


def plain_endpoint_problem(description: str) -> str | None:
    """
    Why an endpoint string cannot be listened on, as far as can be told
    without a reactor; L{None} if nothing is wrong with it yet.
    """
    try:
        kinds = endpoint_types(description)
    except ValueError as error:
        return f"{description!r}: not an endpoint string: {error}"
    if not kinds or not kinds[-1]:
        return f"{description!r} names no endpoint type, as tcp:7443 does"
    tls = [kind for kind in kinds if kind in TLS_TYPES]
    if tls:
        return (
            f"{description!r} is a TLS endpoint; secmsg puts its own TLS "
            "(client certificates checked against its CA and CRLs, renewed "
            "on reload) on every endpoint, so give the plain one beneath, "
            f"such as tcp:7443 (Twisted reads its type as {tls[0]})"
        )
    return None


def reuse_port_problem(
    listen: tuple[str, ...], admin_listen: tuple[str, ...]
) -> str | None:
    """
    Why the daemon's ports cannot be shared with SO_REUSEPORT; L{None} if
    they can.  Only the sockets the daemon makes itself, for port and
    admin-port, can have it: an endpoint string's socket is made by
    Twisted's parser or by systemd.
    """
    strings = "listen" if listen else "admin-listen" if admin_listen else None
    if strings is not None:
        return (
            f"set together with {strings}; reuse-port shares only the "
            "ports the daemon binds itself, so give port and interface "
            "(admin-port and admin-interface) in place of endpoint strings"
        )
    if not hasattr(socket, "SO_REUSEPORT"):
        return "this system has no SO_REUSEPORT, by which daemons share a port"
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


def listen_endpoints(
    reactor: Any,
    name: str,
    descriptions: tuple[str, ...],
    interface: str,
    port: int,
    reuse_port: bool,
) -> list[IStreamServerEndpoint]:
    """
    The endpoints a listen setting names, or the one of the port and
    interface settings when it names none.

    @param reuse_port: let other daemons listen on the port and interface
        too (the settings refuse it beside endpoint strings).
    """
    if descriptions:
        return [server_endpoint(reactor, text, name) for text in descriptions]
    if reuse_port:
        return [ReusePortEndpoint(reactor, port, interface, LISTEN_BACKLOG)]
    endpoint_type = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    return [endpoint_type(reactor, port, backlog=LISTEN_BACKLOG, interface=interface)]
