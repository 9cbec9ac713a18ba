"""
C{secmsg listen}: stay connected, and hand every message received on to
standard output, one line each, for a program that reads them.

A message is acknowledged only once its line has been written and
flushed, so that a listener that dies loses nothing: what it had not
handed on comes again at its next login, marked redelivered; what it had
handed on and acknowledged does not.  A line written and flushed whose
acknowledgement the server never saw comes again too, marked redelivered,
so a reader that must not act twice drops repeats by id.

Each message is acknowledged by its own C{ACK <id>}, not C{ACK UPTO}: the
server counts a message as sent to our identity once any of its sessions
has had it, so C{ACK UPTO} could acknowledge a message another session of
ours was sent (in a room this one is not in, say) that this listener never
handed on.  C{ACK} draws on a bucket ten times the size of the others.

When a session ends the listener connects again, after a wait that grows
and starts again from the shortest after a session that lasted
(L{Reconnection}), unless the server refused our certificate or an
operator kicked us (L{ends_for_good}): coming back would be against their
word.  C{secmsg connect} on a terminal follows the same rule.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from secmsg.client.api import Client, Refused
from secmsg.client.backoff import (
    Backoff,
    Reconnection,
    connecting_again,
    ends_for_good,
)
from secmsg.client.protocol import ExitStatus, SessionEnded
from secmsg.client.received import Message


class Output(Protocol):
    """
    Where the lines go: standard output, or a test's writer.
    """

    def write(self, text: str, /) -> object: ...

    def flush(self) -> None: ...


Render = Callable[[Message], str]
"""A message as one line, without its line ending."""


class _OutputFailed(Exception):
    """
    Standard output could not take a line; the listener stops, and the
    message it held is not acknowledged.
    """

    def __init__(self, status: ExitStatus, words: str | None) -> None:
        super().__init__(words)
        self.status = status
        self.words = words


class Listener:
    """
    Connects, joins the rooms asked for, hands messages on, and connects
    again when the session ends.

    @param dial: logs in and returns a L{Client}, or fails with
        L{SessionEnded} saying why not.
    @param report: writes a line for whoever runs the listener (standard
        error, escaped).
    """

    def __init__(
        self,
        dial: Callable[[], Awaitable[Client]],
        out: Output,
        render: Render,
        clock: IReactorTime,
        report: Callable[[str], None],
        rooms: tuple[str, ...] = (),
        backoff: Backoff | None = None,
    ) -> None:
        self._dial = dial
        self._out = out
        self._render = render
        self._clock = clock
        self._report = report
        self._rooms = rooms
        self._reconnection = Reconnection(clock, backoff)
        self._client: Client | None = None
        self._stopping = False
        self._unconfirmed: set[int] = set()

    async def run(self) -> ExitStatus:
        """
        Listen until told to stop, or until an ending that coming back
        would not mend; return the exit status.
        """
        while not self._stopping:
            outcome = await self._one_session()
            if isinstance(outcome, ExitStatus):
                return outcome
            wait = self._reconnection.next_wait()
            self._report(f"secmsg: {connecting_again(outcome, wait)}")
            await task.deferLater(self._clock, wait)
        return ExitStatus.OK

    def stop(self) -> defer.Deferred[None]:
        """
        Leave: say QUIT, so that the acknowledgements already sent are
        answered before the connection goes, and connect no more.
        """
        self._stopping = True
        if self._client is None:
            return defer.succeed(None)
        return defer.Deferred.fromCoroutine(self._client.close())

    async def _one_session(self) -> ExitStatus | SessionEnded:
        """
        One session from login to its end: the exit status to stop with,
        or the ending to connect again after.
        """
        try:
            client = await self._dial()
        except SessionEnded as refused:
            return self._unless_final(refused, kicked=False)
        self._client = client
        self._reconnection.logged_in()
        self._report(f"secmsg: listening as {client.identity}")
        try:
            for room in self._rooms:
                await client.join(room)
            await self._hand_on(client)
        except Refused as refusal:
            self._report(f"secmsg: {refusal}")
            await client.close()
            return ExitStatus.FAILED
        except _OutputFailed as failed:
            if failed.words:
                self._report(f"secmsg: {failed.words}")
            await client.close()
            return failed.status
        except SessionEnded:
            # It ended during a JOIN; the ending is read just below.
            pass
        ending = await client.ended()
        if self._stopping:
            return ExitStatus.OK
        return self._unless_final(ending, client.kicked)

    def _unless_final(
        self, ending: SessionEnded, kicked: bool
    ) -> ExitStatus | SessionEnded:
        """
        The exit status of an ending that connecting again would not mend,
        said in words: the server refused our certificate or identity, or
        an operator kicked us.  Any other ending, to connect again after.
        """
        if ends_for_good(ending, kicked):
            self._report(f"secmsg: {ending.words}")
            return ending.status
        return ending

    async def _hand_on(self, client: Client) -> None:
        """
        Write each message, flush, and only then acknowledge it.  A message
        whose line this listener already wrote, but whose acknowledgement
        the server had not answered when the session ended, is not written
        again.
        """
        async for message in client.messages():
            if message.id not in self._unconfirmed:
                self._write(self._render(message))
                self._unconfirmed.add(message.id)
            acknowledged = defer.Deferred.fromCoroutine(client.ack(message.id))
            acknowledged.addCallbacks(
                self._confirmed,
                self._unanswered,
                callbackArgs=(message.id,),
                errbackArgs=(message.id,),
            )

    def _write(self, line: str) -> None:
        try:
            self._out.write(line + "\n")
            self._out.flush()
        except BrokenPipeError:
            # The reader (head, say) has had enough: leave, as it chose.
            raise _OutputFailed(ExitStatus.OK, None) from None
        except OSError as error:
            raise _OutputFailed(
                ExitStatus.FAILED,
                f"cannot write to standard output: {error.strerror or error}",
            ) from None

    def _confirmed(self, _: None, message_id: int) -> None:
        self._unconfirmed.discard(message_id)

    def _unanswered(self, failure: Failure, message_id: int) -> None:
        """
        An ACK the session ended before answering: the message comes again
        at the next login, and is then not written again.  One the server
        refused is said in words, and is not the server's to send again.
        """
        failure.trap(SessionEnded, Refused)
        if failure.check(Refused):
            self._unconfirmed.discard(message_id)
            self._report(f"secmsg: ACK {message_id} refused: {failure.value}")
