"""
A cluster to measure and to break: one PostgreSQL, one Redis, the bench's
PKI, and secmsg daemons started on them in cluster mode, each with a data
directory and a node name of its own; and a plain blocking session of the
line protocol, for what the client workers do not do (watch presence,
stream until a fault, collect what a recipient is owed).

The cluster's figures (L{bench.cluster}) and its kill trials
(L{bench.cluster_trials}) both run on it.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from typing import Self

from bench.clients import SERVER_NAME, client_context
from bench.servers import Credentials, SecmsgServer, make_pki

# The benchmark starts the PostgreSQL and Redis that the cluster's tests
# start: one place knows how to run them on free loopback ports (as an
# unprivileged user for PostgreSQL when root), and bench importing from
# tests is the lesser evil than a second copy.
from tests.servers import PostgresServer, RedisServer

READ_TIMEOUT = 30.0
"""Most seconds a session waits for a line before it gives up."""


def _cpu_of(pid: int) -> float:
    """
    A process's CPU time, user and system, in seconds; nothing for one
    that has ended since it was listed.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Daemons:
    """
    The CPU time of several daemons, summed: a cluster's server CPU.
    """

    def __init__(self, daemons: list[SecmsgServer]) -> None:
        self._daemons = daemons

    def cpu_seconds(self) -> float:
        return sum(daemon.cpu_seconds() for daemon in self._daemons)


class PostgresMeter:
    """
    The CPU time of PostgreSQL's processes, read apart from the daemons':
    the store's cost, which one daemon on SQLite pays in its own process.
    """

    def __init__(self, postgres: PostgresServer) -> None:
        self._postgres = postgres

    def cpu_seconds(self) -> float:
        return sum(_cpu_of(pid) for pid in self._postgres.processes())


class Cluster:
    """
    PostgreSQL, Redis and the PKI, started once; daemons on them, each
    started by L{node} with a fresh directory. Stop it with L{stop}, or
    use it as a context manager.
    """

    def __init__(
        self, directory: Path, names: list[str], watchers: tuple[str, ...] = ()
    ) -> None:
        self.directory = directory
        # Every identity is known, so that a message may wait for it.
        known = [name for name in names if name not in watchers]
        self.credentials: Credentials = make_pki(
            directory / "pki", names, known, watchers=watchers
        )
        self.postgres = PostgresServer()
        self.redis = RedisServer()
        self._runs = itertools.count(1)

    def start(self) -> None:
        self.postgres.start()
        self.redis.start()

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def new_database(self) -> str:
        """
        A database of its own for a run, so that none reads another's
        messages.
        """
        return self.postgres.new_database()

    def node(self, name: str, database: str) -> SecmsgServer:
        """
        A daemon of the cluster on C{database}, named C{name}, on a free
        port, with no admin port (two would collide).
        """
        scratch = self.directory / f"{name}-{next(self._runs)}"
        scratch.mkdir()
        flags = (
            *("--database", database),
            *("--bus", self.redis.url),
            *("--node", name),
            *("--admin-port", "0"),
        )
        return SecmsgServer.start(self.credentials, scratch, flags=flags)

    def session(self, daemon: SecmsgServer, name: str) -> LineSession:
        return LineSession(self.credentials, daemon.port, name)


class LineSession:
    """
    A blocking session of the line protocol as identity C{name}, read line
    by line; its greeting is read before it is handed out.
    """

    def __init__(self, credentials: Credentials, port: int, name: str) -> None:
        certificate, key = credentials.client(name)
        context = client_context(certificate, key, credentials.ca, "1.3")
        raw = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.connection = context.wrap_socket(raw, server_hostname=SERVER_NAME)
        self._buffer = b""
        self.ended = False
        """Whether the server has closed the session (or it broke)."""
        greeting = self.readline()
        if greeting is None or f"you are {name}" not in greeting:
            self.close()
            raise ConnectionError(f"no greeting for {name}: {greeting!r}")

    def readline(self, deadline: float | None = None) -> str | None:
        """
        The next line, or L{None} once the session has ended (see
        L{ended}) or C{deadline} (CLOCK_MONOTONIC) has passed with none.
        """
        while b"\n" not in self._buffer:
            left = READ_TIMEOUT if deadline is None else deadline - time.monotonic()
            if left <= 0 or self.ended:
                return None
            self.connection.settimeout(left)
            try:
                chunk = self.connection.recv(65536)
            except TimeoutError:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self.ended = True
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    def until(self, wanted: str, deadline: float) -> bool:
        """
        Read until the line C{wanted} comes (L{True}), or the session ends
        or C{deadline} passes first (L{False}).
        """
        while (line := self.readline(deadline)) is not None:
            if line == wanted:
                return True
        return False

    def close(self) -> None:
        self.connection.close()
