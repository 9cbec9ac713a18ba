"""
C{secmsg connect} and C{secmsg send}: their options, the connection, and
the scripted mode.

C{connect} on a terminal opens the interactive console
(L{secmsg.client.console}); otherwise it reads command lines from standard input,
writes the server's lines (escaped) to standard output, and exits once the
last command is answered, as C{nc} would.  C{send} sends one message and
says by its exit status (L{ExitStatus}) how that went.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from twisted.internet import defer, stdio
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python import usage
from twisted.python.failure import Failure

from secmsg import wire
from secmsg.cli.options import CommandOptions, complain, stop_writing
from secmsg.client.console import run_console
from secmsg.client.protocol import ClientProtocol, ExitStatus, SessionEnded
from secmsg.client.tls import client_tls_options, load_client_files
from secmsg.errors import CommandError, ConfigurationError, Malformed
from secmsg.rate import Rate, RateLimiter

DEFAULT_PORT = 7443
REPLY_TIMEOUT = 30.0
"""Seconds to wait for the server at each step, by default."""

PIPELINE_LIMIT = 64
"""Commands the scripted mode sends ahead of their replies before it stops
reading standard input, so that a long script does not pile up in memory."""


Talk = Callable[[Any, ClientProtocol], Coroutine[Any, Any, ExitStatus]]
"""What a command does with its session, given the reactor; its exit status."""


@dataclass(frozen=True)
class Credentials:
    """
    The files a connection needs: our certificate and key, the CA that
    signed the server's certificate.
    """

    certificate: Path
    key: Path
    ca: Path


def _seconds(text: str) -> float:
    """
    A number of seconds, as --timeout takes it.
    """
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 3600:
        raise ValueError(
            f"--timeout takes seconds, more than 0 and at most 3600, not {text!r}"
        )
    return seconds


def parse_address(address: str) -> tuple[str, int]:
    """
    Split C{HOST[:PORT]}; an IPv6 address with a port is written
    C{[::1]:7443}, and one without may be written bare.

    @raise usage.UsageError: the host is not a host name or an IP address,
        or the port is not a port number.
    """
    host, port = address, str(DEFAULT_PORT)
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, port = address.split(":")
    valid_port = port.isascii() and port.isdigit() and 0 < int(port) < 65536
    if not is_host(host) or not valid_port:
        raise usage.UsageError(f"{address!r} is not HOST[:PORT]")
    return host, int(port)


def is_host(text: str) -> bool:
    """
    Whether C{text} is an IP address or a DNS host name.
    """
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOST_NAME.fullmatch(text))
    return True


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?"
)


class ConnectionOptions(CommandOptions):
    optParameters = [
        ["cert", None, None, "Our certificate (PEM)."],
        ["key", None, None, "Our private key (PEM)."],
        ["ca", None, None, "The CA that signed the server's certificate (PEM)."],
        ["instance", None, None, "A secmsg init or secmsg pki directory ..."],
        ["as", None, None, "... and the name of our certificate in it."],
        ["server-name", None, None, "The name to check the server's certificate for."],
        [
            "timeout",
            None,
            REPLY_TIMEOUT,
            "Seconds to wait for the server to connect, to greet, and (send) "
            "to answer.",
            _seconds,
        ],
    ]

    def address(self, address: str) -> None:
        self["host"], self["port"] = parse_address(address)

    def postOptions(self) -> None:
        if self["server-name"] and not is_host(self["server-name"]):
            raise usage.UsageError(
                f"--server-name {self['server-name']!r} is not a host"
            )
        if self["instance"]:
            if not self["as"]:
                raise usage.UsageError("--instance needs --as NAME")
            if self["cert"] or self["key"]:
                raise usage.UsageError("give --instance or --cert and --key, not both")
            instance = Path(self["instance"])
            self.credentials = Credentials(
                instance / "clients" / f"{self['as']}.pem",
                instance / "clients" / f"{self['as']}.key",
                Path(self["ca"]) if self["ca"] else instance / "ca.pem",
            )
        elif self["cert"] and self["key"] and self["ca"]:
            self.credentials = Credentials(
                Path(self["cert"]), Path(self["key"]), Path(self["ca"])
            )
        else:
            raise usage.UsageError(
                "give --cert, --key and --ca, or --instance DIR --as NAME"
            )

    @property
    def server_name(self) -> str:
        return self["server-name"] or self["host"]


class ConnectOptions(ConnectionOptions):
    """
    secmsg connect HOST[:PORT] (--instance DIR --as NAME | --cert --key --ca)
    """

    synopsis = "HOST[:PORT] (--instance DIR --as NAME | --cert F --key F --ca F)"

    def parseArgs(self, address: str) -> None:
        self.address(address)


class SendOptions(ConnectionOptions):
    """
    secmsg send HOST[:PORT] (--to NAME | --room #ROOM) TEXT
    """

    synopsis = "HOST[:PORT] (--to NAME | --room #ROOM) [certificate options] TEXT"
    optParameters = [
        ["to", None, None, "Send a direct message to this identity."],
        ["room", None, None, "Say it in this room (joining it first)."],
    ]

    def parseArgs(self, address: str, *words: str) -> None:
        self.address(address)
        self["text"] = " ".join(words)

    def postOptions(self) -> None:
        super().postOptions()
        if bool(self["to"]) == bool(self["room"]):
            raise usage.UsageError("give one of --to NAME or --room #ROOM")
        if self["to"] and not wire.NAME_TOKEN.fullmatch(self["to"]):
            raise usage.UsageError(f"--to {self['to']!r} is not an identity")
        if self["room"] and not wire.ROOM_NAME.fullmatch(self["room"].lower()):
            raise usage.UsageError(f"--room {self['room']!r} is not a room (#name)")
        if not self["text"].strip(" \t"):
            raise usage.UsageError("give the text to send")
        try:
            wire.decode_line(self["text"].encode("utf-8", "surrogateescape"))
        except Malformed as error:
            raise usage.UsageError(
                f"the text cannot be sent: {error} (send one line of text)"
            ) from None


def connect(reactor: Any, options: ConnectionOptions) -> defer.Deferred[ClientProtocol]:
    """
    Connect over TLS and return the protocol, which then waits for the
    greeting.

    @raise ConfigurationError: a certificate, key or CA file is unusable.
    """
    credentials = options.credentials
    certificate, key, ca = load_client_files(
        credentials.certificate, credentials.key, credentials.ca
    )
    tls = client_tls_options(options.server_name, ca, certificate, key)
    timeout = options["timeout"]
    endpoint = wrapClientTLS(
        tls,
        HostnameEndpoint(reactor, options["host"], options["port"], timeout=timeout),
    )
    session = ClientProtocol(reactor, options.server_name, timeout)
    where = f"{options['host']}:{options['port']}"
    connecting = connectProtocol(endpoint, session)
    connecting.addErrback(_connect_failed, where)
    return connecting


def _connect_failed(failure: Failure, where: str) -> None:
    failure.trap(ConnectError, DNSLookupError, defer.CancelledError)
    raise SessionEnded(
        ExitStatus.CONNECTION, f"cannot connect to {where}: {failure.getErrorMessage()}"
    )


async def run_scripted(
    session: ClientProtocol,
    attach_stdin: Callable[[Protocol], object],
    out: TextIO,
    err: TextIO,
    clock: IReactorTime,
) -> ExitStatus:
    """
    Send standard input's lines, print every server line, and end once the
    last command is answered.

    Lines go to C{out} with blocking writes: a reader slower than the
    server holds the client up rather than losing lines.

    @param attach_stdin: connects a protocol to standard input.
    @param clock: what pacing to the server's rate is timed by.
    """

    def printed(text: str) -> None:
        try:
            out.write(wire.escape_controls(text) + "\n")
            out.flush()
        except BrokenPipeError:
            # The reader (head, say) has had enough: leave, as it chose.
            stop_writing(out)
            session.on_line = lambda text: None
            session.close()

    session.on_line = printed
    greeting = await session.greeted
    rate = wire.parse_greeting_rate(greeting.text)
    attach_stdin(_ScriptFeeder(session, err, clock, rate))
    ending = await session.ended
    if ending.status is not ExitStatus.OK:
        raise ending
    return ending.status


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
    """

    def __init__(
        self,
        session: ClientProtocol,
        err: TextIO,
        clock: IReactorTime,
        rate: tuple[float, int, int] | None,
    ) -> None:
        self._session = session
        self._err = err
        self._clock = clock
        # A little under the server's rate, from one token fewer than it
        # said were left: its bucket and ours refill at moments a network
        # apart.
        self._buckets = RateLimiter(clock)
        self._rate = None
        if rate is not None:
            per_second, burst, left = rate
            self._rate = Rate(per_second * 0.9, burst)
            self._buckets.begin(_OURS, self._rate, left - 1)
        self._waiting: deque[bytes] = deque()
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
            wait = self._wait_for(self._waiting[0])
            if wait:
                self._pacing = self._clock.callLater(wait, self._paced)
                return
            frame = self._waiting.popleft()
            self._session.command(frame).addBoth(self._answered)

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
            self._err.write(
                f"secmsg: line {self._line_number} not sent: {error.text}\n"
            )
            return
        if not wire.is_blank(text):
            self._waiting.append(frame)

    def _answered(self, result: object) -> None:
        self._throttle()
        self._finish_if_done()

    def connectionLost(self, reason: Failure) -> None:
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


async def run_send(
    reactor: IReactorTime, session: ClientProtocol, options: SendOptions
) -> ExitStatus:
    """
    Send the one message; on anything but 250 write the reply to standard
    error and return the status that names it.  A server that greets and
    then says nothing for C{--timeout} seconds is given up on.
    """
    await session.greeted
    timeout = options["timeout"]
    text = options["text"].encode("utf-8", "surrogateescape")
    if options["room"]:
        room = options["room"].encode("utf-8", "surrogateescape")
        joined = await _answer(reactor, session, b"JOIN " + room, timeout)
        if joined[-1].code != 200:
            return _refused(joined[-1])
        replies = await _answer(reactor, session, b"SAY " + room + b" " + text, timeout)
    else:
        recipient = options["to"].encode("utf-8", "surrogateescape")
        replies = await _answer(
            reactor, session, b"MSG " + recipient + b" " + text, timeout
        )
    if replies[-1].code != 250:
        return _refused(replies[-1])
    # The message is accepted; however the goodbye goes, that stays true.
    with suppress(SessionEnded, defer.TimeoutError):
        await _answer(reactor, session, b"QUIT", timeout)
    return ExitStatus.OK


async def _answer(
    reactor: IReactorTime, session: ClientProtocol, line: bytes, timeout: float
) -> list[wire.ReplyLine]:
    waiting = session.command(line)
    waiting.addTimeout(timeout, reactor)
    try:
        return await waiting
    except defer.TimeoutError:
        raise SessionEnded(
            ExitStatus.CONNECTION,
            f"no reply from the server within {timeout:g} seconds",
        ) from None


def _refused(reply: wire.ReplyLine) -> ExitStatus:
    sys.stderr.write(wire.escape_controls(f"{reply.code} {reply.text}") + "\n")
    return {403: ExitStatus.NOT_PERMITTED, 404: ExitStatus.NO_SUCH_RECIPIENT}.get(
        reply.code, ExitStatus.FAILED
    )


def run_client(options: ConnectionOptions, talk: Talk) -> int:
    """
    Run the asyncio reactor until C{talk} is done with the session; report
    why it ended on standard error, and return the exit status.
    """
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor

    outcome: list[int] = []
    # Whether the reactor was stopped before the session was over: by
    # Ctrl-C or SIGTERM, whose own handlers stop it.
    interrupted: list[bool] = []
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: interrupted.append(not outcome)
    )

    async def session() -> None:
        try:
            client = await connect(reactor, options)
            status = await talk(reactor, client)
        except SessionEnded as ending:
            if not interrupted:
                complain(f"secmsg: {ending.words}")
            status = ending.status
        except ConfigurationError as error:
            complain(f"secmsg: {error!s}")
            status = ExitStatus.FAILED
        outcome.append(status)

    def begin() -> None:
        done = defer.Deferred.fromCoroutine(session())
        done.addErrback(_unexpected)
        done.addBoth(lambda _: None if interrupted else reactor.stop())

    reactor.callWhenRunning(begin)
    reactor.run()
    if not outcome or interrupted[0]:
        complain(f"secmsg: {'interrupted'}")
        return ExitStatus.INTERRUPTED
    return outcome[0]


def _unexpected(failure: Failure) -> None:
    complain(f"secmsg: {f'unexpected failure: {failure.getErrorMessage()}'}")


def local_now(clock: IReactorTime) -> datetime:
    """
    The clock's time in the local time zone, to stamp what arrives.
    """
    return datetime.fromtimestamp(clock.seconds()).astimezone()


def connect_talk(out: TextIO, interactive: bool) -> Talk:
    """
    What C{secmsg connect} does with its session: the console on a
    terminal, the scripted mode otherwise.
    """

    async def talk(reactor: Any, session: ClientProtocol) -> ExitStatus:
        if not interactive:
            return await run_scripted(session, standard_input, out, sys.stderr, reactor)
        greeting = await session.greeted
        console = run_console(session, greeting, lambda: local_now(reactor))
        # The console awaits prompt_toolkit's asyncio futures, so it runs as
        # an asyncio task, not as a Twisted coroutine.
        return await defer.Deferred.fromFuture(asyncio.ensure_future(console))

    return talk
