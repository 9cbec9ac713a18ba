"""
The client's side of the secmsg line protocol, for the terminal, the
scripted mode and C{secmsg send} alike.

L{ClientProtocol} waits for the greeting, matches each reply to the
command it answers (replies come in order), hands pushes to whoever shows
them, and, when the connection ends, says why in one L{SessionEnded}: our
own QUIT, a KICKED or CLOSED from the server, a certificate the server
refused, or a lost connection.  It never shows anything itself.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from secmsg import wire
from secmsg.capabilities import Offer, parse_offer
from secmsg.client.tls import CaOrigin, describe_tls_failure
from secmsg.errors import RefusalReason, SecmsgError
from secmsg.transport import IConnection

GREETING_TIMEOUT = 30.0
"""Seconds to wait for the greeting once connected; a server that says
nothing for that long is not one we can talk to."""

DEFAULT_PORT = 7443
"""The port a daemon's line protocol listens on unless told otherwise."""

QUIET_AFTER_HANDSHAKE = 3.0
"""Seconds of silence after the TLS handshake before the client asks, as
HTTP would, what answered: a secmsg daemon greets within a round trip of
the handshake, while an HTTPS server (the daemon's admin port, on the same
certificates) waits to be asked."""

HTTP_PROBE = b"HEAD / HTTP/1.0\r\n\r\n"
"""What the client asks a silent server: an HTTP server answers it with a
status line; a secmsg daemon would answer it with one error reply."""

PROBE_WAIT = 2.0
"""Seconds to wait for an answer to L{HTTP_PROBE}."""

CLOSE_GRACE = 5.0
"""Seconds, at most, that a closing session waits for the server to close
TLS in turn before the client drops the connection: a server that keeps it
open without a word must not keep the client from exiting."""

_NOT_HERE = (
    f"The messaging port is another ({DEFAULT_PORT} unless the operator chose one)."
)

MAX_SERVER_LINE = 1024 * 1024
"""The longest server line kept; a longer one is shown as a notice, so that
no server can make the client hold unbounded memory."""

MAX_REPLY_LINES = 100_000
"""Lines of one reply kept before its final line; the client reads and
drops the rest, counting them, rather than hold them all or give up a
session over one long listing (a user in very many rooms)."""

UNCLAIMED_PUSHES = 1000
"""Pushes kept for a listener that has not started yet; older ones go."""


class ExitStatus(enum.IntEnum):
    """
    The exit statuses of C{secmsg connect} and C{secmsg send}, one per
    thing a script may want to act on differently.
    """

    OK = 0
    FAILED = 1
    """An error reply, or the server ended the session (KICKED, CLOSED)."""
    USAGE = 2
    CONNECTION = 3
    """No connection, or the server's certificate did not verify."""
    CERTIFICATE_REFUSED = 4
    """The server refused our certificate, or our identity at login."""
    NOT_PERMITTED = 5
    NO_SUCH_RECIPIENT = 6
    NOT_SENT = 7
    """A line of a script that the client would not send (not UTF-8, a
    control or invisible character, too long), so the server never saw it."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C, as shells number it."""


def refusal_status(code: int) -> ExitStatus:
    """
    The exit status that names an error reply: 403 and 404 have their own,
    for a script to tell them apart; any other is L{ExitStatus.FAILED}.
    """
    return {403: ExitStatus.NOT_PERMITTED, 404: ExitStatus.NO_SUCH_RECIPIENT}.get(
        code, ExitStatus.FAILED
    )


class SessionEnded(SecmsgError):
    """
    Why a session is over, in words for the user, and the exit status that
    says so to a script.
    """

    def __init__(self, status: ExitStatus, words: str) -> None:
        super().__init__(words)
        self.status = status
        self.words = words


class Reply(list[wire.ReplyLine]):
    """
    The lines of one reply, its final line last.

    @ivar cut: lines past L{MAX_REPLY_LINES} that were read and dropped.
    """

    cut = 0


@dataclass(frozen=True)
class Greeting:
    """
    The server's greeting: who it says we are, and what it speaks.

    @ivar offer: the protocol version and capabilities it names, or
        L{None} from a server that names none.
    """

    text: str
    identity: str
    offer: Offer | None = None


def ending_for_push(push: wire.PushLine) -> SessionEnded | None:
    """
    The ending a KICKED or CLOSED line announces, or L{None}.
    """
    if push.kind == "KICKED":
        by, reason = push.fields
        return SessionEnded(
            ExitStatus.FAILED, f"kicked by {by}: {reason or 'no reason'}"
        )
    if push.kind == "CLOSED":
        (reason,) = push.fields
        refused = reason.startswith("login refused") or reason in _CERTIFICATE_CLOSINGS
        status = ExitStatus.CERTIFICATE_REFUSED if refused else ExitStatus.FAILED
        return SessionEnded(status, f"the server closed the session: {reason}")
    return None


_CERTIFICATE_CLOSINGS = frozenset(
    [*(reason.value for reason in RefusalReason), "refused by the new policy"]
)
"""The CLOSED reasons that mean the server no longer accepts our certificate
or identity: a RELOAD re-checked it and closed us."""


def _not_a_greeting(
    line: wire.ReplyLine | wire.PushLine, identity: str
) -> SessionEnded:
    """
    Why the first line the server sent is no greeting we can go on with:
    an HTTPS server's, a refusal, or an identity that is not a name (whose
    invisible or control characters would reach the prompt).
    """
    if isinstance(line, wire.PushLine) and line.fields[0].startswith("HTTP/"):
        return SessionEnded(
            ExitStatus.CONNECTION,
            f"an HTTPS server answered: is this the admin port? {_NOT_HERE}",
        )
    ending = None
    if isinstance(line, wire.PushLine):
        ending = ending_for_push(line)
    elif 400 <= line.code < 600:
        # A limit reached at login (503 too many sessions for ...).
        ending = SessionEnded(
            ExitStatus.FAILED, f"the server refused the session: {line.text}"
        )
    elif identity:
        ending = SessionEnded(
            ExitStatus.FAILED,
            "the server greeted us as "
            f"{wire.escape_controls(identity)}, which is not an identity's name",
        )
    return ending or SessionEnded(
        ExitStatus.FAILED, "the server did not greet us as a secmsg server does"
    )


_CONNECTION_DONE = Failure(ConnectionDone())


@implementer(IHandshakeListener)
class ClientProtocol(Protocol):
    """
    One session with a secmsg daemon, over a TLS transport.

    A server that completes the TLS handshake and then says nothing for
    L{QUIET_AFTER_HANDSHAKE} seconds is asked L{HTTP_PROBE}, so that
    dialling the admin port is told in words within seconds rather than
    after the greeting's timeout.

    @ivar greeted: fires with the L{Greeting}, or fails with L{SessionEnded}.
    @ivar ended: fires with the L{SessionEnded} that says why it is over.
    @ivar on_line: called with every line the server sends, as decoded text
        (unsafe to show until escaped).
    """

    transport: IConnection

    def __init__(
        self,
        clock: IReactorTime,
        server_name: str,
        timeout: float = GREETING_TIMEOUT,
        ca: CaOrigin | None = None,
    ) -> None:
        """
        @param ca: where the CA file came from, for the words when the
            server's certificate does not verify.
        """
        self.greeted: defer.Deferred[Greeting] = defer.Deferred()
        self.ended: defer.Deferred[SessionEnded] = defer.Deferred()
        self.on_line: Callable[[str], None] = lambda line: None
        self._on_push: Callable[[wire.PushLine], None] | None = None
        self._unclaimed: deque[wire.PushLine] = deque(maxlen=UNCLAIMED_PUSHES)
        self._clock = clock
        self._server_name = server_name
        self._timeout = timeout
        self._framer = wire.LineFramer(MAX_SERVER_LINE)
        self._pending: deque[tuple[defer.Deferred[Reply], Reply]] = deque()
        self._announced: SessionEnded | None = None
        self._ending_reason: SessionEnded | None = None
        self._quit_answered = False
        self._not_greeted = False
        self._greeting_timer: IDelayedCall | None = None
        self._quiet_timer: IDelayedCall | None = None
        self._hanging_up: IDelayedCall | None = None
        self._ca = ca

    def connectionMade(self) -> None:
        self._greeting_timer = self._clock.callLater(self._timeout, self._no_greeting)

    def handshakeCompleted(self) -> None:
        if not self.greeted.called and self._timeout > QUIET_AFTER_HANDSHAKE:
            self._quiet_timer = self._clock.callLater(
                QUIET_AFTER_HANDSHAKE, self._quiet
            )

    def _quiet(self) -> None:
        """
        Ask a server silent since the handshake what it is.  Should a slow
        secmsg daemon greet after all, its reply to the question is
        nobody's.
        """
        asked: defer.Deferred[Reply] = defer.Deferred()
        asked.addErrback(lambda failure: failure.trap(SessionEnded))
        self._pending.append((asked, Reply()))
        self.transport.write(HTTP_PROBE)
        self._quiet_timer = self._clock.callLater(PROBE_WAIT, self._still_quiet)

    def _still_quiet(self) -> None:
        self._quiet_timer = None
        self._announced = SessionEnded(
            ExitStatus.CONNECTION,
            "the server completed the TLS handshake but sends nothing, where a "
            f"secmsg daemon greets at once: is this its messaging port? {_NOT_HERE}",
        )
        self.transport.abortConnection()

    def _no_greeting(self) -> None:
        self._greeting_timer = None
        self._announced = SessionEnded(
            ExitStatus.CONNECTION,
            f"no greeting from the server within {self._timeout:g} seconds",
        )
        self.transport.abortConnection()

    def _stop_waiting(self) -> None:
        """
        Cancel the timers of the wait for the greeting.
        """
        for timer in (self._greeting_timer, self._quiet_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._greeting_timer = self._quiet_timer = None

    def listen(self, on_push: Callable[[wire.PushLine], None]) -> None:
        """
        Hand every push after the greeting to C{on_push}, starting with any
        that arrived before there was a listener: a message may follow the
        greeting in the same read, before the terminal is ready to show it.
        """
        self._on_push = on_push
        while self._unclaimed:
            on_push(self._unclaimed.popleft())

    def command(self, line: bytes) -> defer.Deferred[Reply]:
        """
        Send one command line (without its line ending).

        @return: fires with the lines of its reply (at most
            L{MAX_REPLY_LINES} before the final one), or fails with
            L{SessionEnded} if the session ends first.
        """
        if self._ending_reason is not None:
            return defer.fail(self._ending_reason)
        answered: defer.Deferred[Reply] = defer.Deferred()
        self._pending.append((answered, Reply()))
        self.transport.write(line + b"\n")
        return answered

    def keep_alive(self, interval: float) -> None:
        """
        Send C{PING} every C{interval} seconds until the session ends, so
        that a session whose user only reads is not closed as idle.  The
        replies are nobody's business.
        """
        pinging = task.LoopingCall(self._ping)
        pinging.clock = self._clock
        pinging.start(interval, now=False)

        def stop(ending: SessionEnded) -> SessionEnded:
            pinging.stop()
            return ending

        self.ended.addCallback(stop)

    def _ping(self) -> None:
        self.command(b"PING").addErrback(lambda failure: failure.trap(SessionEnded))

    @property
    def outstanding(self) -> int:
        """
        Commands sent and not yet answered.
        """
        return len(self._pending)

    def close(self) -> None:
        """
        Leave without a word: the session ends as the user wanted it to.
        """
        self._announced = self._announced or SessionEnded(ExitStatus.OK, "bye")
        self._hang_up()

    def abandon(self, words: str) -> None:
        """
        Hang up on a server that stopped answering: the session ends with
        L{ExitStatus.CONNECTION} and C{words}, unless it was already ending.
        """
        self._announced = self._announced or SessionEnded(ExitStatus.CONNECTION, words)
        self._hang_up()

    def _hang_up(self) -> None:
        """
        Close the connection, and drop it if the server has not closed TLS
        in turn within a short grace.
        """
        self.transport.loseConnection()
        if self._hanging_up is None:
            self._hanging_up = self._clock.callLater(
                min(self._timeout, CLOSE_GRACE), self.transport.abortConnection
            )

    def dataReceived(self, data: bytes) -> None:
        for frame in self._framer.feed(data):
            if self._not_greeted:
                # What a server that did not greet us goes on to send (an
                # HTTP reply's headers, say) is not secmsg's to show.
                return
            if frame is wire.OVERLONG:
                text = f"(the server sent a line over {MAX_SERVER_LINE} bytes)"
            else:
                text = frame.decode("utf-8", "replace")
            if self.greeted.called or not text.startswith("HTTP/"):
                self.on_line(text)
            self._line(wire.parse_server_line(text))

    def _line(self, line: wire.ReplyLine | wire.PushLine) -> None:
        if not self.greeted.called:
            self._greeting(line)
        elif isinstance(line, wire.ReplyLine):
            self._reply(line)
        else:
            self._announced = ending_for_push(line) or self._announced
            if self._on_push is None:
                self._unclaimed.append(line)
            else:
                self._on_push(line)

    def _greeting(self, line: wire.ReplyLine | wire.PushLine) -> None:
        self._stop_waiting()
        _, _, named = (
            line.text.partition("you are ")
            if isinstance(line, wire.ReplyLine) and line.code == 200
            else ("", "", "")
        )
        identity = named.split(" ")[0]
        if wire.NAME_TOKEN.fullmatch(identity):
            self.greeted.callback(Greeting(line.text, identity, parse_offer(line.text)))
            return
        self._announced = _not_a_greeting(line, identity)
        self._not_greeted = True
        self.greeted.errback(self._announced)
        self._hang_up()

    def _reply(self, line: wire.ReplyLine) -> None:
        if not self._pending:
            return
        answered, lines = self._pending[0]
        if not line.final and len(lines) >= MAX_REPLY_LINES:
            lines.cut += 1
        else:
            lines.append(line)
        if line.final:
            self._pending.popleft()
            if line.code == 221:
                self._quit_answered = True
            answered.callback(lines)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._stop_waiting()
        if self._hanging_up is not None and self._hanging_up.active():
            self._hanging_up.cancel()
        ending = self._ending_reason = self._ending(reason)
        if not self.greeted.called:
            self.greeted.errback(ending)
        while self._pending:
            self._pending.popleft()[0].errback(ending)
        self.ended.callback(ending)

    def _ending(self, reason: Failure) -> SessionEnded:
        if self._announced is not None:
            return self._announced
        if self._quit_answered:
            return SessionEnded(ExitStatus.OK, "bye")
        if not self.greeted.called:
            refused, words = describe_tls_failure(reason, self._server_name, self._ca)
            status = (
                ExitStatus.CERTIFICATE_REFUSED if refused else ExitStatus.CONNECTION
            )
            return SessionEnded(status, words)
        return SessionEnded(
            ExitStatus.CONNECTION, f"lost the connection: {reason.getErrorMessage()}"
        )
