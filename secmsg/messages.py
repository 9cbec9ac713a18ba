"""
What a message is once accepted, as the store keeps it and the hub and the
protocol hand it on.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple


class Kind(enum.Enum):
    """
    The three kinds of message, named by the verb that sends them.
    """

    DIRECT = "MSG"
    ROOM = "SAY"
    BROADCAST = "BROADCAST"


@dataclass(frozen=True)
class Draft:
    """
    A message a sender has sent and the daemon has not yet stored.

    @ivar target: the recipient of a direct message, the room of a room
        message, C{""} for a broadcast.
    """

    kind: Kind
    sender: str
    target: str
    text: str
    created: datetime


@dataclass(frozen=True)
class Stored:
    """
    A message as stored: its draft and the id the store gave it.  Ids are
    unique and grow in the order messages are accepted, across restarts.
    """

    id: int
    kind: Kind
    sender: str
    target: str
    text: str
    created: datetime

    @classmethod
    def of(cls, message_id: int, draft: Draft) -> Stored:
        return cls(
            message_id,
            draft.kind,
            draft.sender,
            draft.target,
            draft.text,
            draft.created,
        )


class Stream(NamedTuple):
    """
    Where a message is appended once, for every identity that reads it: an
    identity's inbox (C{MSG}, the identity), a room's timeline (C{SAY}, the
    room), or the broadcasts (C{BROADCAST}, C{""}).  What each reader has
    had of a stream is a cursor, not a row per message.
    """

    kind: Kind
    target: str


def stream_of(message: Stored | Draft) -> Stream:
    """
    The stream a message is appended to: its kind and target name it.
    """
    return Stream(message.kind, message.target)


def inbox(identity: str) -> Stream:
    """
    The stream of the direct messages to C{identity}.
    """
    return Stream(Kind.DIRECT, identity)


def room_stream(room: str) -> Stream:
    """
    The stream of what is said in C{room}.
    """
    return Stream(Kind.ROOM, room)


BROADCASTS = Stream(Kind.BROADCAST, "")
"""The one stream of every broadcast."""


@dataclass(frozen=True)
class Pending:
    """
    A message waiting for an identity, unacknowledged, and whether it was
    pushed to one of its sessions before (so that this delivery is a
    repeat).
    """

    message: Stored
    redelivery: bool


@dataclass(frozen=True)
class Retention:
    """
    How long and how much the store keeps.

    @ivar max_age: messages older than this go, acknowledged or not.
    @ivar room_max: the newest this many messages of each room stay.
    @ivar mailbox_max: the newest this many direct messages to each
        identity stay.  Count limits never remove a message someone has not
        acknowledged yet.
    """

    max_age: timedelta = timedelta(days=30)
    room_max: int = 1000
    mailbox_max: int = 1000


@dataclass(frozen=True)
class WaitingLimit:
    """
    How much may wait unacknowledged in one identity's inbox before a
    direct message for it is refused (507): without a bound, an identity
    that never reads lets anyone who writes to it fill the disk for as long
    as retention keeps messages.  Room messages and broadcasts are kept
    once for all their readers, and are not held to it.

    @ivar messages: the most messages that may wait.
    @ivar text_bytes: the most bytes (UTF-8) their texts may hold together.
    """

    messages: int = 10_000
    text_bytes: int = 16 * 1024 * 1024


def text_size(text: str) -> int:
    """
    The bytes a message's text counts for against a L{WaitingLimit}: its
    UTF-8, as the store keeps it.
    """
    return len(text.encode("utf-8"))


def within_budget(
    newest_first: Iterable[Stored], limit: int, budget: int
) -> list[Stored]:
    """
    Up to C{limit} of the messages given newest first, stopping once their
    texts pass C{budget} bytes (the message that passes it included, so
    that the caller can tell); oldest first.
    """
    chosen: list[Stored] = []
    size = 0
    for message in newest_first:
        if len(chosen) == limit or size > budget:
            break
        chosen.append(message)
        size += len(message.text.encode("utf-8"))
    chosen.reverse()
    return chosen


def to_microseconds(moment: datetime) -> int:
    """
    A time as the store keeps it: whole microseconds since the epoch, UTC.
    """
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_microseconds(value: int) -> datetime:
    """
    A time the store kept, back as an aware datetime in UTC.
    """
    return _EPOCH + timedelta(microseconds=value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
