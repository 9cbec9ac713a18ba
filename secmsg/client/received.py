"""
A message as a program receives it: the record that C{secmsg listen}, its
JSON lines and the client API (L{secmsg.client.api}) hand on, made from
the server's C{MSG}, C{SAY} and C{BROADCAST} pushes.

The text is kept exactly as the server sent it; whoever shows it escapes
it (L{secmsg.client.display}, L{secmsg.client.jsonlines}).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from secmsg import wire
from secmsg.client.display import show_push

KINDS = {"MSG": "direct", "SAY": "room", "BROADCAST": "broadcast"}
"""The push that carries each kind of message, and the kind's name."""

_PUSHES = {kind: push for push, kind in KINDS.items()}


@dataclass(frozen=True)
class Message:
    """
    One message received.

    @ivar id: the daemon's id for it, for C{ACK}; ids increase.
    @ivar time: when the daemon accepted it, as the protocol writes it
        (C{2026-11-27T16:55:54Z}).
    @ivar kind: C{direct}, C{room} or C{broadcast}.
    @ivar room: the room it was said in, or L{None}.
    @ivar redelivered: the server pushed it before, to a session that ended
        before it was acknowledged; a program that has its id drops it.
    """

    id: int
    time: str
    kind: str
    sender: str
    room: str | None
    text: str
    redelivered: bool


def message_from_push(push: wire.PushLine) -> Message | None:
    """
    The message a push carries, or L{None} for any other push (a notice, a
    presence line this client does not know) or a message push whose id is
    not an id, which no one could acknowledge.
    """
    kind = KINDS.get(push.kind)
    if kind is None or not _is_id(push.fields[0]):
        return None
    if kind == "room":
        message_id, time, room, sender, text = push.fields
    else:
        message_id, time, sender, text = push.fields
        room = None
    return Message(int(message_id), time, kind, sender, room, text, push.redelivery)


def _is_id(word: str) -> bool:
    return word.isascii() and word.isdigit() and len(word) <= 18


def show_message(message: Message, arrived: datetime) -> str:
    """
    The message as the terminal client shows it, escaped: one line, with
    who, where and when.
    """
    where = () if message.room is None else (message.room,)
    push = wire.PushLine(
        _PUSHES[message.kind],
        (str(message.id), message.time, *where, message.sender, message.text),
        message.redelivered,
    )
    return show_push(push, arrived)
