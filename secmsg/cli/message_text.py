"""
The text of C{secmsg send} read from standard input (C{send ... -}): one
message of one line, which the send options then check as they check text
given on the command line.
"""

from __future__ import annotations

from typing import BinaryIO

from twisted.python import usage

from secmsg import wire


def read_message_text(stream: BinaryIO, command: str) -> str:
    """
    Read one message from C{stream}: everything up to its end, less one
    line ending at the end.  Bytes that are not UTF-8 are kept as
    surrogate escapes, for the options' own check to refuse in words.

    @param command: what will go before the text on its line (C{MSG bob }),
        which shares the line's length with it.
    @raise usage.UsageError: more than one line, or longer than fits in
        the one line the message must go as.
    """
    room = wire.MAX_LINE_LENGTH - len(command.encode("utf-8", "surrogateescape"))
    data = stream.read(room + 3)
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    if b"\n" in data:
        raise usage.UsageError(
            "standard input holds more than one line; send one message of one line"
        )
    if len(data) > room:
        raise usage.UsageError(
            f"the text on standard input is longer than the {room} bytes "
            "that fit in one message"
        )
    return data.decode("utf-8", "surrogateescape")
