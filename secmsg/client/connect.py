"""
A session of the secmsg client: connecting over TLS, what C{secmsg connect}
and C{secmsg send} do with the session, and the reactor they run on.

C{connect} on a terminal opens the interactive console
(L{secmsg.client.console}); otherwise it runs the scripted mode
(L{secmsg.client.script}).  C{send} sends one message and says by its exit
status (L{ExitStatus}) how that went.  The options that choose all this are
the command line's (L{secmsg.cli.connect}); what reaches here is host, port,
names, files and seconds.
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

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from secmsg import wire
from secmsg.client.console import run_console
from secmsg.client.jsonlines import json_line, server_line_record
from secmsg.client.protocol import (
    ClientProtocol,
    ExitStatus,
    SessionEnded,
    refusal_status,
)
from secmsg.client.script import run_scripted, standard_input
from secmsg.client.tls import CaOrigin, client_tls_options, load_client_files
from secmsg.errors import ConfigurationError

Talk = Callable[[Any, ClientProtocol], Coroutine[Any, Any, ExitStatus]]
"""What a command does with its session, given the reactor; its exit status."""

Dial = Callable[[Any], defer.Deferred[ClientProtocol]]
"""How a command connects, given the reactor: a call of L{connect}."""


@dataclass(frozen=True)
class Credentials:
    """
    The files a connection needs: our certificate and key, the CA that
    signed the server's certificate.

    @ivar ca_named_by: what named the CA file (C{--ca}, C{--instance},
        C{SECMSG_CA}, C{profile NAME}), for the words when the server's
        certificate does not verify against it.
    """

    certificate: Path
    key: Path
    ca: Path
    ca_named_by: str = "--ca"


def connect(
    reactor: Any,
    host: str,
    port: int,
    server_name: str,
    credentials: Credentials,
    timeout: float,
) -> defer.Deferred[ClientProtocol]:
    """
    Connect over TLS and return the protocol, which then waits for the
    greeting.

    @param server_name: the name the server's certificate must be for.
    @param timeout: seconds to wait for the connection, and then for the
        server at each step.
    @raise ConfigurationError: a certificate, key or CA file is unusable.
    """
    certificate, key, ca = load_client_files(
        credentials.certificate, credentials.key, credentials.ca
    )
    tls = client_tls_options(server_name, ca, certificate, key)
    endpoint = wrapClientTLS(
        tls, HostnameEndpoint(reactor, host, port, timeout=timeout)
    )
    origin = CaOrigin(credentials.ca, credentials.ca_named_by)
    session = ClientProtocol(reactor, server_name, timeout, origin)
    connecting = connectProtocol(endpoint, session)
    connecting.addErrback(_connect_failed, f"{host}:{port}")
    return connecting


def _connect_failed(failure: Failure, where: str) -> None:
    failure.trap(ConnectError, DNSLookupError, defer.CancelledError)
    raise SessionEnded(
        ExitStatus.CONNECTION, f"cannot connect to {where}: {failure.getErrorMessage()}"
    )


async def send_message(
    reactor: IReactorTime,
    session: ClientProtocol,
    text: str,
    timeout: float,
    to: str | None = None,
    room: str | None = None,
) -> ExitStatus:
    """
    Send the one message, C{to} an identity or in a C{room} (joining it
    first); on anything but 250 say so on standard error, with the reply,
    and return the status that names it.  A server that greets and then says
    nothing for C{timeout} seconds is given up on.
    """
    await session.greeted
    words = text.encode("utf-8", "surrogateescape")
    if room:
        name = room.encode("utf-8", "surrogateescape")
        joined = await _answer(reactor, session, b"JOIN " + name, timeout)
        if joined[-1].code != 200:
            return _refused("JOIN", joined[-1])
        replies = await _answer(
            reactor, session, b"SAY " + name + b" " + words, timeout
        )
    else:
        recipient = (to or "").encode("utf-8", "surrogateescape")
        replies = await _answer(
            reactor, session, b"MSG " + recipient + b" " + words, timeout
        )
    if replies[-1].code != 250:
        return _refused("SAY" if room else "MSG", replies[-1])
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


def _refused(verb: str, reply: wire.ReplyLine) -> ExitStatus:
    sys.stderr.write(
        wire.escape_controls(
            f"secmsg: the server refused {verb}: {reply.code} {reply.text}"
        )
        + "\n"
    )
    return refusal_status(reply.code)


def run_client(dial: Dial, talk: Talk, report: Callable[[str], None]) -> int:
    """
    Run the asyncio reactor until C{talk} is done with the session C{dial}
    opens; C{report} why it ended, and return the exit status.

    @param report: writes a line for the user; the command line's escapes
        it and writes it to standard error.
    """

    async def work(reactor: Any) -> ExitStatus:
        return await talk(reactor, await dial(reactor))

    return run_reactor(work, report)


def run_reactor(
    work: Callable[[Any], Coroutine[Any, Any, ExitStatus]],
    report: Callable[[str], None],
) -> int:
    """
    Run the asyncio reactor until C{work}, given the reactor, is done;
    C{report} why a session it had ended, and return the exit status.
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
            status = await work(reactor)
        except SessionEnded as ending:
            if not interrupted:
                report(f"secmsg: {ending.words}")
            status = ending.status
        except ConfigurationError as error:
            report(f"secmsg: {error!s}")
            status = ExitStatus.FAILED
        outcome.append(status)

    def begin() -> None:
        done = defer.Deferred.fromCoroutine(session())
        done.addErrback(_unexpected, report, outcome)
        done.addBoth(lambda _: None if interrupted else reactor.stop())

    reactor.callWhenRunning(begin)
    reactor.run()
    if not outcome or interrupted[0]:
        report("secmsg: interrupted")
        return ExitStatus.INTERRUPTED
    return outcome[0]


def _unexpected(
    failure: Failure, report: Callable[[str], None], outcome: list[int]
) -> None:
    """
    Say what went wrong and record the run as failed, so that the reactor's
    stopping is not taken for an interruption.
    """
    report(f"secmsg: unexpected failure: {failure.getErrorMessage()}")
    outcome.append(ExitStatus.FAILED)


def local_now(clock: IReactorTime) -> datetime:
    """
    The clock's time in the local time zone, to stamp what arrives.
    """
    return datetime.fromtimestamp(clock.seconds()).astimezone()


def connect_talk(
    out: TextIO,
    interactive: bool,
    reader_gone: Callable[[TextIO], None],
    timeout: float,
    dial: Dial,
    as_json: bool = False,
) -> Talk:
    """
    What C{secmsg connect} does with its session: the console on a
    terminal, the scripted mode otherwise.

    @param dial: how the console connects again when the session drops.

    @param reader_gone: told that C{out}'s reader has gone (the scripted
        mode's L{run_scripted}).
    @param timeout: seconds the scripted mode waits for each reply.
    @param as_json: the scripted mode writes each server line as JSON.
    """
    render = _json_server_line if as_json else wire.escape_controls

    async def talk(reactor: Any, session: ClientProtocol) -> ExitStatus:
        if not interactive:
            return await run_scripted(
                session,
                standard_input,
                out,
                sys.stderr,
                reactor,
                reader_gone,
                timeout,
                render,
            )
        greeting = await session.greeted
        console = run_console(
            session,
            greeting,
            lambda: dial(reactor),
            reactor,
            lambda: local_now(reactor),
        )
        # The console awaits prompt_toolkit's asyncio futures, so it runs as
        # an asyncio task, not as a Twisted coroutine.
        return await defer.Deferred.fromFuture(asyncio.ensure_future(console))

    return talk


def _json_server_line(text: str) -> str:
    return json_line(server_line_record(text))
