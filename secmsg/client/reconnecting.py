"""
The session of C{secmsg connect} on a terminal, connected again when it
drops.

When the server closes the session for its shutdown, or the connection is
lost, L{ReconnectingSession} says so, waits as C{secmsg listen} does
(L{Reconnection}), and dials again until a session is greeted; the server
then sends what waited.  It does not come back after the user's QUIT, a
KICK, or a refusal of our certificate or identity (L{ends_for_good}); QUIT
or Ctrl-C while it waits end it (L{ReconnectingSession.stop}).  Only a
session that has begun is mended: a first connection that fails ends
C{secmsg connect} with words at once, so that a mistyped host or a
refused certificate is told, not tried again and again.

A message is shown once.  Each is acknowledged, on the session that
delivered it, once shown; one whose ACK the server had not answered when
the session ended comes again, redelivered, at the next login, and is
then acknowledged without being shown again.

A line typed while there is no session is refused with words
(L{NotConnected}), not queued: sent later, on another session, a command
would act on what its writer no longer sees (a MSG to someone who has
gone, a KICK of a session that ended), and its reply would come long after
the prompt moved on.  The line is in the prompt's history, to send again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from secmsg.client.backoff import Reconnection, connecting_again, ends_for_good
from secmsg.client.display import acknowledgeable
from secmsg.client.protocol import (
    ClientProtocol,
    ExitStatus,
    Greeting,
    Reply,
    SessionEnded,
)
from secmsg.errors import ConfigurationError
from secmsg.wire import PushLine, escape_controls

Begin = Callable[[ClientProtocol, Greeting], Awaitable[list[str]]]
"""What the terminal does with a session the server greeted before it
takes pushes (HELP, the keep-alive); the commands the session may use."""

BYE = SessionEnded(ExitStatus.OK, "bye")


class NotConnected(SessionEnded):
    """
    A command typed while the terminal is connecting again: not sent.
    """

    def __init__(self) -> None:
        super().__init__(
            ExitStatus.CONNECTION,
            "not sent: connecting again; send it once connected",
        )


class ReconnectingSession:
    """
    The terminal's session, whichever connection carries it now.

    @ivar over: fires with the L{SessionEnded} that ends the terminal: the
        user's QUIT, an ending that connecting again would not mend, or
        what L{stop} was given.
    """

    def __init__(
        self,
        dial: Callable[[], defer.Deferred[ClientProtocol]],
        clock: IReactorTime,
        begin: Begin,
        show: Callable[[PushLine], None],
        report: Callable[[str], None],
        reconnection: Reconnection | None = None,
    ) -> None:
        """
        @param dial: connects again, reading our files again; fails with
            L{SessionEnded} if it cannot, or raises L{ConfigurationError}
            if a file is now unusable, which ends the terminal.
        @param show: shows a push on the terminal (escaping it).
        @param report: shows a line of ours on the terminal.
        """
        self.over: defer.Deferred[SessionEnded] = defer.Deferred()
        self._dial = dial
        self._clock = clock
        self._begin = begin
        self._show = show
        self._report = report
        self._reconnection = reconnection or Reconnection(clock)
        self._session: ClientProtocol | None = None
        self._commands: list[str] = []
        self._kicked = False
        self._leaving = False
        self._unconfirmed: set[str] = set()
        self._reconnecting: defer.Deferred[None] | None = None

    @property
    def connected(self) -> bool:
        """
        Whether a session carries commands now.
        """
        return self._session is not None

    async def attach(self, session: ClientProtocol, greeting: Greeting) -> None:
        """
        Go on with a session the server greeted: begin it, show its
        pushes, and mend its end.

        @raise SessionEnded: it ended before it had begun.
        """
        self._commands = await self._begin(session, greeting)
        self._session = session
        self._kicked = False
        self._reconnection.logged_in()
        session.listen(lambda push: self._pushed(session, push))
        session.ended.addCallback(self._ended)

    def command(self, line: bytes) -> defer.Deferred[Reply]:
        """
        Send a command the user typed on the session there is now.  After
        a QUIT, however the session ends, the terminal does not connect
        again; a QUIT while there is none ends the terminal at once.

        @return: fires with its reply, or fails with L{SessionEnded}
            (L{NotConnected} while connecting again).
        """
        quitting = line.strip(b" ").split(b" ")[0].upper() == b"QUIT"
        if self._session is None:
            if not quitting:
                return defer.fail(NotConnected())
            self.stop(BYE)
            return defer.fail(BYE)
        self._leaving = self._leaving or quitting
        return self._session.command(line)

    def stop(self, ending: SessionEnded) -> None:
        """
        Connect no more (Ctrl-C, or QUIT while connecting again): the
        terminal ends with C{ending}.
        """
        self._leaving = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        self._finish(ending)

    def _pushed(self, session: ClientProtocol, push: PushLine) -> None:
        self._kicked = self._kicked or push.kind == "KICKED"
        message_id = acknowledgeable(push)
        if message_id not in self._unconfirmed:
            self._show(push)
        if message_id is not None and "ACK" in self._commands:
            self._unconfirmed.add(message_id)
            acknowledged = session.command(b"ACK " + message_id.encode())
            acknowledged.addCallbacks(
                lambda _: self._unconfirmed.discard(message_id),
                lambda failure: failure.trap(SessionEnded),
            )

    def _ended(self, ending: SessionEnded) -> SessionEnded:
        self._session = None
        if self._leaving or ending.status is ExitStatus.OK:
            self._finish(ending)
        elif ends_for_good(ending, self._kicked):
            # The KICKED or CLOSED that said so has been shown.
            self._finish(ending)
        else:
            self._reconnecting = defer.Deferred.fromCoroutine(self._again(ending))
            self._reconnecting.addErrback(self._cancelled)
        return ending

    async def _again(self, ending: SessionEnded) -> None:
        """
        Wait, dial, and wait longer after each failure, until a session
        has begun or an attempt ends in a way that would not mend.
        """
        while not self._leaving:
            wait = self._reconnection.next_wait()
            self._report(escape_controls(connecting_again(ending, wait)))
            await task.deferLater(self._clock, wait)
            try:
                await self._attempt()
                return
            except ConfigurationError as unusable:
                # Our certificate or key, read again at each dial, is unusable.
                self._give_up(SessionEnded(ExitStatus.FAILED, str(unusable)))
                return
            except SessionEnded as failed:
                if ends_for_good(failed, kicked=False):
                    self._give_up(failed)
                    return
                ending = failed

    async def _attempt(self) -> None:
        session = await self._dial()
        greeting = await session.greeted
        self._report(f"connected again as {greeting.identity}")
        await self.attach(session, greeting)

    def _give_up(self, ending: SessionEnded) -> None:
        self._report(escape_controls(ending.words))
        self._finish(ending)

    def _cancelled(self, failure: Failure) -> None:
        failure.trap(defer.CancelledError)

    def _finish(self, ending: SessionEnded) -> None:
        if not self.over.called:
            self.over.callback(ending)
