"""
The daemon's service: listen, reload on SIGHUP, and close every session on
the way out.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from secmsg import __version__
from secmsg.clock import clock_time
from secmsg.daemon.audit import ROTATE_BYTES, AuditTrail, audit, open_trail
from secmsg.daemon.factory import SessionFactory
from secmsg.daemon.interfaces import IMessageStore
from secmsg.daemon.listen import describe_listening
from secmsg.daemon.operations import reload_as
from secmsg.daemon.reload import ReloadReport
from secmsg.daemon.settings import prepare_data_dir
from secmsg.daemon.store.sql import StreamStore
from secmsg.daemon.tls import VerifyingServerTLS
from secmsg.errors import ConfigurationError, ServerFault
from secmsg.messages import Retention

log = Logger()

SHUTDOWN_GRACE = 5.0
"""Seconds the sessions get to receive their CLOSED line at shutdown."""

LINE_PORT_FIX = "choose another with --port, or with port or listen in the config file"
"""How an operator moves the line protocol off an address it cannot have."""

ADMIN_PORT_FIX = (
    "choose another with --admin-port, or with admin-port or admin-listen "
    "in the config file"
)
"""How an operator moves the admin interface off an address it cannot have."""


STATUS_BYTES = 98
"""What twistd's waiting process reads of a refusal: 100 bytes, less the
two of the status that precedes it."""


class ReportedStart(MultiService):
    """
    The daemon's services, whose refusal to start is reported as twistd
    reports an error, which the refusal's C{SystemExit} skips.

    Forking into the background, twistd leaves its first process waiting
    for a word from the daemon on a status pipe that it holds open itself;
    without one the waiting process would wait for ever.  The refusal goes
    to the log first, then twistd's pidfile, naming a daemon that is
    stopping, is removed as twistd removes it after an error, and last the
    refusal is written to the pipe: the waiting process, which exits as
    soon as it reads it, finds both done.  It shows the refusal, says to
    look at the log, and exits with status 1.
    """

    def __init__(self, daemon: IService, twistd: Mapping[str, Any]) -> None:
        """
        @param twistd: twistd's options, where it puts its status pipe
            when it forks.
        """
        super().__init__()
        self._twistd = twistd
        daemon.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except SystemExit as refusal:
            if not isinstance(refusal.code, str):
                raise
            # twistd logs what is written to stderr, as the line SystemExit
            # would print at the very end.
            print(refusal.code, file=sys.stderr, flush=True)
            pidfile = self._twistd.get("pidfile")
            if pidfile:
                remove_own_pidfile(Path(pidfile))
            pipe = self._twistd.get("statusPipe")
            if pipe is not None:
                reason = refusal.code.removeprefix("secmsg: cannot start: ")
                os.write(pipe, b"1 " + reason.encode()[:STATUS_BYTES])
            raise SystemExit(1) from None


def remove_own_pidfile(pidfile: Path) -> None:
    """
    Remove a pidfile that names this process, and only such a one.
    """
    try:
        if pidfile.read_text().strip() == str(os.getpid()):
            pidfile.unlink()
    except OSError:
        # Gone already, or not ours to remove: the refusal matters more.
        return


class Listener(Protocol):
    """
    A service whose ports L{ListenFirstService} binds before anything else
    of the daemon starts.
    """

    def listen(self) -> None:
        """
        Bind this service's ports, or stop the daemon with one line.
        """


class ListenFirstService(Service):
    """
    Binds every port of the daemon, then makes its data directory: the
    first of the daemon's services to start, so that a port that cannot be
    bound stops the daemon before anything is written in the data
    directory (a database, an audit trail and its key) for a daemon that
    will never serve.  The ports stay their services', which stop
    listening when they stop.
    """

    def __init__(self, listeners: Sequence[Listener], data_dir: Path) -> None:
        self._listeners = listeners
        self._data_dir = data_dir

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for listener in self._listeners:
            listener.listen()
        try:
            prepare_data_dir(self._data_dir)
        except ConfigurationError as error:
            raise SystemExit(f"secmsg: cannot start: {error}") from None


class SecmsgService(Service):
    """
    Listens on its endpoints with the TLS-wrapped session factory, when
    L{ListenFirstService} tells it to.

    A port that cannot be bound stops the daemon before the reactor runs,
    with one line (which twistd, logging by then, writes to its log) and
    exit status 1, rather than leaving a daemon that serves nothing.

    SIGHUP does what an admin's RELOAD does, so that an operator can apply
    a fresh CRL (C{secmsg pki revoke alice && kill -HUP PID}) without a
    certificate of their own.
    """

    def __init__(
        self,
        endpoints: Sequence[IStreamServerEndpoint],
        factory: Factory,
        sessions: SessionFactory,
        reactor: Any,
        reload: Callable[[], ReloadReport],
        store: IMessageStore,
    ) -> None:
        """
        @param reactor: provides L{IReactorTime} and
            L{twisted.internet.interfaces.IReactorFromThreads}.
        """
        self._endpoints = endpoints
        self._factory = factory
        self._sessions = sessions
        self._reactor: IReactorTime = reactor
        self._reload = reload
        self._store = store
        self._ports: list[IListeningPort] = []
        self._previous_hangup: Any = None
        self._listening_for_hangup = False

    def listen(self) -> None:
        """
        Bind the line protocol's ports, or stop the daemon with one line.
        """
        self._ports = listen_all(
            self._endpoints,
            self._factory,
            "secmsg {version} listening on {address}",
            LINE_PORT_FIX,
        )

    def startService(self) -> None:
        super().startService()
        self._previous_hangup = signal.signal(signal.SIGHUP, self._hangup)
        self._listening_for_hangup = True

    def _hangup(self, signal_number: int, frame: FrameType | None) -> None:
        # A signal handler may run between any two bytecodes of the reactor's
        # own work, so the reload itself waits for the reactor's next turn.
        self._reactor.callFromThread(self.reload_on_signal)

    def reload_on_signal(self) -> None:
        """
        Reload as RELOAD does; a failure is logged and changes nothing.
        """
        try:
            # The service's reload takes no dry-run flag: SIGHUP never
            # asks for one.
            reload_as(
                lambda _dry: self._reload(), "SIGHUP", dry=False, asked="on SIGHUP"
            )
        except ServerFault:
            # reload_as has recorded why, and there is no one to answer.
            return

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop listening, tell every session C{CLOSED server shutting down},
        and wait a little for those lines to leave.
        """
        super().stopService()
        if self._listening_for_hangup:
            # A handler installed outside Python reads as None: restore the
            # default then.
            signal.signal(signal.SIGHUP, self._previous_hangup or signal.SIG_DFL)
        stopped = stop_listening(self._ports)
        closed = self._sessions.close_all("server shutting down")
        closed.addTimeout(SHUTDOWN_GRACE, self._reactor)
        closed.addErrback(lambda failure: failure.trap(defer.TimeoutError))
        # The store closes last: what the sessions sent before they closed
        # is committed first.
        closed.addCallback(lambda _: self._store.close())
        return defer.gatherResults([stopped, closed]).addCallback(lambda _: None)


def listen_all(
    endpoints: Sequence[IStreamServerEndpoint],
    factory: Factory,
    announce: str,
    fix: str,
) -> list[IListeningPort]:
    """
    Listen on every endpoint, or stop the daemon; log each address.

    @param announce: the log line's format, naming C{{address}} (and
        C{{version}} if it likes).
    @param fix: what the operator can do about an address that cannot be
        had, for the line that stops the daemon.
    """
    ports = []
    for endpoint in endpoints:
        port = listen_or_exit(endpoint, factory, fix)
        ports.append(port)
        log.info(
            announce, version=__version__, address=describe_listening(port.getHost())
        )
    return ports


def listen_or_exit(
    endpoint: IStreamServerEndpoint, factory: Factory, fix: str
) -> IListeningPort:
    """
    Listen at once, or stop the daemon with one line naming the address
    and C{fix}: TCP, UNIX and adopted (systemd) endpoints listen
    synchronously, so the outcome is known before this returns.
    """
    outcome: list[IListeningPort | Failure] = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome:
        raise SystemExit("secmsg: cannot start: cannot listen: no answer")
    if isinstance(outcome[0], Failure):
        problem = listen_problem(outcome[0])
        raise SystemExit(f"secmsg: cannot start: {problem}; {fix}")
    return outcome[0]


def listen_problem(failure: Failure) -> str:
    """
    Why listening failed, in words that name the address: Twisted's own
    message repeats its exception's name and the errno.
    """
    error = failure.value
    if not isinstance(error, CannotListenError):
        return f"cannot listen: {failure.getErrorMessage()}"
    if error.interface is None:
        # A UNIX socket, whose port is its path.
        address = f"unix:{error.port}"
    else:
        host = error.interface or "*"
        address = f"[{host}]:{error.port}" if ":" in host else f"{host}:{error.port}"
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    return f"cannot listen on {address}: {reason.lower()}"


def stop_listening(ports: list[IListeningPort]) -> defer.Deferred[None]:
    """
    Stop listening on every port, and forget them, so that a second stop
    has nothing left to do.
    """
    stopping = [defer.maybeDeferred(port.stopListening) for port in ports]
    ports.clear()
    return defer.gatherResults(stopping).addCallback(lambda _: None)


class AdminService(Service):
    """
    Serves the HTTPS admin interface on its own endpoints while the daemon
    runs, listening when L{ListenFirstService} tells it to; a port that
    cannot be bound stops the daemon, as the main one does.
    """

    def __init__(
        self, endpoints: Sequence[IStreamServerEndpoint], factory: Factory
    ) -> None:
        self._endpoints = endpoints
        self._factory = factory
        self._ports: list[IListeningPort] = []

    def listen(self) -> None:
        """
        Bind the admin interface's ports, or stop the daemon with one line.
        """
        self._ports = listen_all(
            self._endpoints,
            self._factory,
            "admin interface listening on https://{address}/",
            ADMIN_PORT_FIX,
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return stop_listening(self._ports)


class StoreService(Service):
    """
    Opens the message store when the daemon starts: after twistd has forked
    into the background, so that the store's lock and thread belong to the
    process that serves.  A store that cannot be opened stops the daemon
    with one line, as a port that cannot be bound does.

    @ivar store: the store it opens.
    """

    def __init__(self, store: StreamStore) -> None:
        self.store = store

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self.store.open()
        except ConfigurationError as error:
            raise SystemExit(f"secmsg: cannot start: {error}") from None


PURGE_INTERVAL = 3600.0
"""Seconds between two purges of what retention no longer keeps."""


class RetentionService(TimerService):
    """
    Purges the store at startup and every L{PURGE_INTERVAL} after.
    """

    def __init__(
        self, store: IMessageStore, clock: IReactorTime, retention: Retention
    ) -> None:
        super().__init__(PURGE_INTERVAL, self.purge)
        self.clock = clock
        self._store = store
        self._retention = retention

    def purge(self) -> defer.Deferred[None]:
        """
        Remove what is past its age or count; log what went, or why not.
        """
        purged = self._store.purge(clock_time(self.clock), self._retention)
        purged.addCallbacks(self._purged, self._purge_failed)
        return purged

    def _purged(self, count: int) -> None:
        if count:
            log.info(
                "retention: removed {count} message(s) past their age or count",
                count=count,
            )

    def _purge_failed(self, failure: Failure) -> None:
        log.error("retention: purge failed: {error}", error=failure.getErrorMessage())


HEAD_INTERVAL = 3600.0
"""Seconds between two lines of the log naming the audit trail's head."""


class AuditService(TimerService):
    """
    Writes the audit trail to the data directory while the daemon runs,
    and logs its head at startup, every L{HEAD_INTERVAL} and at shutdown.

    The trail is opened after twistd has forked, as the store is, and
    once the ports are bound (L{ListenFirstService}), but before they
    take a connection, which waits for the reactor; it observes the log
    until after the last session has closed.  The head goes to the
    operator's log, not to the trail: shipped elsewhere, it is what shows
    that the trail's end was cut (C{secmsg audit verify --head}).
    """

    def __init__(
        self,
        directory: Path,
        publisher: LogPublisher,
        clock: IReactorTime,
        rotate_bytes: int = ROTATE_BYTES,
    ) -> None:
        super().__init__(HEAD_INTERVAL, self.log_head)
        self.clock = clock
        self._directory = directory
        self._publisher = publisher
        self._rotate_bytes = rotate_bytes
        self._trail: AuditTrail | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self._trail = open_trail(self._directory, self._rotate_bytes)
        except ConfigurationError as error:
            raise SystemExit(f"secmsg: cannot start: {error}") from None
        self._publisher.addObserver(self._trail)
        if self._trail.new_key:
            audit(
                "trail_keyed",
                "the audit trail is keyed from here on with a new key, key id {key_id}",
                key_id=self._trail.key_id,
            )
        if self._trail.repaired:
            audit(
                "trail_repaired",
                "the audit trail's last record was cut short ({length} bytes), "
                "as by a crash in mid-write; the trail goes on after it",
                LogLevel.warn,
                length=self._trail.repaired,
            )

    def log_head(self) -> None:
        """
        Name the trail's last record in the log, as C{--head} takes it,
        and the id of its key, as C{--key-id} does: shipped elsewhere, they
        show a cut end and a key planted beside the trail.
        """
        if self._trail is None or self._trail.head is None:
            return
        log.info(
            "audit trail head {head} key id {key_id} (check: secmsg audit "
            "verify --head {head} --key-id {key_id})",
            head=str(self._trail.head),
            key_id=self._trail.key_id,
        )

    def stopService(self) -> defer.Deferred[None]:
        stopped = super().stopService()
        if self._trail is not None:
            self.log_head()
            self._publisher.removeObserver(self._trail)
            self._trail.close()
            self._trail = None
        return stopped


CRL_CHECK_INTERVAL = 3600.0
"""Seconds between two checks that the CRLs are still fresh."""


class CRLFreshnessService(TimerService):
    """
    Warns, at startup and every L{CRL_CHECK_INTERVAL}, of each CRL in
    force that is past its next update, so that a forgotten CRL renewal is
    seen in the log before a revocation is missed.  Under
    C{stale-crl = "refuse"} it also closes the live sessions such a CRL
    covers, as new handshakes are refused.
    """

    def __init__(
        self,
        tls: VerifyingServerTLS,
        clock: IReactorTime,
        recheck: Callable[[], None],
    ) -> None:
        super().__init__(CRL_CHECK_INTERVAL, self.check)
        self.clock = clock
        self._tls = tls
        self._recheck = recheck

    def check(self) -> None:
        """
        Log a warning for each stale CRL, and close what refuse mode
        refuses.
        """
        trust = self._tls.trust
        warnings = trust.stale_crls(clock_time(self.clock))
        for warning in warnings:
            log.warn("{problem}; renew it and reload", problem=warning)
        if warnings and trust.refuse_on_stale_crl:
            self._recheck()
