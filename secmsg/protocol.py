"""
The secmsg line protocol on top of an authenticated TLS connection.

The protocol is thin: it frames lines, parses them with L{secmsg.wire},
asks the avatar whether the verb is allowed, hands the command to
L{secmsg.commands.Commands} and writes the one reply each command gets.
Nothing is written to a peer, nor read from it, before its handshake has
completed and its login succeeded: bytes that arrive before that (under TLS
1.3 a client may send right after its side of the handshake) are held, up
to a bound, and answered after the greeting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

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
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from secmsg import __version__, wire
from secmsg.auth import VerifiedCertificate
from secmsg.commands import Commands
from secmsg.errors import CertificateRefused, CommandError, NotPermitted
from secmsg.identity import describe_subject
from secmsg.interfaces import IHandshakeObserver, IPeer, ISessionAvatar
from secmsg.tls import refusal_for_handshake_failure

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

CLOSE_GRACE = 10.0
"""Seconds a closing session gets to take its last line before it is cut."""


@dataclass
class _Reply:
    """
    A reply's place in a session's order: its bytes once ready, and whether
    the session ends after it (QUIT).
    """

    finishes: bool
    data: bytes | None = None


def describe_address(address: IAddress) -> str:
    """
    C{host:port} for IP addresses, the address's own text otherwise.
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


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

    @ivar avatar: the L{ISessionAvatar} once logged in, else L{None}.
    @ivar certificate: the verified leaf certificate, once the handshake
        has completed.
    @ivar certificate_chain: the verified chain, leaf first.
    """

    def __init__(
        self,
        portal: Portal,
        commands: Commands,
        clock: IReactorTime,
        max_line_length: int,
    ) -> None:
        self._portal = portal
        self._commands = commands
        self._clock = clock
        self._framer = wire.LineFramer(max_line_length)
        self._frames: deque[bytes | object] = deque()
        self._paused = False
        self._producing = False
        self._backlog = 0
        self._cutoff: IDelayedCall | None = None
        self._early = bytearray()
        self._peer = "?"
        self._refusal: CertificateRefused | None = None
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
        self.avatar: ISessionAvatar | None = None
        self.certificate: x509.Certificate | None = None
        self.certificate_chain: list[x509.Certificate] = []

    def connectionMade(self) -> None:
        self._peer = describe_address(self.transport.getPeer())
        self.factory.session_started(self)

    def certificate_refused(self, refusal: CertificateRefused) -> None:
        if self._refusal is None:
            self._refusal = refusal

    def handshakeCompleted(self) -> None:
        """
        The peer's chain verified: log it in with its certificate.
        """
        self._handshake_done = True
        if self._closing:
            return
        self.certificate_chain = self.transport.getHandle().get_verified_chain(
            as_cryptography=True
        )
        self.certificate = self.certificate_chain[0]
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
        self.avatar, self._logout = avatar, logout
        log.info(
            "login {identity} (roles: {roles}) from {peer}, certificate serial "
            "{serial:x}",
            identity=avatar.identity,
            roles=",".join(avatar.roles),
            peer=self._peer,
            serial=self.certificate.serial_number,
        )
        self.transport.write(
            wire.reply(
                200,
                f"secmsg {__version__} ready; you are {avatar.identity} "
                f"(roles: {','.join(avatar.roles)})",
            )
        )
        self.transport.registerProducer(self, True)
        self._producing = True
        self._commands.logged_in(self)
        early, self._early = bytes(self._early), bytearray()
        self._receive(early)

    def _login_refused(self, failure: Failure) -> None:
        if failure.check(UnauthorizedLogin):
            reason = str(failure.value)
        else:
            log.failure("login failed", failure)
            reason = "internal error during login"
        log.warn(
            "refused login from {peer}: subject {subject}: {reason}",
            peer=self._peer,
            subject=describe_subject(self.certificate),
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
            log.warn(
                "dropped {peer}: more than {limit} bytes before login",
                peer=self._peer,
                limit=EARLY_DATA_LIMIT,
            )
            self._drop()

    def _receive(self, data: bytes) -> None:
        self._frames.extend(self._framer.feed(data))
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
        unbounded work behind a slow store; read on once that is over.
        """
        if self._closing:
            return
        full = len(self._replies) >= PIPELINE_DEPTH or self._held is not None
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
        verb = "?"
        try:
            if frame is wire.OVERLONG:
                raise wire.line_too_long(self._framer.max_length)
            text = wire.decode_line(frame)
            if wire.is_blank(text):
                return
            verb, rest = wire.split_verb(text)
            self.avatar.authorize(verb)
            response = self._commands.run(self, verb, wire.parse_arguments(verb, rest))
        except Exception:  # noqa: BLE001 -- one bad command must not end the daemon
            response = self._failed(Failure(), verb)
        entry = _Reply(finishes=self._finishing)
        self._replies.append(entry)
        if isinstance(response, defer.Deferred):
            response.addErrback(self._failed, verb)
            response.addCallback(self._settle, entry)
        else:
            self._settle(response, entry)

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
            self.transport.write(ready.data)
            if ready.finishes:
                self._end()
                return
        self._answer_waiting()

    def _log_refusal(self, verb: str, error: CommandError) -> None:
        identity = self.avatar.identity
        if isinstance(error, NotPermitted):
            log.warn(
                "denied {verb} to {identity}: {rule}",
                verb=verb,
                identity=identity,
                rule=error.rule,
            )
        else:
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
        log.warn(
            "dropped {identity} from {peer}: more than {limit} bytes held for it: "
            "{why}",
            identity=self.avatar.identity,
            peer=self._peer,
            limit=BACKLOG_LIMIT,
            why=why,
        )
        self._drop()

    def close(self, reason: str) -> None:
        self._say_last(wire.push("CLOSED", reason))

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
        log.info(
            "logout {identity} from {peer}",
            identity=self.avatar.identity,
            peer=self._peer,
        )

    def connectionLost(self, reason: Failure) -> None:
        self._closing = self._lost = True
        self._wake_drain_waiters(False)
        if self._cutoff is not None and self._cutoff.active():
            self._cutoff.cancel()
        if self.avatar is not None:
            self._leave_hub()
        elif not self._handshake_done:
            refusal = self._refusal or refusal_for_handshake_failure(reason)
            log.info(
                "refused handshake from {peer}: subject {subject}: {reason}",
                peer=self._peer,
                subject=refusal.subject or "(none)",
                reason=refusal.describe(),
            )
        self.factory.session_ended(self)


class SessionFactory(Factory):
    """
    Builds a L{SessionProtocol} for each connection, all sharing one portal
    and one set of command handlers.
    """

    noisy = False

    def __init__(
        self,
        portal: Portal,
        commands: Commands,
        clock: IReactorTime,
        max_line_length: int = wire.MAX_LINE_LENGTH,
    ) -> None:
        self._portal = portal
        self._commands = commands
        self._clock = clock
        self._max_line_length = max_line_length
        self._sessions: set[SessionProtocol] = set()
        self._waiting: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: IAddress) -> SessionProtocol:
        protocol = SessionProtocol(
            self._portal, self._commands, self._clock, self._max_line_length
        )
        protocol.factory = self
        return protocol

    def session_started(self, protocol: SessionProtocol) -> None:
        """
        Track a connection until it ends.
        """
        self._sessions.add(protocol)

    def session_ended(self, protocol: SessionProtocol) -> None:
        """
        Forget a connection; wake L{close_all} once none is left.
        """
        self._sessions.discard(protocol)
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
