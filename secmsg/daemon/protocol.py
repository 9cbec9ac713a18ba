"""
A session of the secmsg line protocol, on top of a TLS connection: its
life from the handshake through login to its close.

The session is thin: until login its L{secmsg.daemon.handshake.Handshake}
times it and holds what it sends early; from login on, what it reads goes
to its L{secmsg.daemon.pipeline.Pipeline} (which asks the avatar and hands
each command to L{secmsg.daemon.commands.Commands}), what others send it
to its L{secmsg.daemon.outbox.Outbox}, and its timers are its
L{secmsg.daemon.deadlines.Deadlines}.  Nothing is written to a peer, nor
read from it, before its handshake has completed and its login succeeded:
bytes that arrive before that (under TLS 1.3 a client may send right after
its side of the handshake) are held, up to a bound, and answered after the
greeting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from secmsg import __version__, wire
from secmsg.capabilities import CAPABILITIES, PROTOCOL_VERSION, format_offer
from secmsg.daemon.audit import record_login, record_logout
from secmsg.daemon.auth import VerifiedCertificate
from secmsg.daemon.commands import Commands
from secmsg.daemon.deadlines import Deadlines
from secmsg.daemon.handshake import Handshake, record_displaced, record_login_refused
from secmsg.daemon.identity import fingerprint
from secmsg.daemon.interfaces import IHandshakeObserver, IPeer, ISessionAvatar
from secmsg.daemon.limits import Limits, address_group, describe_address
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.outbox import Outbox
from secmsg.daemon.pipeline import Pipeline, Strikes, Throttle
from secmsg.daemon.tls import TrustVerdict, release_verifier
from secmsg.daemon.trust import kept_chain
from secmsg.errors import CertificateRefused
from secmsg.rate import RateLimiter
from secmsg.transport import IConnection

log = Logger()

CLOSE_GRACE = 10.0
"""Seconds a closing session gets to take its last line before it is cut."""


@dataclass(frozen=True, slots=True)
class SessionPort:
    """
    What every session of a port shares, held once by the factory rather
    than once by each of the thousands of sessions.

    @ivar rate_limiter: the identities' token buckets, which the admin
        interface draws on too.
    """

    portal: Portal
    commands: Commands
    clock: IReactorTime
    limits: Limits
    rate_limiter: RateLimiter
    metrics: Metrics
    max_line_length: int


@implementer(IHandshakeListener, IHandshakeObserver, IPeer, IPushProducer)
class SessionProtocol(Protocol):
    """
    One client session: handshake, login, then commands and pushes.

    Once logged in the session is a streaming producer for its transport:
    when the peer stops reading and its unsent replies fill the transport's
    buffer, the session stops reading the peer's commands (and answering
    those it has read) until the buffer drains, so that a client cannot make
    the daemon hold unbounded replies.  Messages from others are still
    pushed, and presence announced, up to L{secmsg.daemon.outbox.BACKLOG_LIMIT}.

    A session lives within its L{Limits}: its login must complete within the
    handshake timeout, it is closed after the idle timeout without a line
    from it, when its certificate expires, and after too many bad lines or
    refusals for the rate in a row; each is said to the peer when it can be,
    and recorded in the audit log.

    @ivar address: where the peer connects from, C{host:port}.
    @ivar host: the peer's address without its port, for the per-address limit.
    @ivar avatar: the L{ISessionAvatar} once logged in, else L{None}.
    @ivar certificate: the verified leaf certificate, once the handshake is done.
    @ivar certificate_chain: the verified chain, leaf first.
    @ivar closing: the session is ending; nothing more is sent or read.
    """

    transport: IConnection

    # A daemon holds thousands of idle sessions: slots keep their state out
    # of a dictionary of its own in each (Twisted's attributes stay in one).
    __slots__ = (
        "_cutoff",
        "_deadlines",
        "_handshake",
        "_logout",
        "_lost",
        "_pipeline",
        "_port",
        "_throttle",
        "address",
        "avatar",
        "certificate",
        "certificate_chain",
        "closing",
        "host",
        "outbox",
    )

    def __init__(self, port: SessionPort) -> None:
        self._port = port
        self._cutoff: IDelayedCall | None = None
        # What the connection is until it logs in, made when it arrives.
        self._handshake: Handshake | None = None
        self._deadlines: Deadlines | None = None
        self._logout = None
        # The parts of a logged-in session, made at login.
        self._throttle: Throttle | None = None
        self.outbox: Outbox | None = None
        self._pipeline: Pipeline | None = None
        self.closing = False
        self._lost = False
        self.address = self.host = "?"
        self.avatar: ISessionAvatar | None = None
        self.certificate: x509.Certificate | None = None
        self.certificate_chain: list[x509.Certificate] = []

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.address = describe_address(peer)
        self.host = address_group(str(getattr(peer, "host", self.address)))
        self._handshake = Handshake(
            self,
            self._port.clock,
            self._port.limits.handshake_timeout,
            self._port.metrics,
            self.factory.refusal_records,
        )
        self.factory.session_started(self)

    def displace(self, reason: str) -> None:
        """
        Drop a connection that has not logged in, to make room for a newer
        one.  Nothing can be said before TLS is up, so the peer learns
        nothing; the operator does, within the audit trail's budget.
        """
        if self.factory.refusal_records.anonymous.allow():
            record_displaced(self.address, reason)
        self._handshake.displaced = True
        self._port.metrics.handshake("connection limit")
        self.drop()

    def certificate_refused(self, refusal: CertificateRefused) -> None:
        self._handshake.refused(refusal)

    def certificate_accepted(
        self, chain: list[x509.Certificate], verdict: TrustVerdict
    ) -> None:
        self._handshake.chain, self._handshake.verdict = chain, verdict

    @property
    def _handshake_done(self) -> bool:
        return self._handshake is None or self._handshake.done

    def handshakeCompleted(self) -> None:
        """
        The peer's chain verified: log it in with its certificate, unless
        a reload since then no longer trusts it.
        """
        self._handshake.done = True
        release_verifier(self.transport.getHandle())
        if self.closing:
            return
        self.certificate_chain = self._handshake.chain
        self.certificate = self.certificate_chain[0]
        if not self._handshake.still_trusted(self.certificate_chain, "handshake"):
            return
        login = self._port.portal.login(
            VerifiedCertificate(self.certificate), self, ISessionAvatar
        )
        login.addCallbacks(self._logged_in, self._login_refused)

    def _logged_in(self, result: tuple[object, ISessionAvatar, object]) -> None:
        _, avatar, logout = result
        if self._lost:
            # The peer left while the login was under way.
            logout()
            return
        if not self._handshake.still_trusted(self.certificate_chain, "login"):
            logout()
            return
        refusal = self.factory.admit(self, avatar.identity)
        if refusal is not None:
            logout()
            self.transport.write(refusal)
            self.end()
            return
        self.avatar, self._logout = avatar, logout
        self._port.metrics.handshake("accepted")
        record_login(avatar.identity, avatar.grant, self.certificate, self.address)
        self.certificate_chain = kept_chain(self.certificate_chain)
        self.certificate = self.certificate_chain[0]
        self.transport.write(_greeting(avatar, self._port.rate_limiter))
        self._make_parts()
        self.transport.registerProducer(self, True)
        # A session is judged by every reload from now on, and timed by
        # its deadlines.
        early, self._handshake = self._handshake.logged_in(), None
        self._deadlines = Deadlines(
            self, self._port.clock, self._port.limits.idle_timeout
        )
        self._port.commands.logged_in(self)
        self._receive(early)

    def _make_parts(self) -> None:
        """
        Make what a logged-in session needs before it becomes its
        transport's producer (which may pause it at once): what it reads
        and answers, what it pushes, and whether it reads.  Only now, so
        that connections that never log in cost none of it.
        """
        self._throttle = Throttle(self.transport)
        self.outbox = Outbox(self, self._throttle, self._port.clock)
        self._pipeline = Pipeline(
            self,
            self._port.commands,
            wire.LineFramer(self._port.max_line_length),
            Strikes(self, self._port.rate_limiter, self._port.metrics),
            self.outbox,
            self._port.metrics,
        )

    def _login_refused(self, failure: Failure) -> None:
        if failure.check(UnauthorizedLogin):
            reason = str(failure.value)
        else:
            log.failure("login failed", failure)
            reason = "internal error during login"
        self._port.metrics.handshake("login refused")
        whose = fingerprint(self.certificate)
        if self.factory.refusal_records.holders.allow(f"{whose}: login refused"):
            record_login_refused(self.address, self.certificate, reason)
        self.close(f"login refused: {reason}")

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if self.avatar is not None:
            self._receive(data)
            return
        if not self._handshake.hold(data):
            self.drop()

    def _receive(self, data: bytes) -> None:
        frames = self._pipeline.frame(data)
        self._deadlines.heard(frames)
        self._pipeline.take(frames)

    def pauseProducing(self) -> None:
        """
        The peer is not reading: stop reading and answering its commands.
        """
        self._throttle.pause()

    def resumeProducing(self) -> None:
        """
        The peer has caught up: answer what was read, then read on.
        """
        self._throttle.resume()
        self.outbox.drained()
        self._pipeline.answer_waiting()
        if not self.closing:
            self._throttle.read_on()

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost follows."""
        self.closing = True

    def finish(self) -> None:
        self._pipeline.finishing = True

    def push(self, line: bytes, message_id: int) -> None:
        self.outbox.push(line, message_id)

    def send_waiting(self, lines: Sequence[tuple[int, bytes]]) -> defer.Deferred[bool]:
        return self.outbox.send_waiting(lines)

    def release(self) -> None:
        self.outbox.release()
        self._pipeline.answer_waiting()

    def announce(self, line: bytes) -> None:
        self.outbox.announce(line)

    def close(self, reason: str) -> None:
        self._say_last(wire.push("CLOSED", reason))

    def notice(self, text: str) -> None:
        if not self.closing:
            self.transport.write(wire.push("NOTICE", text))

    def kick(self, by: str, reason: str) -> None:
        self._say_last(wire.push("KICKED", by, reason))

    def _say_last(self, line: bytes) -> None:
        if self.closing:
            return
        if not self._handshake_done:
            # Not authenticated: nothing may be sent, so just hang up.
            self.drop()
            return
        self.transport.write(line)
        self.end()

    def end(self) -> None:
        """
        Close after what was written: leave the hub at once, so that nothing
        more is routed here, and cut the connection if the peer does not
        take its last lines within L{CLOSE_GRACE}.
        """
        self.closing = True
        self._leave_hub()
        if self._throttle is not None:
            self._throttle.stop()
        # Armed first: a transport may report the loss from loseConnection
        # itself, and connectionLost must find the timer to cancel it.
        self._cutoff = self._port.clock.callLater(
            CLOSE_GRACE, self.transport.abortConnection
        )
        self.transport.loseConnection()

    def drop(self) -> None:
        """
        Hang up at once, with no last line: leave the hub and abort.
        """
        self.closing = True
        self._leave_hub()
        self.transport.abortConnection()

    def _leave_hub(self) -> None:
        if self._logout is None:
            return
        logout, self._logout = self._logout, None
        logout()
        record_logout(self.avatar.identity, self.address)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = self._lost = True
        if self.outbox is not None:
            self.outbox.ended()
        if self._cutoff is not None and self._cutoff.active():
            self._cutoff.cancel()
        if self._deadlines is not None:
            self._deadlines.cancel()
        if self.avatar is not None:
            self._leave_hub()
        elif self._handshake is not None:
            self._handshake.lost(reason)
        self.factory.session_ended(self)


_OFFER = format_offer(PROTOCOL_VERSION, CAPABILITIES)
"""What the greeting says this server speaks and offers."""


def _greeting(avatar: ISessionAvatar, rate_limiter: RateLimiter) -> bytes:
    """
    The reply that tells a peer it is logged in, as whom, what the server
    offers (read by a client before anything else), and at what rate.
    """
    grant = avatar.grant
    rate = wire.format_rate(
        grant.rate.per_second,
        grant.rate.burst,
        rate_limiter.available(avatar.identity, grant.rate),
    )
    return wire.reply(
        200,
        f"secmsg {__version__} ready; you are {avatar.identity} "
        f"(roles: {','.join(avatar.roles)}); "
        f"{_OFFER}; {rate}",
    )
