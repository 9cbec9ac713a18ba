"""
The daemon's service: listen, and close every session on the way out.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from secmsg import __version__
from secmsg.protocol import SessionFactory, describe_address

log = Logger()

SHUTDOWN_GRACE = 5.0
"""Seconds the sessions get to receive their CLOSED line at shutdown."""


class SecmsgService(Service):
    """
    Listens on one endpoint with the TLS-wrapped session factory.

    A port that cannot be bound stops the daemon before the reactor runs,
    with one line (which twistd, logging by then, writes to its log) and
    exit status 1, rather than leaving a daemon that serves nothing.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: Factory,
        sessions: SessionFactory,
        clock: IReactorTime,
    ) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._sessions = sessions
        self._clock = clock
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failures: list[Failure] = []
        self._endpoint.listen(self._factory).addCallbacks(
            self._listening, failures.append
        )
        if failures:
            raise SystemExit(
                f"secmsg: cannot start: cannot listen: {failures[0].getErrorMessage()}"
            )

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        log.info(
            "secmsg {version} listening on {address}",
            version=__version__,
            address=describe_address(port.getHost()),
        )

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop listening, tell every session C{CLOSED server shutting down},
        and wait a little for those lines to leave.
        """
        super().stopService()
        stopped = defer.maybeDeferred(self._port.stopListening) if self._port else None
        closed = self._sessions.close_all("server shutting down")
        closed.addTimeout(SHUTDOWN_GRACE, self._clock)
        closed.addErrback(lambda failure: failure.trap(defer.TimeoutError))
        waits = [closed] if stopped is None else [stopped, closed]
        return defer.gatherResults(waits).addCallback(lambda _: None)
