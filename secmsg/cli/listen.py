"""
C{secmsg listen}: its options, and the glue that turns them into a
L{Listener} writing to standard output.

It takes the same daemon address, certificate options and profiles as
C{connect} and C{send} (L{ConnectionOptions}), and adds C{--json} and
C{--join}.
"""

from __future__ import annotations

import io
import sys
from typing import Any

from twisted.internet import defer
from twisted.python import usage

from secmsg import wire
from secmsg.cli.connection import ConnectionOptions
from secmsg.cli.options import complain, stop_writing
from secmsg.client.api import Client, start
from secmsg.client.connect import local_now, run_reactor
from secmsg.client.jsonlines import json_line, message_record
from secmsg.client.listener import Listener, Render
from secmsg.client.protocol import CLOSE_GRACE, ExitStatus
from secmsg.client.received import Message, show_message


class ListenOptions(ConnectionOptions):
    """
    secmsg listen HOST[:PORT]|PROFILE [--json] [--join #ROOM]... [certificate options]
    """

    synopsis = (
        "HOST[:PORT]|PROFILE [--json] [--join #ROOM]... "
        "[--profile NAME | --instance DIR --as NAME | --cert F --key F --ca F]"
    )
    optFlags = [
        ["json", None, "Write each message as a JSON object on one line."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["join"] = []

    def opt_join(self, room: str) -> None:
        """
        Join this room at every login; give it once for each room.
        """
        if not wire.ROOM_NAME.fullmatch(room.lower()):
            raise usage.UsageError(f"--join {room!r} is not a room (#name)")
        self["join"].append(room)

    def parseArgs(self, *words: str) -> None:
        if self.take_server(words):
            raise usage.UsageError("give the daemon's HOST[:PORT], and only that")


def run_listen(options: ListenOptions) -> int:
    """
    Run C{secmsg listen} until it is stopped; return its exit status.
    """

    if isinstance(sys.stdout, io.TextIOWrapper):
        # Lines are UTF-8 for their reader, whatever the locale says.
        sys.stdout.reconfigure(encoding="utf-8")

    async def work(reactor: Any) -> ExitStatus:
        async def dial() -> Client:
            session = await options.dial(reactor)
            return await start(reactor, session, options["timeout"])

        listener = Listener(
            dial,
            sys.stdout,
            _render(options["json"], reactor),
            reactor,
            complain,
            tuple(options["join"]),
        )
        # SIGTERM and Ctrl-C stop the reactor; leave with QUIT first, so
        # that the acknowledgements sent are answered.
        reactor.addSystemEventTrigger(
            "before", "shutdown", _stop_within, listener, reactor, options["timeout"]
        )
        status = await listener.run()
        if status is ExitStatus.OK:
            stop_writing(sys.stdout)
        return status

    return run_reactor(work, complain)


def _stop_within(
    listener: Listener, reactor: Any, timeout: float
) -> defer.Deferred[None]:
    """
    Stop the listener, but let the reactor stop however the server answers:
    its QUIT has the timeout and its hang-up a grace, and past both the
    reactor stops anyway.
    """
    stopping = listener.stop()
    stopping.addTimeout(timeout + CLOSE_GRACE, reactor)
    stopping.addErrback(lambda failure: failure.trap(defer.TimeoutError))
    return stopping


def _render(as_json: bool, clock: Any) -> Render:
    if as_json:
        return lambda message: json_line(message_record(message))

    def shown(message: Message) -> str:
        return show_message(message, local_now(clock))

    return shown
