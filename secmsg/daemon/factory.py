"""
The line port's factory: it builds each session, and decides who may
connect and log in, with the line port's quotas on
L{secmsg.daemon.limits.Admissions} (which the admin port's gate counts its
connections with too) and the rate of logins.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import LogLevel

from secmsg import wire
from secmsg.daemon.audit import RecordBudget, RefusalRecords, RepeatBudget, audit
from secmsg.daemon.commands import Commands
from secmsg.daemon.limits import Admissions, Limits, LoginLimiter, LoginPastRate, Quota
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.protocol import SessionPort, SessionProtocol
from secmsg.rate import RateLimiter


class SessionFactory(Factory):
    """
    Builds a L{SessionProtocol} for each connection, all sharing one portal,
    one set of command handlers and one rate limiter, and counts
    connections and sessions against the L{Limits} (L{session_admissions}).

    Connections not yet logged in have budgets of their own, per address
    and in all, apart from the sessions': past one, the oldest connection
    not logged in is dropped to make room, so that
    connections held open without a certificate cannot keep a client that
    has one from logging in.  Sessions are counted at login, per identity,
    per address and in all; a login past a limit is told why with C{503}.
    """

    noisy = False

    refusal_records: RefusalRecords
    """How many audit records connections that never logged in may cause:
    refused handshakes and connections dropped to make room, on this port
    and the admin interface's."""

    login_records: RepeatBudget
    """The records of logins refused for their rate, per identity or
    address."""

    rate_limiter: RateLimiter
    """The identities' token buckets, which the admin interface draws on
    too."""

    def __init__(
        self,
        portal: Portal,
        commands: Commands,
        clock: IReactorTime,
        limits: Limits,
        metrics: Metrics,
        sessions_elsewhere: Callable[[str], int],
        max_line_length: int = wire.MAX_LINE_LENGTH,
    ) -> None:
        """
        @param sessions_elsewhere: how many sessions an identity holds on
            the cluster's other daemons, which count against its limit.
        """
        self._limits = limits
        self._metrics = metrics
        self.rate_limiter = RateLimiter(clock)
        self._port = SessionPort(
            portal, commands, clock, limits, self.rate_limiter, metrics, max_line_length
        )
        self.refusal_records = RefusalRecords(
            RecordBudget(clock, "handshake_refused"),
            RepeatBudget(clock, "handshake_refused"),
        )
        self.login_records = RepeatBudget(clock, "login_rate_limited")
        self._logins = LoginLimiter(clock, limits)
        self._sessions: set[SessionProtocol] = set()
        self._admissions: Admissions[SessionProtocol] = session_admissions(
            limits, sessions_elsewhere
        )
        self._waiting: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> SessionProtocol:
        protocol = SessionProtocol(self._port)
        protocol.factory = self
        return protocol

    @property
    def session_count(self) -> int:
        """
        How many sessions are logged in now.
        """
        return self._admissions.admitted

    def session_started(self, protocol: SessionProtocol) -> None:
        """
        Track a connection until it ends; past the bounds on connections
        not logged in, the oldest of its address, or of all, makes room.
        """
        self._sessions.add(protocol)
        displaced = self._admissions.arrive(protocol, protocol.host)
        if displaced is None:
            return
        limits = self._limits
        if displaced.host == protocol.host:
            reason = (
                f"more than {limits.max_handshakes_per_address} connections not "
                f"logged in from {protocol.host}; the oldest makes room"
            )
        else:
            reason = (
                f"more than {limits.max_handshakes} connections not logged in; "
                "the oldest makes room"
            )
        displaced.displace(reason)

    def admit(self, protocol: SessionProtocol, identity: str) -> bytes | None:
        """
        Spend a login of C{identity}'s and of its address's, and count its
        session, unless it is past the rate of logins or a session limit;
        a refusal is counted and recorded.

        @return: the reply that refuses it (C{429} or C{503}), or L{None}.
        """
        too_soon = self._logins.take(identity, protocol.host)
        if too_soon is not None:
            return self._refuse_for_rate(protocol, identity, too_soon)
        refusal = self._admissions.admit(protocol, ("", identity, protocol.host))
        if refusal is None:
            return None
        self._metrics.handshake("session limit")
        audit(
            "limit_reached",
            "refused a session of {identity} from {peer}: {reason}",
            LogLevel.warn,
            identity=identity,
            peer=protocol.address,
            reason=refusal,
        )
        return wire.reply(503, refusal)

    def _refuse_for_rate(
        self, protocol: SessionProtocol, identity: str, refusal: LoginPastRate
    ) -> bytes:
        """
        Refuse a login past its identity's or its address's rate, and record
        it once a minute with a count.
        """
        self._metrics.handshake("login rate")
        if self.login_records.allow(refusal.whose):
            audit(
                "login_rate_limited",
                "refused a login of {identity} from {peer}: {reason}",
                LogLevel.warn,
                identity=identity,
                peer=protocol.address,
                reason=refusal.text,
            )
        return wire.reply(429, refusal.text)

    def session_ended(self, protocol: SessionProtocol) -> None:
        """
        Forget a connection; wake L{close_all} once none is left.
        """
        self._sessions.discard(protocol)
        self._admissions.leave(protocol)
        if not self._sessions:
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(None)

    def close_all(self, reason: str) -> defer.Deferred[None]:
        """
        Close every connection, telling logged-in peers C{CLOSED <reason>}
        and nothing of each other leaving; the Deferred fires once all of
        them are gone.
        """
        self._port.commands.shutting_down()
        if not self._sessions:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(waiter)
        for protocol in list(self._sessions):
            protocol.close(reason)
        return waiter


def session_admissions(
    limits: Limits, sessions_elsewhere: Callable[[str], int]
) -> Admissions[SessionProtocol]:
    """
    The line port's admissions: connections not logged in per address and
    in all, and sessions in all, per identity and per address, keyed
    C{("", identity, address)}.  An identity's sessions on a cluster's
    other daemons count against its limit; the limits per address and in
    all are this daemon's, since they bound what it holds.
    """
    return Admissions(
        limits.max_handshakes_per_address,
        limits.max_handshakes,
        (
            Quota(
                limits.max_sessions,
                "too many sessions on this server (limit {limit})",
            ),
            Quota(
                limits.max_per_identity,
                "too many sessions for {key} (limit {limit})",
                sessions_elsewhere,
            ),
            Quota(
                limits.max_per_address, "too many sessions from {key} (limit {limit})"
            ),
        ),
    )
