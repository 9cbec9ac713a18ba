"""
The secmsg line protocol on top of an authenticated TLS connection.

The protocol is thin: it frames lines, parses them with L{secmsg.wire},
asks the avatar whether the verb is allowed, hands the command to
L{secmsg.daemon.commands.Commands} and writes the one reply each command gets.
Nothing is written to a peer, nor read from it, before its handshake has
completed and its login succeeded: bytes that arrive before that (under TLS
1.3 a client may send right after its side of the handshake) are held, up
to a bound, and answered after the greeting.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from secmsg import __version__, wire
from secmsg.daemon.audit import RecordBudget, RefusalRecords, RepeatBudget, audit
from secmsg.daemon.auth import VerifiedCertificate
from secmsg.daemon.commands import Commands
from secmsg.daemon.identity import describe_subject, fingerprint
from secmsg.daemon.interfaces import IHandshakeObserver, IPeer, ISessionAvatar
from secmsg.daemon.limits import (
    Limits,
    LoginLimiter,
    LoginPastRate,
    OldestMakesRoom,
    address_group,
    count_down,
)
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.tls import TrustVerdict, refusal_for_handshake_failure
from secmsg.daemon.trust import share_issuers
from secmsg.errors import (
    CertificateRefused,
    CommandError,
    LineTooLong,
    Malformed,
    NotPermitted,
    RateLimited,
    RefusalReason,
    UnknownCommand,
)
from secmsg.rate import RATE_EXEMPT, RateLimiter

log = Logger()

EARLY_DATA_LIMIT = 65536
"""Bytes a peer may send before its login completes; past it, it is dropped."""

BACKLOG_LIMIT = 1 << 20
"""Bytes of messages pushed to a peer that has stopped reading before it is
dropped: a reader that never reads must not make the daemon hold its mail."""

PIPELINE_DEPTH = 64
"""Commands of one session in progress at once: a client may send many
without waiting, and the daemon stops reading it while this many wait for
the store."""

PIPELINE_RESUME = PIPELINE_DEPTH // 2
"""Commands in progress below which a session stopped for a full pipeline
is read again.  Reading again as soon as one reply has gone would stop and
start the transport (two system calls) for every command of a client that
keeps its pipeline full."""

CLOSE_GRACE = 10.0
"""Seconds a closing session gets to take its last line before it is cut."""

BAD_LINES_IN_A_ROW = 10
"""Malformed, unknown or overlong lines in a row after which a session is
closed: a client that has lost track of the protocol, or is probing it."""

REFUSED_FOR_RATE_IN_A_ROW = 100
"""429 replies in a row after which a session is closed: a client that
does not slow down.  A script's pipeline may meet a few dozen at once."""

EXPIRY_WARNING = 300.0
"""Seconds before a certificate expires that its sessions are warned."""

_BAD_LINE = (Malformed, UnknownCommand, LineTooLong)


@dataclass
class _Reply:
    """
    A reply's place in a session's order: its bytes once ready, and whether
    the session ends after it (QUIT).
    """

    verb: str
    finishes: bool
    data: bytes | None = None
    last_words: str | None = None


def _named_verb(frame: bytes | object) -> str:
    """
    The command a line's first word names, upper-cased, or C{"?"}: what a
    line is counted and charged as before it is parsed.  C{QUIT} is named
    only when it stands alone, since leaving is free and a line with more
    in it is not leaving.
    """
    if frame is wire.OVERLONG:
        return "?"
    word, *rest = frame.strip(b" ").split(b" ", 1)
    verb = word.upper().decode("ascii", "replace")
    if verb not in wire.COMMANDS or (verb == "QUIT" and rest):
        return "?"
    return verb


def _is_blank(frame: bytes | object) -> bool:
    return frame is not wire.OVERLONG and not frame.strip(b" \t")


_BLANK_LINE = Malformed("blank line")
"""What a blank line counts as: a line without a command."""


def describe_address(address: IAddress) -> str:
    """
    C{host:port} for IP addresses (C{[host]:port} for IPv6), the
    address's own text otherwise.
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IHandshakeListener, IHandshakeObserver, IPeer, IPushProducer)
class SessionProtocol(Protocol):
    """
    One client session: handshake, login, then commands and pushes.

    Once logged in the session is a streaming producer for its transport:
    when the peer stops reading and its unsent replies fill the transport's
    buffer, the session stops reading the peer's commands (and answering
    those it has read) until the buffer drains, so that a client cannot make
    the daemon hold unbounded replies.  Messages from others are still
    pushed, up to L{BACKLOG_LIMIT}.

    A session lives within its L{Limits}: its login must complete within
    the handshake timeout, it is closed after the idle timeout without a
    line from it, when its certificate expires, and after too many bad
    lines or refusals for the rate in a row; each of these is said to the
    peer when it can be, and recorded in the audit log.

    @ivar address: where the peer connects from, C{host:port}.
    @ivar host: the peer's address without its port, which the
        per-address limit counts.
    @ivar avatar: the L{ISessionAvatar} once logged in, else L{None}.
    @ivar certificate: the verified leaf certificate, once the handshake
        has completed.
    @ivar certificate_chain: the verified chain, leaf first.
    """

    # A daemon holds thousands of idle sessions: slots keep their state out
    # of a dictionary of its own in each (Twisted's attributes stay in one).
    __slots__ = (
        "_answering",
        "_backlog",
        "_bad_lines",
        "_clock",
        "_closing",
        "_commands",
        "_cutoff",
        "_drain_waiters",
        "_dropped_at_connect",
        "_early",
        "_finishing",
        "_framer",
        "_frames",
        "_handshake_done",
        "_held",
        "_held_bytes",
        "_idle",
        "_last_words",
        "_limits",
        "_logout",
        "_lost",
        "_metrics",
        "_paused",
        "_portal",
        "_producing",
        "_rate_limiter",
        "_rate_refusals",
        "_refusal",
        "_replies",
        "_sent_while_held",
        "_throttled",
        "_timers",
        "_verdict",
        "address",
        "avatar",
        "certificate",
        "certificate_chain",
        "host",
    )

    def __init__(
        self,
        portal: Portal,
        commands: Commands,
        clock: IReactorTime,
        max_line_length: int,
        limits: Limits,
        rate_limiter: RateLimiter,
        metrics: Metrics,
    ) -> None:
        self._portal = portal
        self._commands = commands
        self._clock = clock
        self._limits = limits
        self._rate_limiter = rate_limiter
        self._metrics = metrics
        self._framer = wire.LineFramer(max_line_length)
        self._frames: deque[bytes | object] = deque()
        self._paused = False
        self._producing = False
        self._backlog = 0
        self._cutoff: IDelayedCall | None = None
        self._early = bytearray()
        self._timers: list[IDelayedCall] = []
        self._dropped_at_connect = False
        self._idle: IDelayedCall | None = None
        self._bad_lines = 0
        self._rate_refusals = 0
        self._last_words: str | None = None
        self._refusal: CertificateRefused | None = None
        self._verdict: TrustVerdict | None = None
        self._handshake_done = False
        self._logout = None
        self._replies: deque[_Reply] = deque()
        self._answering = False
        self._throttled = False
        # Messages pushed before the session has been sent what waited for
        # it are held back, so that nothing newer overtakes the older.
        self._held: list[tuple[int, bytes]] | None = []
        self._held_bytes = 0
        self._sent_while_held: set[int] = set()
        self._drain_waiters: list[defer.Deferred[bool]] = []
        self._finishing = False
        self._closing = False
        self._lost = False
        self.address = self.host = "?"
        self.avatar: ISessionAvatar | None = None
        self.certificate: x509.Certificate | None = None
        self.certificate_chain: list[x509.Certificate] = []

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.address = describe_address(peer)
        self.host = address_group(str(getattr(peer, "host", self.address)))
        self.factory.session_started(self)
        self._after(self._limits.handshake_timeout, self._handshake_too_slow)

    def displace(self, reason: str) -> None:
        """
        Drop a connection that has not logged in, to make room for a newer
        one.  Nothing can be said before TLS is up, so the peer learns
        nothing; the operator does, within the audit trail's budget.
        """
        if self.factory.refusal_records.anonymous.allow():
            audit(
                "limit_reached",
                "dropped {peer} before it logged in: {reason}",
                LogLevel.warn,
                peer=self.address,
                reason=reason,
            )
        self._dropped_at_connect = True
        self._metrics.handshake("connection limit")
        self._drop()

    def _after(self, seconds: float, call: Callable[[], None]) -> IDelayedCall:
        """
        Call C{call} in C{seconds}, unless the connection has ended.
        """
        timer = self._clock.callLater(seconds, call)
        self._timers.append(timer)
        return timer

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []

    def _handshake_too_slow(self) -> None:
        if self._handshake_done or self._closing:
            return
        self._refusal = CertificateRefused(
            RefusalReason.HANDSHAKE_FAILED,
            detail=f"not completed within {self._limits.handshake_timeout:g} s",
        )
        self._drop()

    def certificate_refused(self, refusal: CertificateRefused) -> None:
        if self._refusal is None:
            self._refusal = refusal

    def certificate_accepted(self, verdict: TrustVerdict) -> None:
        self._verdict = verdict

    def handshakeCompleted(self) -> None:
        """
        The peer's chain verified: log it in with its certificate, unless
        a reload since then no longer trusts it.
        """
        self._handshake_done = True
        if self._closing:
            return
        self.certificate_chain = share_issuers(
            self.transport.getHandle().get_verified_chain(as_cryptography=True)
        )
        self.certificate = self.certificate_chain[0]
        if not self._still_trusted("handshake"):
            return
        login = self._portal.login(
            VerifiedCertificate(self.certificate), self, ISessionAvatar
        )
        login.addCallbacks(self._logged_in, self._login_refused)

    def _logged_in(self, result: tuple[object, ISessionAvatar, object]) -> None:
        _, avatar, logout = result
        if self._lost:
            # The peer left while the login was under way.
            logout()
            return
        if not self._still_trusted("login"):
            logout()
            return
        # A session is judged by every reload from now on.
        self._verdict = None
        too_soon = self.factory.login_too_soon(avatar.identity, self.host)
        if too_soon is not None:
            logout()
            self._refuse_login_for_rate(avatar.identity, too_soon)
            return
        refusal = self.factory.session_admitted(self, avatar.identity)
        if refusal is not None:
            logout()
            self._metrics.handshake("session limit")
            audit(
                "limit_reached",
                "refused a session of {identity} from {peer}: {reason}",
                LogLevel.warn,
                identity=avatar.identity,
                peer=self.address,
                reason=refusal,
            )
            self.transport.write(wire.reply(503, refusal))
            self._end()
            return
        self.avatar, self._logout = avatar, logout
        self._metrics.handshake("accepted")
        grant = avatar.grant
        audit(
            "login",
            "login {identity} (roles: {roles}) from {peer}, certificate serial "
            "{serial}",
            identity=avatar.identity,
            roles=",".join(grant.roles),
            granted_by=grant.granted_by,
            peer=self.address,
            subject=describe_subject(self.certificate),
            serial=f"{self.certificate.serial_number:x}",
            fingerprint=fingerprint(self.certificate),
        )
        rate = wire.format_rate(
            grant.rate.per_second,
            grant.rate.burst,
            self._rate_limiter.available(avatar.identity, grant.rate),
        )
        self.transport.write(
            wire.reply(
                200,
                f"secmsg {__version__} ready; you are {avatar.identity} "
                f"(roles: {','.join(avatar.roles)}); {rate}",
            )
        )
        self.transport.registerProducer(self, True)
        self._producing = True
        # Logged in: the handshake timeout has nothing left to watch.
        self._cancel_timers()
        self._idle = self._after(self._limits.idle_timeout, self._idle_too_long)
        self._watch_expiry()
        self._commands.logged_in(self)
        early, self._early = bytes(self._early), bytearray()
        self._receive(early)

    def _refuse_login_for_rate(self, identity: str, refusal: LoginPastRate) -> None:
        """
        Refuse a login past its identity's or its address's rate, saying so
        to the peer, and to the audit trail once a minute with a count.
        """
        self._metrics.handshake("login rate")
        if self.factory.login_records.allow(refusal.whose):
            audit(
                "login_rate_limited",
                "refused a login of {identity} from {peer}: {reason}",
                LogLevel.warn,
                identity=identity,
                peer=self.address,
                reason=refusal.text,
            )
        self.transport.write(wire.reply(429, refusal.text))
        self._end()

    def _still_trusted(self, step: str) -> bool:
        """
        Judge the chain again by the trust in force, which a reload may
        have changed since the verify callback judged it; refuse it, saying
        why as a reload says it to a live session, if it no longer stands.
        """
        if self._verdict is None:
            return True
        refusal = self._verdict.again(self.certificate_chain)
        if refusal is None:
            return True
        self._metrics.handshake(refusal.reason.value)
        audit(
            "handshake_refused",
            "refused {peer} at its {step}, after a reload: subject {subject}: {reason}",
            LogLevel.warn,
            peer=self.address,
            step=step,
            subject=refusal.subject,
            reason=refusal.describe(),
        )
        self.close(refusal.reason.value)
        return False

    def _watch_expiry(self) -> None:
        """
        End the session when the first certificate of its chain expires,
        and warn it L{EXPIRY_WARNING} seconds before: one timer at a time,
        the warning arming the end, since every idle session holds them.
        """
        remaining = self._expires().timestamp() - self._clock.seconds()
        if remaining > EXPIRY_WARNING:
            self._after(remaining - EXPIRY_WARNING, self._warn_of_expiry)
        else:
            self._after(max(0.0, remaining), self._expired)

    def _expires(self) -> datetime:
        return min(c.not_valid_after_utc for c in self.certificate_chain)

    def _warn_of_expiry(self) -> None:
        expires = self._expires()
        self.notice(
            f"your certificate expires at {wire.format_time(expires)}; "
            "this session ends then; reconnect with a renewed one"
        )
        self._after(
            max(0.0, expires.timestamp() - self._clock.seconds()), self._expired
        )

    def _expired(self) -> None:
        self._close_for("certificate expired")

    def _idle_too_long(self) -> None:
        self._close_for(f"idle for {self._limits.idle_timeout:g} s")

    def _close_for(self, reason: str) -> None:
        """
        Close a session for a reason of the daemon's own, saying so to the
        peer and the audit log.
        """
        if self._closing:
            return
        audit(
            "session_closed",
            "closing {identity} from {peer}: {reason}",
            identity=self.avatar.identity,
            peer=self.address,
            reason=reason,
        )
        self.close(reason)

    def _login_refused(self, failure: Failure) -> None:
        if failure.check(UnauthorizedLogin):
            reason = str(failure.value)
        else:
            log.failure("login failed", failure)
            reason = "internal error during login"
        self._metrics.handshake("login refused")
        whose = fingerprint(self.certificate)
        if self.factory.refusal_records.holders.allow(f"{whose}: login refused"):
            audit(
                "login_refused",
                "refused login from {peer}: subject {subject}: {reason}",
                LogLevel.warn,
                peer=self.address,
                subject=describe_subject(self.certificate),
                serial=f"{self.certificate.serial_number:x}",
                fingerprint=whose,
                reason=reason,
            )
        self.close(f"login refused: {reason}")

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self.avatar is not None:
            self._receive(data)
            return
        self._early += data
        if len(self._early) > EARLY_DATA_LIMIT:
            self._refusal = CertificateRefused(
                RefusalReason.HANDSHAKE_FAILED,
                detail=f"more than {EARLY_DATA_LIMIT} bytes before login",
            )
            self._drop()

    def _receive(self, data: bytes) -> None:
        frames = self._framer.feed(data)
        idle = self._idle
        # Blank lines do not keep a session from being idle.
        if (
            idle is not None
            and idle.active()
            and not all(_is_blank(frame) for frame in frames)
        ):
            idle.reset(self._limits.idle_timeout)
        self._frames.extend(frames)
        self._answer_waiting()

    def _answer_waiting(self) -> None:
        """
        Answer the lines read, in order, while the peer reads its replies
        and its pipeline of unanswered commands has room, and once what
        waited for it at login has been sent: a script that sends one
        command and leaves at its reply must not leave before its mail.
        """
        if self._answering:
            # A reply settled while a line was being answered; the loop
            # below goes on by itself.
            return
        self._answering = True
        try:
            while (
                self._frames
                and not self._paused
                and not self._closing
                and not self._finishing
                and self._held is None
                and len(self._replies) < PIPELINE_DEPTH
            ):
                self._answer(self._frames.popleft())
        finally:
            self._answering = False
        self._throttle()

    def _throttle(self) -> None:
        """
        Stop reading the peer while its pipeline is full, or while it is
        being sent what waited for it, so that a client cannot queue
        unbounded work behind a slow store; read on once that is over and
        the pipeline has drained below L{PIPELINE_RESUME}.
        """
        if self._closing:
            return
        limit = PIPELINE_RESUME if self._throttled else PIPELINE_DEPTH
        full = len(self._replies) >= limit or self._held is not None
        if full and not self._throttled:
            self._throttled = True
            self.transport.pauseProducing()
        elif not full and self._throttled:
            self._throttled = False
            if not self._paused and not self._closing:
                self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        """
        The peer is not reading: stop reading and answering its commands.
        """
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        The peer has caught up: answer what was read, then read on.
        """
        self._paused = False
        self._backlog = 0
        self._wake_drain_waiters(True)
        self._answer_waiting()
        if not self._paused and not self._closing and not self._throttled:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The connection is going away; connectionLost follows.
        """
        self._closing = True

    def _answer(self, frame: bytes | object) -> None:
        """
        Queue the one reply a framed line gets (a blank line gets none); it
        is written once it and every reply before it are ready.
        """
        if _is_blank(frame):
            self._answer_blank()
            return
        verb = _named_verb(frame)
        try:
            # Every line costs a token, a bad one too, before it is looked
            # at: refusals must not be had faster than answers.
            self._spend_token(verb)
            if frame is wire.OVERLONG:
                raise wire.line_too_long(self._framer.max_length)
            verb, rest = wire.split_verb(wire.decode_line(frame))
            self.avatar.authorize(verb)
            response = self._commands.run(self, verb, wire.parse_arguments(verb, rest))
        except Exception:  # noqa: BLE001 -- one bad command must not end the daemon
            failure = Failure()
            self._count_strikes(failure.value)
            response = self._failed(failure, verb)
        else:
            if verb not in RATE_EXEMPT:
                # ACK and QUIT cost nothing, so they wipe no slate clean.
                self._bad_lines = self._rate_refusals = 0
        entry = _Reply(verb, self._finishing, last_words=self._last_words)
        self._replies.append(entry)
        if isinstance(response, defer.Deferred):
            response.addErrback(self._failed, verb)
            response.addCallback(self._settle, entry)
        else:
            self._settle(response, entry)

    def _answer_blank(self) -> None:
        """
        A blank line gets no reply, as a telnet user's stray Enter deserves,
        but it costs a token as any line does and counts as a bad line:
        a flood of them ends the session, not the daemon's time for others.
        """
        try:
            self._spend_token("?")
        except RateLimited as refusal:
            self._count_strikes(refusal)
        else:
            self._count_strikes(_BLANK_LINE)
        if self._finishing:
            # The CLOSED the strike earns goes after the replies before it.
            entry = _Reply("?", True, last_words=self._last_words)
            self._replies.append(entry)
            self._settle(b"", entry)

    def _spend_token(self, verb: str) -> None:
        """
        Take one of the identity's tokens for a line whose first word is
        C{verb} (C{"?"} if it names no command): from its bucket of
        acknowledgements for C{ACK}, which a client sends for every message
        it is shown, and from its bucket of commands for anything else but
        C{QUIT}.

        @raise RateLimited: there is none left; the reply says when there
            will be.
        """
        avatar = self.avatar
        wait = self._rate_limiter.charge(avatar.identity, verb, avatar.grant.rate)
        if wait:
            raise RateLimited(max(1, math.ceil(wait * 1000)))

    def _count_strikes(self, error: BaseException) -> None:
        """
        Count bad lines and refusals for the rate in a row; past their
        bounds, the session ends after this reply, with the reason.
        """
        if isinstance(error, RateLimited):
            self._rate_refusals += 1
            self._bad_lines = 0
        elif isinstance(error, _BAD_LINE):
            self._bad_lines += 1
            self._rate_refusals = 0
        else:
            self._bad_lines = self._rate_refusals = 0
        if self._bad_lines >= BAD_LINES_IN_A_ROW:
            reason = f"{BAD_LINES_IN_A_ROW} bad lines in a row"
        elif self._rate_refusals >= REFUSED_FOR_RATE_IN_A_ROW:
            reason = f"{REFUSED_FOR_RATE_IN_A_ROW} commands in a row past the rate"
        else:
            return
        audit(
            "session_closed",
            "closing {identity} from {peer}: {reason}",
            LogLevel.warn,
            identity=self.avatar.identity,
            peer=self.address,
            reason=reason,
        )
        self._finishing = True
        self._last_words = reason

    def _failed(self, failure: Failure, verb: str) -> bytes:
        """
        The reply to a command that failed: its error's, or 500 for a fault
        of ours, which is logged.
        """
        if isinstance(failure.value, CommandError):
            self._log_refusal(verb, failure.value)
            return wire.reply(failure.value.code, failure.value.text)
        log.failure("internal error answering {verb}", failure, verb=verb)
        return wire.reply(500, "internal error")

    def _settle(self, response: bytes, entry: _Reply) -> None:
        entry.data = response
        while self._replies and self._replies[0].data is not None:
            ready = self._replies.popleft()
            if self._closing:
                self._replies.clear()
                return
            if self._paused and self._over_backlog(len(ready.data), "its replies"):
                return
            if ready.data:
                self.transport.write(ready.data)
                self._metrics.command(ready.verb, ready.data[:3].decode("ascii"))
            if ready.finishes:
                if ready.last_words is not None:
                    self.transport.write(wire.push("CLOSED", ready.last_words))
                self._end()
                return
        self._answer_waiting()

    def _log_refusal(self, verb: str, error: CommandError) -> None:
        identity = self.avatar.identity
        if isinstance(error, NotPermitted):
            audit(
                "denied",
                "denied {verb} to {identity}: {rule}",
                LogLevel.warn,
                identity=identity,
                peer=self.address,
                verb=verb,
                rule=error.rule,
            )
        elif isinstance(error, RateLimited):
            self._metrics.rate_limited(verb)
            if self._rate_refusals > 1:
                # One record for a run of them; the run's end is recorded
                # if it closes the session.
                return
            audit(
                "rate_limited",
                "refused {verb} from {identity} for the rate; retry in {retry_ms} ms",
                identity=identity,
                peer=self.address,
                verb=verb,
                retry_ms=error.retry_ms,
            )
        elif self._bad_lines <= 1:
            # The first of a run of bad lines is worth a line in the log;
            # the rest would only let a client fill it.
            log.info(
                "refused {verb} from {identity}: {code} {text}",
                verb=verb,
                identity=identity,
                code=error.code,
                text=error.text,
            )

    def finish(self) -> None:
        self._finishing = True

    def push(self, line: bytes, message_id: int) -> None:
        if self._held is not None:
            self._held.append((message_id, line))
            self._held_bytes += len(line)
            if self._held_bytes > BACKLOG_LIMIT:
                self._drop_overloaded(
                    "new messages came while its waiting ones were being sent"
                )
            return
        self._push_now(line)

    def send_waiting(self, lines: Sequence[tuple[int, bytes]]) -> defer.Deferred[bool]:
        if self._closing:
            return defer.succeed(False)
        for message_id, line in lines:
            self._sent_while_held.add(message_id)
            self.transport.write(line)
        if not self._paused:
            return defer.succeed(True)
        drained: defer.Deferred[bool] = defer.Deferred()
        self._drain_waiters.append(drained)
        return drained

    def release(self) -> None:
        held, self._held = self._held or [], None
        sent, self._sent_while_held = self._sent_while_held, set()
        for message_id, line in held:
            if message_id not in sent:
                self._push_now(line)
        self._answer_waiting()

    def _wake_drain_waiters(self, open_: bool) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(open_)

    def _push_now(self, line: bytes) -> None:
        if self._closing:
            return
        if self._paused and self._over_backlog(len(line), "messages"):
            return
        self.transport.write(line)

    def _over_backlog(self, size: int, what: str) -> bool:
        """
        Count bytes written to a peer that has stopped reading; past
        L{BACKLOG_LIMIT}, drop it and say so.
        """
        self._backlog += size
        if self._backlog <= BACKLOG_LIMIT:
            return False
        self._drop_overloaded(f"it stopped reading, and {what} were waiting for it")
        return True

    def _drop_overloaded(self, why: str) -> None:
        """
        Drop a session that would make the daemon hold more than
        L{BACKLOG_LIMIT} bytes for it, and say why.
        """
        audit(
            "session_closed",
            "dropped {identity} from {peer}: {reason}",
            LogLevel.warn,
            identity=self.avatar.identity,
            peer=self.address,
            reason=f"more than {BACKLOG_LIMIT} bytes held for it: {why}",
        )
        self._drop()

    def close(self, reason: str) -> None:
        self._say_last(wire.push("CLOSED", reason))

    def notice(self, text: str) -> None:
        if not self._closing:
            self.transport.write(wire.push("NOTICE", text))

    def kick(self, by: str, reason: str) -> None:
        self._say_last(wire.push("KICKED", by, reason))

    def _say_last(self, line: bytes) -> None:
        if self._closing:
            return
        if not self._handshake_done:
            # Not authenticated: nothing may be sent, so just hang up.
            self._drop()
            return
        self.transport.write(line)
        self._end()

    def _end(self) -> None:
        """
        Close after what was written: leave the hub at once, so that nothing
        more is routed here, and cut the connection if the peer does not
        take its last lines within L{CLOSE_GRACE}.
        """
        self._closing = True
        self._leave_hub()
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        if self._paused or self._throttled:
            # Read again, so that the peer's own close is seen and the
            # connection ends without waiting out the grace period.
            self.transport.resumeProducing()
        # Armed first: a transport may report the loss from loseConnection
        # itself, and connectionLost must find the timer to cancel it.
        self._cutoff = self._clock.callLater(
            CLOSE_GRACE, self.transport.abortConnection
        )
        self.transport.loseConnection()

    def _drop(self) -> None:
        """
        Hang up at once, with no last line: leave the hub and abort.
        """
        self._closing = True
        self._leave_hub()
        self.transport.abortConnection()

    def _leave_hub(self) -> None:
        if self._logout is None:
            return
        logout, self._logout = self._logout, None
        logout()
        audit(
            "logout",
            "logout {identity} from {peer}",
            identity=self.avatar.identity,
            peer=self.address,
        )

    def connectionLost(self, reason: Failure) -> None:
        self._closing = self._lost = True
        self._wake_drain_waiters(False)
        if self._cutoff is not None and self._cutoff.active():
            self._cutoff.cancel()
        self._cancel_timers()
        if self.avatar is not None:
            self._leave_hub()
        elif not self._handshake_done and not self._dropped_at_connect:
            self._record_refusal(self._refusal or refusal_for_handshake_failure(reason))
        self.factory.session_ended(self)

    def _record_refusal(self, refusal: CertificateRefused) -> None:
        self._metrics.handshake(refusal.reason.value)
        if self.factory.refusal_records.allow(refusal):
            audit(
                "handshake_refused",
                "refused handshake from {peer}: subject {subject}: {reason}",
                peer=self.address,
                subject=refusal.subject or "(none)",
                reason=refusal.describe(),
            )


class SessionFactory(Factory):
    """
    Builds a L{SessionProtocol} for each connection, all sharing one portal,
    one set of command handlers and one rate limiter, and counts
    connections and sessions against the L{Limits}.

    Connections not yet logged in have budgets of their own, per address
    and in all, apart from the sessions' (L{OldestMakesRoom}): past one,
    the oldest connection not logged in is dropped to make room, so that
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
        max_line_length: int = wire.MAX_LINE_LENGTH,
    ) -> None:
        self._portal = portal
        self._commands = commands
        self._clock = clock
        self._limits = limits
        self._metrics = metrics
        self._max_line_length = max_line_length
        self.rate_limiter = RateLimiter(clock)
        self.refusal_records = RefusalRecords(
            RecordBudget(clock, "handshake_refused"),
            RepeatBudget(clock, "handshake_refused"),
        )
        self.login_records = RepeatBudget(clock, "login_rate_limited")
        self._logins = LoginLimiter(clock, limits)
        self._sessions: set[SessionProtocol] = set()
        self._not_logged_in: OldestMakesRoom[SessionProtocol] = OldestMakesRoom(
            limits.max_handshakes_per_address, limits.max_handshakes
        )
        self._admitted: set[SessionProtocol] = set()
        self._admitted_from: Counter[str] = Counter()
        self._admitted_as: Counter[str] = Counter()
        self._waiting: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: IAddress) -> SessionProtocol:
        protocol = SessionProtocol(
            self._portal,
            self._commands,
            self._clock,
            self._max_line_length,
            self._limits,
            self.rate_limiter,
            self._metrics,
        )
        protocol.factory = self
        return protocol

    @property
    def session_count(self) -> int:
        """
        How many sessions are logged in now.
        """
        return len(self._admitted)

    def session_started(self, protocol: SessionProtocol) -> None:
        """
        Track a connection until it ends; past the bounds on connections
        not logged in, the oldest of its address, or of all, makes room.
        """
        self._sessions.add(protocol)
        displaced = self._not_logged_in.add(protocol, protocol.host)
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

    def login_too_soon(self, identity: str, host: str) -> LoginPastRate | None:
        """
        Spend a login of C{identity}'s and of C{host}'s, if they have one.

        @return: why not, or L{None}.
        """
        return self._logins.take(identity, host)

    def session_admitted(self, protocol: SessionProtocol, identity: str) -> str | None:
        """
        Count a session that has logged in, unless it is past a limit.

        @return: why it is refused (the text of its C{503}), or L{None}.
        """
        limits = self._limits
        if len(self._admitted) >= limits.max_sessions:
            return f"too many sessions on this server (limit {limits.max_sessions})"
        if self._admitted_as[identity] >= limits.max_per_identity:
            return f"too many sessions for {identity} (limit {limits.max_per_identity})"
        if self._admitted_from[protocol.host] >= limits.max_per_address:
            return (
                f"too many sessions from {protocol.host} "
                f"(limit {limits.max_per_address})"
            )
        self._not_logged_in.discard(protocol)
        self._admitted.add(protocol)
        self._admitted_from[protocol.host] += 1
        self._admitted_as[identity] += 1
        return None

    def session_ended(self, protocol: SessionProtocol) -> None:
        """
        Forget a connection; wake L{close_all} once none is left.
        """
        self._sessions.discard(protocol)
        self._not_logged_in.discard(protocol)
        if protocol in self._admitted:
            self._admitted.discard(protocol)
            count_down(self._admitted_from, protocol.host)
            count_down(self._admitted_as, protocol.avatar.identity)
        if not self._sessions:
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(None)

    def close_all(self, reason: str) -> defer.Deferred[None]:
        """
        Close every connection, telling logged-in peers C{CLOSED <reason>};
        the Deferred fires once all of them are gone.
        """
        if not self._sessions:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(waiter)
        for protocol in list(self._sessions):
            protocol.close(reason)
        return waiter
