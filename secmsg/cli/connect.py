"""
C{secmsg connect} and C{secmsg send}: their options, and the glue that
turns them into a session of the client (L{secmsg.client.connect}).

Both take the daemon's C{HOST[:PORT]} and our certificate, key and CA,
named one by one, as a name in a C{secmsg init} or C{secmsg pki}
directory, or by a profile (L{secmsg.cli.connection}); C{send} adds the
recipient and the text (C{-}: read from standard input).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from secmsg import wire
from secmsg.cli.connection import ConnectionOptions as ConnectionOptions
from secmsg.cli.connection import parse_address as parse_address
from secmsg.cli.message_text import read_message_text
from secmsg.cli.options import complain, stop_writing
from secmsg.client.connect import (
    connect_talk,
    run_client,
    send_message,
)
from secmsg.client.protocol import ClientProtocol, ExitStatus
from secmsg.errors import Malformed


class ConnectOptions(ConnectionOptions):
    """
    secmsg connect HOST[:PORT]|PROFILE [certificate options]
    """

    synopsis = (
        "HOST[:PORT]|PROFILE "
        "[--profile NAME | --instance DIR --as NAME | --cert F --key F --ca F]"
    )
    optFlags = [
        ["json", None, "Scripted: write each server line as a JSON object."],
    ]

    def parseArgs(self, *words: str) -> None:
        rest = self.take_server(words)
        if rest:
            raise usage.UsageError(f"unexpected {rest[0]!r} after the server")


class SendOptions(ConnectionOptions):
    """
    secmsg send HOST[:PORT] (--to NAME | --room #ROOM) TEXT
    """

    synopsis = (
        "HOST[:PORT]|PROFILE (--to NAME | --room #ROOM) [certificate options] "
        "(TEXT | -)"
    )
    optParameters = [
        ["to", None, None, "Send a direct message to this identity."],
        ["room", None, None, "Say it in this room (joining it first)."],
    ]

    def parseArgs(self, *words: str) -> None:
        # A profile that names the server leaves every word to the text.
        self["text"] = " ".join(self.take_server(words, text_follows=True))

    def postOptions(self) -> None:
        super().postOptions()
        if bool(self["to"]) == bool(self["room"]):
            raise usage.UsageError("give one of --to NAME or --room #ROOM")
        if self["to"] and not wire.NAME_TOKEN.fullmatch(self["to"]):
            raise usage.UsageError(f"--to {self['to']!r} is not an identity")
        if self["room"] and not wire.ROOM_NAME.fullmatch(self["room"].lower()):
            raise usage.UsageError(f"--room {self['room']!r} is not a room (#name)")
        if self["text"] == "-":
            command = f"SAY {self['room']} " if self["room"] else f"MSG {self['to']} "
            self["text"] = read_message_text(sys.stdin.buffer, command)
        if not self["text"].strip(" \t"):
            raise usage.UsageError("give the text to send")
        try:
            wire.decode_line(self["text"].encode("utf-8", "surrogateescape"))
        except Malformed as error:
            raise usage.UsageError(
                f"the text cannot be sent: {error} (send one line of text)"
            ) from None


def run_connect(options: ConnectOptions) -> int:
    """
    Run C{secmsg connect}; return its exit status.  The console opens only
    when both standard input and standard output are a terminal, and no
    JSON is asked for.
    """
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not options["json"]
    talk = connect_talk(
        sys.stdout,
        interactive,
        stop_writing,
        options["timeout"],
        options.dial,
        options["json"],
    )
    return run_client(options.dial, talk, complain)


def run_send(options: SendOptions) -> int:
    """
    Run C{secmsg send}: the one message its options name; return its exit
    status.
    """

    async def talk(reactor: Any, session: ClientProtocol) -> ExitStatus:
        return await send_message(
            reactor,
            session,
            options["text"],
            options["timeout"],
            to=options["to"],
            room=options["room"],
        )

    return run_client(options.dial, talk, complain)
