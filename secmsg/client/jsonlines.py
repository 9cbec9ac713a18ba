"""
JSON lines for programs: C{secmsg listen --json} writes a received
message as one JSON object a line, and C{secmsg connect --json} every
server line.

A JSON line is as safe on a terminal as the escaped text is: every
character that L{secmsg.wire.escape_controls} would escape is written as a
JSON escape (C{\\u001b}, a surrogate pair beyond the BMP), so that the line
drives no terminal and hides nothing, and a program that parses it still
gets the text exactly as it was sent.
"""

from __future__ import annotations

import json
import re
from typing import Any

from secmsg import wire
from secmsg.client.received import Message, message_from_push

_PUSH_WORD = re.compile(r"[A-Z]{1,32}")
"""How every line the server sends unasked starts (docs/protocol.md)."""


def json_line(record: dict[str, Any]) -> str:
    """
    One JSON object on one line, with nothing a terminal would act on.
    """
    text = json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
    if wire.escape_controls(text) == text:
        return text
    # Such characters can only be inside the strings, where a JSON escape
    # means the same character.
    return "".join(
        _json_escape(character)
        if wire.escape_controls(character) != character
        else character
        for character in text
    )


def _json_escape(character: str) -> str:
    encoded = character.encode("utf-16-be")
    return "".join(
        f"\\u{int.from_bytes(encoded[i : i + 2], 'big'):04x}"
        for i in range(0, len(encoded), 2)
    )


def message_record(message: Message) -> dict[str, Any]:
    """
    The fields of a message, as C{secmsg listen --json} writes them.
    """
    return {
        "id": message.id,
        "time": message.time,
        "kind": message.kind,
        "sender": message.sender,
        "room": message.room,
        "text": message.text,
        "redelivered": message.redelivered,
    }


def server_line_record(text: str) -> dict[str, Any]:
    """
    A server line as C{secmsg connect --json} writes it: a reply's code,
    whether it is the reply's last line, and its text; a message push as
    C{listen} writes it, with the push's word; any other push by its word
    and the rest of the line, so that a line this client does not know yet
    is passed on rather than lost.
    """
    line = wire.parse_server_line(text)
    if isinstance(line, wire.ReplyLine):
        return {"reply": line.code, "final": line.final, "text": line.text}
    message = message_from_push(line)
    if message is not None:
        return {"push": line.kind, **message_record(message)}
    word, _, rest = text.partition(" ")
    if word == "REDELIVERED" or not _PUSH_WORD.fullmatch(word):
        return {"push": None, "text": text}
    return {"push": word, "text": rest}
