"""
The scripted mode of C{secmsg connect}: when standard input is not a
terminal, its lines are sent as commands, the server's lines are written
(escaped) to standard output, and the session ends once the last command is
answered, as C{nc} would.  The lines are paced to the rate the server's
greeting gives, with the same token buckets the server keeps.

A line the server refuses (an error reply) or the client will not send is
also said on standard error, and the exit status is that of the first
line that went wrong (L{ExitStatus}).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import TextIO

from twisted.internet import defer, stdio
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from secmsg import wire
from secmsg.client.protocol import ClientProtocol, ExitStatus, refusal_status
from secmsg.errors import CommandError
from secmsg.rate import Rate, RateLimiter
from secmsg.transport import IConnection

PIPELINE_LIMIT = 64
"""Commands the scripted mode sends ahead of their replies before it stops
reading standard input, so that a long script does not pile up in memory."""


async def run_scripted(
    session: ClientProtocol,
    attach_stdin: Callable[[Protocol], object],
    out: TextIO,
    err: TextIO,
    clock: IReactorTime,
    reader_gone: Callable[[TextIO], None],
    timeout: float,
    render: Callable[[str], str] = wire.escape_controls,
) -> ExitStatus:
    """
    Send standard input's lines, print every server line, and end once the
    last command is answered.

    Lines go to C{out} with blocking writes: a reader slower than the
    server holds the client up rather than losing lines.

    @param attach_stdin: connects a protocol to standard input.
    @param clock: what pacing to the server's rate, and the wait for each
        reply, are timed by.
    @param reader_gone: told that C{out}'s reader has gone, so that nothing
        more written to C{out}, at exit included, fails; the command line
        points it at the null device.
    @param timeout: seconds to wait for each reply; a server silent for
        longer is hung up on, and the session ends with
        L{ExitStatus.CONNECTION}.
    @param render: a server line as it is written: escaped, or as JSON
        (L{secmsg.client.jsonlines}).
    """

    def printed(text: str) -> None:
        try:
            out.write(render(text) + "\n")
            out.flush()
        except BrokenPipeError:
            # The reader (head, say) has had enough: leave, as it chose.
            reader_gone(out)
            session.on_line = lambda text: None
            session.close()

    session.on_line = printed
    greeting = await session.greeted
    rate = wire.parse_greeting_rate(greeting.text)
    feeder = _ScriptFeeder(session, err, clock, rate, timeout)
    attach_stdin(feeder)
    ending = await session.ended
    if ending.status is not ExitStatus.OK:
        raise ending
    return feeder.status


def standard_input(protocol: Protocol) -> object:
    """
    Read standard input with C{protocol}.  Twisted's StandardIO also takes
    standard output and makes it non-blocking, which would lose lines a
    slow reader has not taken; it is given the null device instead, and the
    scripted mode writes to standard output itself.
    """
    return stdio.StandardIO(protocol, stdout=os.open(os.devnull, os.O_WRONLY))


_OURS = "us"
"""The name of the one identity whose buckets a script's pacing mirrors."""


class _ScriptFeeder(Protocol):
    """
    Feeds standard input's lines to the session as commands, and closes
    the session once input has ended and every command is answered.  A
    line the server would refuse unanswered or could not frame (a control
    character, an over-long line) is refused here, with words, instead.

    Lines go a little slower than the rate the server's greeting gives: a
    script longer than its burst is paced, in order, rather than answered
    429 (which another session of the same identity may still cause).

    @param rate: the greeting's commands a second, burst and commands left
        now, or L{None} for a server that gives none.
    @param timeout: seconds to wait for each reply.
    @ivar status: the exit status of the first line that went wrong (not
        sent, or refused by the server), or L{ExitStatus.OK}.
    """

    transport: IConnection

    def __init__(
        self,
        session: ClientProtocol,
        err: TextIO,
        clock: IReactorTime,
        rate: tuple[float, int, int] | None,
        timeout: float,
    ) -> None:
        self._session = session
        self._err = err
        self._clock = clock
        self._timeout = timeout
        # A little under the server's rate, from one token fewer than it
        # said were left: its bucket and ours refill at moments a network
        # apart.
        self._buckets = RateLimiter(clock)
        self._rate = None
        if rate is not None:
            per_second, burst, left = rate
            self._rate = Rate(per_second * 0.9, burst)
            self._buckets.begin(_OURS, self._rate, left - 1)
        self._waiting: deque[tuple[int, bytes]] = deque()
        self.status = ExitStatus.OK
        self._first_wrong: int | None = None
        self._pacing: IDelayedCall | None = None
        self._framer = wire.LineFramer(wire.MAX_LINE_LENGTH * 16)
        self._line_number = 0
        self._input_ended = False
        self._paused = False

    def dataReceived(self, data: bytes) -> None:
        for frame in self._framer.feed(data):
            self._line_number += 1
            self._feed(frame)
        self._send_waiting()
        self._throttle()

    def _throttle(self) -> None:
        """
        Stop reading standard input while many lines wait to be sent or
        answered; read on once half of them have gone.
        """
        backlog = self._session.outstanding + len(self._waiting)
        if backlog >= PIPELINE_LIMIT and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif backlog < PIPELINE_LIMIT // 2 and self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _send_waiting(self) -> None:
        """
        Send the lines waiting, in order, as far as the rate allows now,
        and come back when the next one may go.
        """
        while self._waiting and self._pacing is None:
            wait = self._wait_for(self._waiting[0][1])
            if wait:
                self._pacing = self._clock.callLater(wait, self._paced)
                return
            number, frame = self._waiting.popleft()
            answering = self._session.command(frame)
            answering.addTimeout(self._timeout, self._clock)
            answering.addErrback(self._unanswered)
            answering.addBoth(self._answered, number, frame)

    def _unanswered(self, failure: Failure) -> None:
        failure.trap(defer.TimeoutError)
        self._session.abandon(
            f"no reply from the server within {self._timeout:g} seconds"
        )

    def _paced(self) -> None:
        self._pacing = None
        self._send_waiting()
        self._throttle()

    def _wait_for(self, frame: bytes) -> float:
        """
        Seconds until C{frame} may be sent, charged as the server charges
        it: QUIT is free, ACK draws on a bucket of its own.
        """
        if self._rate is None:
            return 0.0
        verb = frame.lstrip(b" ").split(b" ", 1)[0].upper()
        return self._buckets.charge(_OURS, verb.decode("ascii", "replace"), self._rate)

    def _feed(self, frame: bytes | object) -> None:
        try:
            if frame is wire.OVERLONG:
                raise wire.line_too_long(self._framer.max_length)
            text = wire.decode_line(frame)
        except CommandError as error:
            self._went_wrong(
                self._line_number,
                ExitStatus.NOT_SENT,
                f"line {self._line_number} not sent: {error.text}",
            )
            return
        if not wire.is_blank(text):
            self._waiting.append((self._line_number, frame))

    def _answered(self, result: object, number: int, frame: bytes) -> None:
        if isinstance(result, list) and result and result[-1].code >= 400:
            # The verb only: the rest of the line may be a message.
            verb = frame.lstrip(b" ").split(b" ", 1)[0].upper().decode()
            what = verb if verb in wire.COMMANDS else "the line"
            reply = result[-1]
            self._went_wrong(
                number,
                refusal_status(reply.code),
                f"line {number}: the server refused {what}: {reply.code} {reply.text}",
            )
        self._throttle()
        self._finish_if_done()

    def _went_wrong(self, number: int, status: ExitStatus, words: str) -> None:
        """
        Say on standard error what went wrong with line C{number}; the
        first line of the script that went wrong gives the exit status,
        though a later one refused here may be said before it is answered.
        """
        self._err.write(wire.escape_controls(f"secmsg: {words}") + "\n")
        if self._first_wrong is None or number < self._first_wrong:
            self._first_wrong = number
            self.status = status

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for frame in self._framer.finish():
            self._line_number += 1
            self._feed(frame)
        self._input_ended = True
        self._send_waiting()
        self._finish_if_done()

    def _finish_if_done(self) -> None:
        session = self._session
        if (
            self._input_ended
            and not self._waiting
            and not session.outstanding
            and not session.ended.called
        ):
            if self._pacing is not None and self._pacing.active():
                self._pacing.cancel()
            session.close()
