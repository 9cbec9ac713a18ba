"""
What the daemons of a cluster tell each other over the bus, one JSON
object a bus message, and reading it back.

What comes off the bus is checked as any input is: a bus message that is
not one of these, whole and well-typed, is refused with L{BadEvent} and
changes nothing, so that a stranger on the bus, or a daemon of another
version, cannot make a daemon fail; and names, rooms and text must be what
a client could have sent (L{secmsg.wire}), so that nothing from the bus
reaches a terminal with a control character in it or breaks a line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from secmsg import wire
from secmsg.daemon.store.shared_database import Segment
from secmsg.errors import Malformed
from secmsg.messages import Kind, Stored, from_microseconds, to_microseconds


class BadEvent(ValueError):
    """
    A bus message that is none of the events.
    """


@dataclass(frozen=True)
class Committed:
    """
    A daemon committed a segment of messages.
    """

    node: str
    segment: Segment


@dataclass(frozen=True)
class Changed:
    """
    A daemon changed what the store keeps of an identity: its rooms, what
    waits for it, or whether it is known.
    """

    node: str
    identity: str


@dataclass(frozen=True)
class Present:
    """
    A daemon's sessions, by identity, sent every beat: what its peers
    know of who is online there, and that it is alive; and the last id of
    the cluster's messages it has had, by which they find one the bus
    lost.
    """

    node: str
    sessions: dict[str, int]
    head: int


@dataclass(frozen=True)
class Announced:
    """
    A line for the sessions of other daemons: C{ONLINE}, C{OFFLINE},
    C{JOINED} or C{PARTED}, about C{identity}; for a room's readers if
    C{room} is set, else for those that hold PRESENCE.
    """

    node: str
    word: str
    identity: str
    room: str | None


@dataclass(frozen=True)
class Kicked:
    """
    An operator kicked an identity: every daemon ends its sessions.
    """

    node: str
    identity: str
    by: str
    reason: str


@dataclass(frozen=True)
class Leaving:
    """
    A daemon is shutting down: its sessions are gone.
    """

    node: str


Event = Committed | Changed | Present | Announced | Kicked | Leaving

WORDS = ("ONLINE", "OFFLINE", "JOINED", "PARTED")


def encode(event: Event) -> str:
    """
    The bus message of C{event}.
    """
    if isinstance(event, Committed):
        segment = event.segment
        fields: dict[str, Any] = {
            "previous": segment.previous,
            "last": segment.last,
            "messages": [_message_fields(m) for m in segment.messages],
        }
    elif isinstance(event, Present):
        fields = {"sessions": event.sessions, "head": event.head}
    elif isinstance(event, Leaving):
        fields = {}
    else:
        fields = {k: v for k, v in vars(event).items() if k != "node"}
    return json.dumps(
        {"event": type(event).__name__, "node": event.node, **fields},
        ensure_ascii=True,
        separators=(",", ":"),
    )


def _message_fields(message: Stored) -> list[Any]:
    return [
        message.id,
        message.kind.value,
        message.sender,
        message.target,
        message.text,
        to_microseconds(message.created),
    ]


def decode(text: str) -> Event:
    """
    The event a bus message holds.

    @raise BadEvent: it holds none, whole.
    """
    try:
        data = json.loads(text)
        return _DECODERS[data["event"]](data)
    except (ValueError, KeyError, TypeError, IndexError, OverflowError) as error:
        raise BadEvent(f"not a cluster's event ({type(error).__name__})") from None
    except Malformed as error:
        raise BadEvent(f"not a cluster's event: {error}") from None


def _text(value: Any) -> str:
    """
    Text a client could have sent: nothing that L{wire.decode_line}
    refuses to relay.
    """
    if not isinstance(value, str):
        raise TypeError("text expected")
    return wire.decode_line(value.encode("utf-8", "surrogatepass"))


def _name(value: Any) -> str:
    """
    An identity's name, or a daemon's.
    """
    if not isinstance(value, str) or not wire.NAME_TOKEN.fullmatch(value):
        raise ValueError("a name expected")
    return value


def _room(value: Any) -> str:
    if not isinstance(value, str) or not wire.ROOM_NAME.fullmatch(value):
        raise ValueError("a room expected")
    return value


def _target(kind: Kind, value: Any) -> str:
    """
    What a message of C{kind} is for: an identity, a room, or everyone.
    """
    if kind is Kind.DIRECT:
        return _name(value)
    if kind is Kind.ROOM:
        return _room(value)
    if value != "":
        raise ValueError("a broadcast is for everyone")
    return ""


def _number(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError("a whole number expected")
    return value


def _committed(data: dict[str, Any]) -> Committed:
    messages = tuple(_stored(fields) for fields in data["messages"])
    segment = Segment(_number(data["previous"]), _number(data["last"]), messages)
    if segment.last <= segment.previous or not all(
        segment.previous < m.id <= segment.last for m in messages
    ):
        raise ValueError("a segment's messages lie outside it")
    return Committed(_name(data["node"]), segment)


def _stored(fields: list[Any]) -> Stored:
    message_id, kind_value, sender, target, text, created = fields
    kind = Kind(kind_value)
    return Stored(
        _number(message_id),
        kind,
        _name(sender),
        _target(kind, target),
        _text(text),
        from_microseconds(_number(created)),
    )


def _present(data: dict[str, Any]) -> Present:
    sessions = data["sessions"]
    if not isinstance(sessions, dict):
        raise TypeError("sessions by identity expected")
    return Present(
        _name(data["node"]),
        {_name(name): _number(count) for name, count in sessions.items()},
        _number(data["head"]),
    )


def _announced(data: dict[str, Any]) -> Announced:
    word = _text(data["word"])
    if word not in WORDS:
        raise ValueError("not a word of presence")
    room = data["room"]
    return Announced(
        _name(data["node"]),
        word,
        _name(data["identity"]),
        None if room is None else _room(room),
    )


_DECODERS: dict[str, Callable[[dict[str, Any]], Event]] = {
    "Committed": _committed,
    "Changed": lambda d: Changed(_name(d["node"]), _name(d["identity"])),
    "Present": _present,
    "Announced": _announced,
    "Kicked": lambda d: Kicked(
        _name(d["node"]), _name(d["identity"]), _name(d["by"]), _text(d["reason"])
    ),
    "Leaving": lambda d: Leaving(_name(d["node"])),
}
