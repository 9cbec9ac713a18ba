"""
The client for programs: a bot, a bridge, a script that would rather not
speak the line protocol itself.

L{connect} logs in and returns a L{Client}, whose coroutines send, say,
join and acknowledge, and whose L{Client.messages} yields every message
that arrives.  It is built on the same L{ClientProtocol} as C{secmsg
connect}, and runs on Twisted: call it from an C{async def} that Twisted
drives (C{Deferred.fromCoroutine}, C{task.react}).

What a program is sent stays the server's until the program says C{ack}:
a message it never acknowledges comes again, marked redelivered, at its
next login.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from secmsg import wire
from secmsg.client.connect import Credentials
from secmsg.client.connect import connect as dial
from secmsg.client.protocol import ClientProtocol, ExitStatus, Greeting, SessionEnded
from secmsg.client.received import Message, message_from_push
from secmsg.errors import Malformed, SecmsgError

DEFAULT_PORT = 7443

KEEPALIVE_INTERVAL = 60.0
"""Seconds between the PINGs that keep a quiet session open: well under the
daemon's idle timeout (15 minutes unless its operator says otherwise)."""

RETRIES_PAST_RATE = 5
"""Times a command answered 429 is sent again, after the wait the server
names, before the 429 is the program's to handle."""

_RETRY_IN = re.compile(r"retry in ([0-9]{1,9}) ms")


class Refused(SecmsgError):
    """
    The server answered a command with an error reply; its code and words
    say why (C{404 no such identity zed}, C{403 MSG not permitted ...}).
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {wire.escape_controls(text)}")
        self.code = code
        self.text = text


class Client:
    """
    A logged-in session, for a program.

    @ivar identity: who the server says we are.
    @ivar kicked: whether an operator kicked us; a program that reconnects
        by itself had better not then.
    """

    def __init__(
        self,
        session: ClientProtocol,
        greeting: Greeting,
        clock: IReactorTime,
        timeout: float,
    ) -> None:
        self.identity = greeting.identity
        self.kicked = False
        self._session = session
        self._clock = clock
        self._timeout = timeout
        self._arrived: defer.DeferredQueue[Message | None] = defer.DeferredQueue()
        self._ending: SessionEnded | None = None
        self._waiting: list[defer.Deferred[SessionEnded]] = []
        session.ended.addCallback(self._end)
        session.listen(self._pushed)

    def _pushed(self, push: wire.PushLine) -> None:
        self.kicked = self.kicked or push.kind == "KICKED"
        message = message_from_push(push)
        if message is not None:
            self._arrived.put(message)

    def _end(self, ending: SessionEnded) -> SessionEnded:
        self._ending = ending
        self._arrived.put(None)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(ending)
        return ending

    def ended(self) -> defer.Deferred[SessionEnded]:
        """
        Fires with the L{SessionEnded} that says why the session is over;
        each call has its own, since awaiting one takes its result.
        """
        if self._ending is not None:
            return defer.succeed(self._ending)
        waiter: defer.Deferred[SessionEnded] = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    async def messages(self) -> AsyncIterator[Message]:
        """
        Yield each message as it arrives, in order, until the session ends.
        Messages that arrive while the program is busy wait for it.
        """
        while (message := await self._arrived.get()) is not None:
            yield message

    async def send(self, to: str, text: str) -> int:
        """
        Send C{to} an identity a direct message; return its id.

        @raise Malformed: C{to} is not an identity, or the text cannot be
            sent (a control character, a line ending, too long); nothing
            was sent; or the server's reply gives no message id.
        @raise Refused: the server did not take it.
        """
        if not wire.NAME_TOKEN.fullmatch(to):
            raise Malformed(f"{to!r} is not an identity")
        return _message_id(await self._command("MSG", to, text))

    async def say(self, room: str, text: str) -> int:
        """
        Say C{text} in a room our session has joined; return its id.

        @raise Malformed: not a room, or the text cannot be sent; or the
            server's reply gives no message id.
        @raise Refused: the server did not take it.
        """
        return _message_id(await self._command("SAY", _room(room), text))

    async def join(self, room: str) -> None:
        """
        Join a room: what is said in it from now on arrives as messages.
        """
        await self._command("JOIN", _room(room))

    async def ack(self, message_id: int) -> None:
        """
        Say that a message has been dealt with: the server does not send it
        again, to this session or any other of our identity.
        """
        await self._command("ACK", str(message_id))

    async def close(self) -> None:
        """
        Say QUIT and wait for the session to end; past the timeout, hang up.
        """
        if self._ending is None:
            quitting = self._session.command(b"QUIT")
            quitting.addTimeout(self._timeout, self._clock)
            with suppress(SessionEnded, defer.TimeoutError):
                await quitting
            self._session.close()
        await self.ended()

    async def _command(self, verb: str, *words: str) -> wire.ReplyLine:
        """
        Send a command once it has been checked as the server checks it;
        send it again past the rate, after the wait the server names.

        @raise Refused: its final reply was an error.
        @raise SessionEnded: the session ended first, or the server gave no
            reply within the timeout (then the session is closed).
        """
        line = _checked_line(verb, *words)
        reply = await self._answer(line)
        for _ in range(RETRIES_PAST_RATE):
            wait = _RETRY_IN.search(reply.text) if reply.code == 429 else None
            if wait is None:
                break
            await task.deferLater(self._clock, int(wait.group(1)) / 1000)
            reply = await self._answer(line)
        if reply.code >= 400:
            raise Refused(reply.code, reply.text)
        return reply

    async def _answer(self, line: bytes) -> wire.ReplyLine:
        waiting = self._session.command(line)
        waiting.addTimeout(self._timeout, self._clock)
        try:
            lines = await waiting
        except defer.TimeoutError:
            self._session.close()
            raise SessionEnded(
                ExitStatus.CONNECTION,
                f"no reply from the server within {self._timeout:g} seconds",
            ) from None
        return lines[-1]


def _checked_line(verb: str, *words: str) -> bytes:
    """
    The command line, if the server would take it as one line of text.

    @raise Malformed: it holds a control or invisible character, or is
        longer than a line may be.
    """
    raw = " ".join((verb, *words)).encode("utf-8", "surrogateescape")
    wire.decode_line(raw)
    if len(raw) > wire.MAX_LINE_LENGTH:
        raise Malformed(
            f"the line would be {len(raw)} bytes; at most "
            f"{wire.MAX_LINE_LENGTH} fit in one"
        )
    if not words[-1].strip(" \t"):
        raise Malformed("give the text to send")
    return raw


def _room(room: str) -> str:
    if not wire.ROOM_NAME.fullmatch(room.lower()):
        raise Malformed(f"{room!r} is not a room (#name)")
    return room


def _message_id(reply: wire.ReplyLine) -> int:
    """
    The id a 250 reply gives the message sent.

    @raise Malformed: the reply gives none (a broken or hostile server).
    """
    word = reply.text.split(" ", 1)[0]
    if not (word.isascii() and word.isdigit() and len(word) <= 20):
        shown = wire.escape_controls(reply.text)
        raise Malformed(f"the server's reply gives no message id: {shown}")
    return int(word)


async def connect(
    reactor: Any,
    host: str,
    credentials: Credentials,
    port: int = DEFAULT_PORT,
    server_name: str | None = None,
    timeout: float = 30.0,
    keep_alive: float | None = KEEPALIVE_INTERVAL,
) -> Client:
    """
    Connect to a daemon over mutual TLS and log in.

    @param credentials: our certificate and key, and the CA that signed the
        server's certificate.
    @param server_name: the name the server's certificate must be for; the
        host by default.
    @param timeout: seconds to wait for the connection, the greeting and
        each reply.
    @param keep_alive: seconds between PINGs, or L{None} for none.
    @raise SessionEnded: no session: why, in words, and the exit status
        C{secmsg connect} would give.
    @raise ConfigurationError: a certificate, key or CA file is unusable.
    """
    session = await dial(reactor, host, port, server_name or host, credentials, timeout)
    return await start(reactor, session, timeout, keep_alive)


async def start(
    clock: IReactorTime,
    session: ClientProtocol,
    timeout: float,
    keep_alive: float | None = KEEPALIVE_INTERVAL,
) -> Client:
    """
    The L{Client} of a session once the server has greeted it; tests and
    L{connect} alike.
    """
    greeting = await session.greeted
    if keep_alive is not None:
        session.keep_alive(keep_alive)
    return Client(session, greeting, clock, timeout)
