"""
The settings of a daemon that shares what it keeps and tells with others:
the PostgreSQL database of its store, the Redis bus of its cluster, and
its name there.  Each check takes the value as the operator wrote it and
where it was set, and refuses it in words that say what to write.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from typing import Any

from secmsg.errors import ConfigurationError
from secmsg.wire import NAME_TOKEN

_DATABASE_EXAMPLE = "a URL such as postgresql://secmsg@127.0.0.1:5432/secmsg"
_BUS_EXAMPLE = "a URL such as redis://127.0.0.1:6379/0"


def database_url(value: Any, where: str) -> str:
    """
    The PostgreSQL database to keep the messages in, as a
    C{postgresql://USER@HOST:PORT/DB} URL, or C{postgresql:///DB?host=DIR}
    for the server's socket in DIR (peer authentication, as the daemon's
    user, with no password at all).  A password is refused: the
    config file is no secret, and libpq reads one from C{~/.pgpass} or
    C{PGPASSFILE}, a file of the daemon's user alone.
    """
    url = _split(value, where, ("postgresql", "postgres"), _DATABASE_EXAMPLE)
    query = urllib.parse.parse_qs(url.query)
    if not url.hostname and not query.get("host", [""])[0].startswith("/"):
        raise ConfigurationError(
            where, f"names no host; it must be {_DATABASE_EXAMPLE}"
        )
    if not url.path.strip("/"):
        raise ConfigurationError(
            where, f"names no database; it must be {_DATABASE_EXAMPLE}"
        )
    if url.password is not None or {"password", "sslpassword"} & query.keys():
        raise ConfigurationError(
            where,
            "holds a password; put it in ~/.pgpass or the file PGPASSFILE "
            "names, readable by the daemon's user alone, where PostgreSQL's "
            "client reads it",
        )
    return str(value)


def bus_url(value: Any, where: str) -> str:
    """
    The Redis server the daemons of a cluster tell each other through, as
    a C{redis://HOST:PORT/N} URL: N, 0 if not given, keeps clusters that
    share a Redis apart.  No password or user: secmsg's bus speaks to a
    Redis on a network of the cluster's own.
    """
    url = _split(value, where, ("redis",), _BUS_EXAMPLE)
    if not url.hostname:
        raise ConfigurationError(where, f"names no host; it must be {_BUS_EXAMPLE}")
    number = url.path[1:]
    if url.username or url.password or url.query or url.fragment:
        raise ConfigurationError(
            where, f"holds more than a host, port and number; it must be {_BUS_EXAMPLE}"
        )
    if number and not (number.isascii() and number.isdigit() and len(number) <= 4):
        raise ConfigurationError(where, f"ends in no number; it must be {_BUS_EXAMPLE}")
    return str(value)


def node_name(value: Any, where: str, port: int, port_shared: bool) -> str:
    """
    The daemon's name in its cluster's logs, metrics and admin interface:
    the operator's, or the host's name and the port, and the process's id
    if several daemons share the port (C{reuse-port}), since they share
    the host and the port too.
    """
    if value is None:
        host = socket.gethostname().split(".")[0]
        named = f"{host}-{port}-{os.getpid()}" if port_shared else f"{host}-{port}"
        return named if NAME_TOKEN.fullmatch(named) else f"node-{port}"
    if not isinstance(value, str) or not NAME_TOKEN.fullmatch(value):
        raise ConfigurationError(
            where, "must be a name of letters, digits and ._@+- (64 at most)"
        )
    return value


def _split(
    value: Any, where: str, schemes: tuple[str, ...], example: str
) -> urllib.parse.SplitResult:
    """
    C{value} as a URL of one of C{schemes} that names a host.
    """
    if not isinstance(value, str) or not value.isprintable():
        raise ConfigurationError(where, f"must be {example}")
    try:
        url = urllib.parse.urlsplit(value)
        url.port  # noqa: B018 -- read for the ValueError of a bad port
    except ValueError:
        raise ConfigurationError(where, f"must be {example}") from None
    if url.scheme not in schemes:
        raise ConfigurationError(where, f"must be {example}")
    return url
