"""
C{secmsg connect} and C{secmsg send}: their options, the connection, and
the scripted mode.

C{connect} on a terminal opens the interactive console
(L{secmsg.console}); otherwise it reads command lines from standard input,
writes the server's lines (escaped) to standard output, and exits once the
last command is answered, as C{nc} would.  C{send} sends one message and
says by its exit status (L{ExitStatus}) how that went.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from OpenSSL import SSL, crypto
from twisted.internet import defer, stdio
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python import usage
from twisted.python.failure import Failure

from secmsg import wire
from secmsg.client import ClientProtocol, ExitStatus, SessionEnded
from secmsg.client_tls import client_tls_options
from secmsg.command_line import CommandOptions
from secmsg.console import run_console
from secmsg.errors import ConfigurationError, Malformed
from secmsg.files import read_bytes

DEFAULT_PORT = 7443
CONNECT_TIMEOUT = 10.0
"""Seconds to wait for the TCP connection before giving up."""

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


def parse_address(address: str) -> tuple[str, int]:
    """
    Split C{HOST[:PORT]}; an IPv6 address with a port is written
    C{[::1]:7443}, and one without may be written bare.

    @raise usage.UsageError: the port is not a port number.
    """
    host, port = address, str(DEFAULT_PORT)
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, port = address.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise usage.UsageError(f"{address!r} is not HOST[:PORT]")
    return host, int(port)


class ConnectionOptions(CommandOptions):
    optParameters = [
        ["cert", None, None, "Our certificate (PEM)."],
        ["key", None, None, "Our private key (PEM)."],
        ["ca", None, None, "The CA that signed the server's certificate (PEM)."],
        ["instance", None, None, "A secmsg init or secmsg pki directory ..."],
        ["as", None, None, "... and the name of our certificate in it."],
        ["server-name", None, None, "The name to check the server's certificate for."],
    ]

    def address(self, address: str) -> None:
        self["host"], self["port"] = parse_address(address)

    def postOptions(self) -> None:
        if self["instance"]:
            if not self["as"]:
                raise usage.UsageError("--instance needs --as NAME")
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
    certificate = read_bytes(credentials.certificate)
    key = read_bytes(credentials.key)
    ca = read_bytes(credentials.ca)
    try:
        tls = client_tls_options(options.server_name, ca, certificate, key)
    except (ValueError, SSL.Error, crypto.Error) as error:
        raise ConfigurationError(
            f"{credentials.certificate}, {credentials.key}, {credentials.ca}",
            f"not a usable certificate, key and CA ({error})",
        ) from None
    endpoint = wrapClientTLS(
        tls,
        HostnameEndpoint(
            reactor, options["host"], options["port"], timeout=CONNECT_TIMEOUT
        ),
    )
    session = ClientProtocol(reactor, options.server_name)
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
    session: ClientProtocol, stdin_protocol: Callable[[Protocol], Any], out: TextIO
) -> ExitStatus:
    """
    Send standard input's lines, print every server line, and end once the
    last command is answered.

    @param stdin_protocol: attaches a protocol to standard input.
    """

    def printed(text: str) -> None:
        out.write(wire.escape_controls(text) + "\n")
        out.flush()

    session.on_line = printed
    await session.greeted
    stdin_protocol(_ScriptFeeder(session))
    ending = await session.ended
    if ending.status is not ExitStatus.OK:
        raise ending
    return ending.status


class _ScriptFeeder(Protocol):
    """
    Feeds standard input's lines to the session as commands, and closes
    the session once input has ended and every command is answered.
    """

    def __init__(self, session: ClientProtocol) -> None:
        self._session = session
        self._framer = wire.LineFramer(wire.MAX_LINE_LENGTH * 16)
        self._input_ended = False
        self._paused = False

    def dataReceived(self, data: bytes) -> None:
        for frame in self._framer.feed(data):
            if frame is wire.OVERLONG:
                sys.stderr.write("secmsg: skipped an over-long input line\n")
            elif frame.strip(b" \t"):
                answered = self._session.command(frame)
                answered.addBoth(self._answered)
        if self._session.outstanding >= PIPELINE_LIMIT and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _answered(self, result: object) -> None:
        if self._paused and self._session.outstanding < PIPELINE_LIMIT // 2:
            self._paused = False
            self.transport.resumeProducing()
        self._finish_if_done()

    def connectionLost(self, reason: Failure) -> None:
        self._input_ended = True
        self._finish_if_done()

    def _finish_if_done(self) -> None:
        session = self._session
        if self._input_ended and not session.outstanding and not session.ended.called:
            session.close()


async def run_send(session: ClientProtocol, options: SendOptions) -> ExitStatus:
    """
    Send the one message; on anything but 250 write the reply to standard
    error and return the status that names it.
    """
    await session.greeted
    text = options["text"].encode("utf-8", "surrogateescape")
    if options["room"]:
        room = options["room"].encode("utf-8", "surrogateescape")
        joined = await session.command(b"JOIN " + room)
        if joined[-1].code != 200:
            return _refused(joined[-1])
        replies = await session.command(b"SAY " + room + b" " + text)
    else:
        recipient = options["to"].encode("utf-8", "surrogateescape")
        replies = await session.command(b"MSG " + recipient + b" " + text)
    if replies[-1].code != 250:
        return _refused(replies[-1])
    # The message is accepted; however the goodbye goes, that stays true.
    with suppress(SessionEnded):
        await session.command(b"QUIT")
    return ExitStatus.OK


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

    async def session() -> None:
        try:
            client = await connect(reactor, options)
            status = await talk(reactor, client)
        except SessionEnded as ending:
            sys.stderr.write(f"secmsg: {wire.escape_controls(ending.words)}\n")
            status = ending.status
        except ConfigurationError as error:
            sys.stderr.write(f"secmsg: {error}\n")
            status = ExitStatus.FAILED
        outcome.append(status)

    def begin() -> None:
        done = defer.Deferred.fromCoroutine(session())
        done.addErrback(_unexpected)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(begin)
    reactor.run()
    return outcome[0] if outcome else ExitStatus.FAILED


def _unexpected(failure: Failure) -> None:
    sys.stderr.write(f"secmsg: unexpected failure: {failure.getErrorMessage()}\n")


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
            return await run_scripted(session, stdio.StandardIO, out)
        greeting = await session.greeted
        console = run_console(session, greeting, lambda: local_now(reactor))
        # The console awaits prompt_toolkit's asyncio futures, so it runs as
        # an asyncio task, not as a Twisted coroutine.
        return await defer.Deferred.fromFuture(asyncio.ensure_future(console))

    return talk
