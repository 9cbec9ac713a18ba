"""
The answering side of a logged-in session: the lines it has read, answered
in order however long each takes; the throttle that stops reading a peer
whose work or replies pile up; and the strikes and tokens each line costs.

Each part is made at login, so that a connection that never logs in costs
none of them, and holds its state in slots, since a daemon holds thousands
of idle sessions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from secmsg import wire
from secmsg.daemon.audit import audit, record_denial, record_session_closed
from secmsg.daemon.commands import Commands
from secmsg.daemon.metrics import Metrics
from secmsg.errors import (
    CommandError,
    LineTooLong,
    Malformed,
    NotPermitted,
    RateLimited,
    UnknownCommand,
)
from secmsg.rate import RATE_EXEMPT, RateLimiter
from secmsg.transport import IConnection

if TYPE_CHECKING:
    from secmsg.daemon.outbox import Outbox
    from secmsg.daemon.protocol import SessionProtocol

log = Logger()

PIPELINE_DEPTH = 64
"""Commands of one session in progress at once: a client may send many
without waiting, and the daemon stops reading it while this many wait for
the store."""

PIPELINE_RESUME = PIPELINE_DEPTH // 2
"""Commands in progress below which a session stopped for a full pipeline
is read again.  Reading again as soon as one reply has gone would stop and
start the transport (two system calls) for every command of a client that
keeps its pipeline full."""

BAD_LINES_IN_A_ROW = 10
"""Malformed, unknown or overlong lines in a row after which a session is
closed: a client that has lost track of the protocol, or is probing it."""

REFUSED_FOR_RATE_IN_A_ROW = 100
"""429 replies in a row after which a session is closed: a client that
does not slow down.  A script's pipeline may meet a few dozen at once."""

_BAD_LINE = (Malformed, UnknownCommand, LineTooLong)

_BLANK_LINE = Malformed("blank line")
"""What a blank line counts as: a line without a command."""


class _Reply:
    """
    A reply's place in a session's order: its bytes once ready, and whether
    the session ends after it (QUIT).
    """

    __slots__ = ("data", "finishes", "last_words", "verb")

    def __init__(self, verb: str, finishes: bool, last_words: str | None) -> None:
        self.verb = verb
        self.finishes = finishes
        self.data: bytes | None = None
        self.last_words = last_words


def _named_verb(frame: bytes | wire._Overlong) -> str:
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


def is_blank(frame: bytes | wire._Overlong) -> bool:
    """
    Whether a framed line holds nothing but spaces and tabs: it gets no
    reply, and does not keep its session from being idle.
    """
    return frame is not wire.OVERLONG and not frame.strip(b" \t")


class Throttle:
    """
    Whether a session reads its peer: the peer may stop reading (the
    transport pauses the session, its producer), and the session stops
    reading a peer whose pipeline is full or who is being sent what waited
    for it.  Both stop the transport; it reads again once neither holds.
    It is made once the session has become its transport's producer.

    @ivar paused: the peer has stopped reading its replies.
    """

    __slots__ = ("_producing", "_throttled", "_transport", "paused")

    def __init__(self, transport: IConnection) -> None:
        self._transport = transport
        self.paused = False
        self._throttled = False
        self._producing = True

    def pause(self) -> None:
        """
        The peer is not reading: stop reading it.
        """
        self.paused = True
        self._transport.pauseProducing()

    def resume(self) -> None:
        """
        The peer has caught up: note it; L{read_on} reads it again.
        """
        self.paused = False

    def read_on(self) -> None:
        """
        Read the peer again, unless something still holds it.
        """
        if not self.paused and not self._throttled:
            self._transport.resumeProducing()

    def hold(self, pending: int, holding: bool) -> None:
        """
        Stop reading the peer while C{pending} replies fill its pipeline,
        or while it is being sent what waited for it (C{holding}), so that
        a client cannot queue unbounded work behind a slow store; read on
        once that is over and the pipeline has drained below
        L{PIPELINE_RESUME}.
        """
        limit = PIPELINE_RESUME if self._throttled else PIPELINE_DEPTH
        full = pending >= limit or holding
        if full and not self._throttled:
            self._throttled = True
            self._transport.pauseProducing()
        elif not full and self._throttled:
            self._throttled = False
            if not self.paused:
                self._transport.resumeProducing()

    def stop(self) -> None:
        """
        The session is closing: stop being its transport's producer, and
        read again, so that the peer's own close is seen and the connection
        ends without waiting out the grace period.
        """
        if self._producing:
            self._producing = False
            self._transport.unregisterProducer()
        if self.paused or self._throttled:
            self._transport.resumeProducing()


class Strikes:
    """
    What each line of a session costs: a token of its identity's rate, and
    a strike if it is bad or refused for the rate.  Too many strikes in a
    row end the session; its refusals are recorded, a run of them once.
    """

    __slots__ = ("_metrics", "_rate_limiter", "_session", "bad_lines", "rate_refusals")

    def __init__(
        self, session: SessionProtocol, rate_limiter: RateLimiter, metrics: Metrics
    ) -> None:
        self._session = session
        self._rate_limiter = rate_limiter
        self._metrics = metrics
        self.bad_lines = 0
        self.rate_refusals = 0

    def spend_token(self, verb: str) -> None:
        """
        Take one of the identity's tokens for a line whose first word is
        C{verb} (C{"?"} if it names no command): from its bucket of
        acknowledgements for C{ACK}, which a client sends for every message
        it is shown, and from its bucket of commands for anything else but
        C{QUIT}.

        @raise RateLimited: there is none left; the reply says when there
            will be.
        """
        avatar = self._session.avatar
        wait = self._rate_limiter.charge(avatar.identity, verb, avatar.grant.rate)
        if wait:
            raise RateLimited(max(1, math.ceil(wait * 1000)))

    def answered(self, verb: str) -> None:
        """
        A command of C{verb} succeeded: the slate is clean, unless it is
        one that costs nothing (ACK, QUIT).
        """
        if verb not in RATE_EXEMPT:
            self.bad_lines = self.rate_refusals = 0

    def count(self, error: BaseException) -> str | None:
        """
        Count bad lines and refusals for the rate in a row.

        @return: past their bounds, why the session ends after this reply
            (which is recorded); else L{None}.
        """
        if isinstance(error, RateLimited):
            self.rate_refusals += 1
            self.bad_lines = 0
        elif isinstance(error, _BAD_LINE):
            self.bad_lines += 1
            self.rate_refusals = 0
        else:
            self.bad_lines = self.rate_refusals = 0
        if self.bad_lines >= BAD_LINES_IN_A_ROW:
            reason = f"{BAD_LINES_IN_A_ROW} bad lines in a row"
        elif self.rate_refusals >= REFUSED_FOR_RATE_IN_A_ROW:
            reason = f"{REFUSED_FOR_RATE_IN_A_ROW} commands in a row past the rate"
        else:
            return None
        record_session_closed(
            self._session.avatar.identity, self._session.address, reason, LogLevel.warn
        )
        return reason

    def log_refusal(self, verb: str, error: CommandError) -> None:
        """
        Record a refused command: every denial, the first of a run of
        refusals for the rate, and the first of a run of bad lines, so that
        a client cannot fill the log.
        """
        identity = self._session.avatar.identity
        if isinstance(error, NotPermitted):
            record_denial(identity, self._session.address, verb, error.rule)
        elif isinstance(error, RateLimited):
            self._metrics.rate_limited(verb)
            if self.rate_refusals > 1:
                # One record for a run of them; the run's end is recorded
                # if it closes the session.
                return
            audit(
                "rate_limited",
                "refused {verb} from {identity} for the rate; retry in {retry_ms} ms",
                identity=identity,
                peer=self._session.address,
                verb=verb,
                retry_ms=error.retry_ms,
            )
        elif self.bad_lines <= 1:
            # The first of a run of bad lines is worth a line in the log;
            # the rest would only let a client fill it.
            log.info(
                "refused {verb} from {identity}: {code} {text}",
                verb=verb,
                identity=identity,
                code=error.code,
                text=error.text,
            )


class Pipeline:
    """
    The lines a session has read and the replies they get, in order: each
    line is answered at once or by a Deferred, and its reply is written
    once it and every reply before it are ready.  Lines wait while the peer
    does not read, while the pipeline is full, and until what waited for
    the session at login has been sent.

    @ivar finishing: the session ends after the replies queued so far
        (QUIT, or too many strikes).
    @ivar last_words: why, for a C{CLOSED} after the last reply.
    """

    __slots__ = (
        "_answering",
        "_commands",
        "_framer",
        "_frames",
        "_metrics",
        "_outbox",
        "_replies",
        "_session",
        "_strikes",
        "_throttle",
        "finishing",
        "last_words",
    )

    def __init__(
        self,
        session: SessionProtocol,
        commands: Commands,
        framer: wire.LineFramer,
        strikes: Strikes,
        outbox: Outbox,
        metrics: Metrics,
    ) -> None:
        self._session = session
        self._commands = commands
        self._framer = framer
        self._strikes = strikes
        self._outbox = outbox
        self._throttle = outbox.throttle
        self._metrics = metrics
        # Lists, not deques: an empty deque costs 760 bytes and an empty
        # list 56, in each of thousands of idle sessions.  Both are short
        # (the replies are bounded by PIPELINE_DEPTH, and the lines read
        # are taken from the front in one slice per turn).
        self._frames: list[bytes | wire._Overlong] = []
        self._replies: list[_Reply] = []
        self._answering = False
        self.finishing = False
        self.last_words: str | None = None

    def frame(self, data: bytes) -> list[bytes | wire._Overlong]:
        """
        The lines in C{data} and what came before it, not yet queued.
        """
        return self._framer.feed(data)

    def take(self, frames: list[bytes | wire._Overlong]) -> None:
        """
        Queue framed lines and answer what may be answered now.
        """
        self._frames.extend(frames)
        self.answer_waiting()

    def answer_waiting(self) -> None:
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
        frames, replies, session = self._frames, self._replies, self._session
        taken = 0
        try:
            while (
                taken < len(frames)
                and not self._throttle.paused
                and not session.closing
                and not self.finishing
                and self._outbox.held is None
                and len(replies) < PIPELINE_DEPTH
            ):
                taken += 1
                self._answer(frames[taken - 1])
        finally:
            del frames[:taken]
            self._answering = False
        if not session.closing:
            self._throttle.hold(len(replies), self._outbox.held is not None)

    def _answer(self, frame: bytes | wire._Overlong) -> None:
        """
        Queue the one reply a framed line gets (a blank line gets none); it
        is written once it and every reply before it are ready.
        """
        if is_blank(frame):
            self._answer_blank()
            return
        verb = _named_verb(frame)
        try:
            # Every line costs a token, a bad one too, before it is looked
            # at: refusals must not be had faster than answers.
            self._strikes.spend_token(verb)
            if frame is wire.OVERLONG:
                raise wire.line_too_long(self._framer.max_length)
            verb, rest = wire.split_verb(wire.decode_line(frame))
            self._session.avatar.authorize(verb)
            response = self._commands.run(
                self._session, verb, wire.parse_arguments(verb, rest)
            )
        except Exception:  # noqa: BLE001 -- one bad command must not end the daemon
            failure = Failure()
            self._strike(failure.value)
            response = self._failed(failure, verb)
        else:
            self._strikes.answered(verb)
        entry = _Reply(verb, self.finishing, self.last_words)
        self._replies.append(entry)
        if isinstance(response, defer.Deferred):
            response.addCallbacks(
                self._settle,
                self._settle_failed,
                callbackArgs=(entry,),
                errbackArgs=(verb, entry),
            )
        else:
            self._settle(response, entry)

    def _answer_blank(self) -> None:
        """
        A blank line gets no reply, as a telnet user's stray Enter deserves,
        but it costs a token as any line does and counts as a bad line:
        a flood of them ends the session, not the daemon's time for others.
        """
        try:
            self._strikes.spend_token("?")
        except RateLimited as refusal:
            self._strike(refusal)
        else:
            self._strike(_BLANK_LINE)
        if self.finishing:
            # The CLOSED the strike earns goes after the replies before it.
            entry = _Reply("?", True, self.last_words)
            self._replies.append(entry)
            self._settle(b"", entry)

    def _strike(self, error: BaseException) -> None:
        """
        Count a strike; past the bounds, end the session after this reply.
        """
        reason = self._strikes.count(error)
        if reason is not None:
            self.finishing = True
            self.last_words = reason

    def _failed(self, failure: Failure, verb: str) -> bytes:
        """
        The reply to a command that failed: its error's, or 500 for a fault
        of ours, which is logged.
        """
        if isinstance(failure.value, CommandError):
            self._strikes.log_refusal(verb, failure.value)
            return wire.reply(failure.value.code, failure.value.text)
        log.failure("internal error answering {verb}", failure, verb=verb)
        return wire.reply(500, "internal error")

    def _settle_failed(self, failure: Failure, verb: str, entry: _Reply) -> None:
        """
        Settle a command whose Deferred failed with the reply L{_failed}
        gives: one step of its Deferred for either outcome.
        """
        self._settle(self._failed(failure, verb), entry)

    def _settle(self, response: bytes, entry: _Reply) -> None:
        """
        Write the replies that are ready, in order, up to the first that is
        not; end the session after one that finishes it.
        """
        entry.data = response
        replies, session = self._replies, self._session
        while replies and replies[0].data is not None:
            ready = replies.pop(0)
            if session.closing:
                replies.clear()
                return
            if self._throttle.paused and self._outbox.over_backlog(
                len(ready.data), "its replies"
            ):
                return
            if ready.data:
                # Twisted's TLS transport gathers the writes of a reactor
                # turn, replies and pushes alike, into one TLS write at its
                # end: one record and one send per peer per turn.
                session.transport.write(ready.data)
                self._metrics.command(ready.verb, ready.data[:3].decode("ascii"))
            if ready.finishes:
                if ready.last_words is not None:
                    session.transport.write(wire.push("CLOSED", ready.last_words))
                session.end()
                return
        self.answer_waiting()
