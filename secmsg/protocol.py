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

from cryptography import x509
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IHandshakeListener
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


def describe_address(address: IAddress) -> str:
    """
    C{host:port} for IP addresses, the address's own text otherwise.
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


@implementer(IHandshakeListener, IHandshakeObserver, IPeer)
class SessionProtocol(Protocol):
    """
    One client session: handshake, login, then commands and pushes.

    @ivar avatar: the L{ISessionAvatar} once logged in, else L{None}.
    @ivar certificate: the verified leaf certificate, once the handshake
        has completed.
    @ivar certificate_chain: the verified chain, leaf first.
    """

    def __init__(
        self, portal: Portal, commands: Commands, max_line_length: int
    ) -> None:
        self._portal = portal
        self._commands = commands
        self._framer = wire.LineFramer(max_line_length)
        self._early = bytearray()
        self._peer = "?"
        self._refusal: CertificateRefused | None = None
        self._handshake_done = False
        self._logout = None
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
            self._closing = True
            self.transport.abortConnection()

    def _receive(self, data: bytes) -> None:
        for frame in self._framer.feed(data):
            if self._closing:
                return
            self._answer(frame)

    def _answer(self, frame: bytes | object) -> None:
        """
        Write the one reply a framed line gets (a blank line gets none).
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
        except CommandError as error:
            self._log_refusal(verb, error)
            response = wire.reply(error.code, error.text)
        except Exception:  # noqa: BLE001 -- one bad command must not end the daemon
            log.failure("internal error answering {verb}", verb=verb)
            response = wire.reply(500, "internal error")
        if self._closing:
            return
        self.transport.write(response)
        if self._finishing:
            self._end()

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

    def push(self, line: bytes) -> None:
        if not self._closing:
            self.transport.write(line)

    def close(self, reason: str) -> None:
        self._say_last(wire.push("CLOSED", reason))

    def kick(self, by: str, reason: str) -> None:
        self._say_last(wire.push("KICKED", by, reason))

    def _say_last(self, line: bytes) -> None:
        if self._closing:
            return
        if not self._handshake_done:
            # Not authenticated: nothing may be sent, so just hang up.
            self._closing = True
            self.transport.abortConnection()
            return
        self.transport.write(line)
        self._end()

    def _end(self) -> None:
        self._closing = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._closing = self._lost = True
        if self._logout is not None:
            self._logout()
            log.info(
                "logout {identity} from {peer}",
                identity=self.avatar.identity,
                peer=self._peer,
            )
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

    def __init__(
        self,
        portal: Portal,
        commands: Commands,
        max_line_length: int = wire.MAX_LINE_LENGTH,
    ) -> None:
        self._portal = portal
        self._commands = commands
        self._max_line_length = max_line_length
        self._sessions: set[SessionProtocol] = set()
        self._waiting: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: IAddress) -> SessionProtocol:
        protocol = SessionProtocol(self._portal, self._commands, self._max_line_length)
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
