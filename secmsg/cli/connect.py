"""
C{secmsg connect} and C{secmsg send}: their options, and the glue that
turns them into a session of the client (L{secmsg.client.connect}).

Both take the daemon's C{HOST[:PORT]} and our certificate, key and CA,
named one by one or as a name in a C{secmsg init} or C{secmsg pki}
directory; C{send} adds the recipient and the text (C{-}: read from
standard input).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python import usage

from secmsg import wire
from secmsg.cli.message_text import read_message_text
from secmsg.cli.options import CommandOptions, complain, stop_writing
from secmsg.client.connect import (
    Credentials,
    Dial,
    connect,
    connect_talk,
    run_client,
    send_message,
)
from secmsg.client.protocol import ClientProtocol, ExitStatus
from secmsg.errors import Malformed

DEFAULT_PORT = 7443
REPLY_TIMEOUT = 30.0
"""Seconds to wait for the server at each step, by default."""


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
    """
    What C{connect} and C{send} share: the daemon's address, our
    certificate and key, the CA, and how long to wait.  Once parsed, the
    files are in C{credentials} whichever way they were named.
    """

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
        """
        Take the positional C{HOST[:PORT]}.
        """
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
        """
        The name the server's certificate must be for: C{--server-name},
        or else the host connected to.
        """
        return self["server-name"] or self["host"]


class ConnectOptions(ConnectionOptions):
    """
    secmsg connect HOST[:PORT] (--instance DIR --as NAME | --cert --key --ca)
    """

    synopsis = "HOST[:PORT] (--instance DIR --as NAME | --cert F --key F --ca F)"
    optFlags = [
        ["json", None, "Scripted: write each server line as a JSON object."],
    ]

    # usage.Options calls parseArgs with the words left on the line, as
    # many as the subclass takes; Twisted types it as taking none.
    def parseArgs(self, address: str) -> None:  # type: ignore[override]
        self.address(address)


class SendOptions(ConnectionOptions):
    """
    secmsg send HOST[:PORT] (--to NAME | --room #ROOM) TEXT
    """

    synopsis = "HOST[:PORT] (--to NAME | --room #ROOM) [certificate options] (TEXT | -)"
    optParameters = [
        ["to", None, None, "Send a direct message to this identity."],
        ["room", None, None, "Say it in this room (joining it first)."],
    ]

    # usage.Options calls parseArgs with the words left on the line, as
    # many as the subclass takes; Twisted types it as taking none.
    def parseArgs(self, address: str, *words: str) -> None:  # type: ignore[override]
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
    talk = connect_talk(sys.stdout, interactive, stop_writing, options["json"])
    return run_client(_dial(options), talk, complain)


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

    return run_client(_dial(options), talk, complain)


def _dial(options: ConnectionOptions) -> Dial:
    """
    The client's L{connect}, with the address, names, files and timeout
    the options give.
    """

    def dial(reactor: Any) -> Deferred[ClientProtocol]:
        return connect(
            reactor,
            options["host"],
            options["port"],
            options.server_name,
            options.credentials,
            options["timeout"],
        )

    return dial
