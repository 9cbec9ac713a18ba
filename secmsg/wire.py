"""
The line grammar of the secmsg protocol: framing, parsing and formatting.

Everything here is a pure function of its input, with no I/O, so that tests
can hammer it with arbitrary bytes.  The protocol module frames bytes with
L{LineFramer}, decodes with L{decode_line}, splits with L{split_verb} and
checks arguments with L{parse_arguments}; every reply and push it sends is
built by L{reply}, L{listing} or L{push}.  docs/protocol.md describes the
same grammar for people.
"""

from __future__ import annotations

import enum
import functools
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from secmsg.errors import LineTooLong, Malformed, UnknownCommand
from secmsg.messages import Kind, Stored

MAX_LINE_LENGTH = 4096
"""Bytes a line may hold by default, its line ending excluded."""

NAME_TOKEN = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
"""An identity: letters, digits and C{._@+-}, 1 to 64 characters."""

ROOM_NAME = re.compile(r"#[a-z0-9._-]{1,64}")
"""A room, after L{parse_arguments} has lower-cased it."""

_CONTROL = (
    # C0 controls but TAB, DEL and C1 (hence every ANSI escape sequence),
    # the line and paragraph separators some terminals honour, and the
    # bidirectional controls that let text display as something else.
    "\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
    "\u202a-\u202e\u2066-\u2069"
)

_INVISIBLE = (
    # Every format character (general category Cf) and every other
    # Default_Ignorable_Code_Point, which show as nothing or change how
    # their neighbours show: zero width characters, the soft hyphen, the
    # Hangul fillers, the tag characters that carry hidden text.  The
    # variation selectors U+FE00-U+FE0F that emoji use are let through.
    # Written out (Unicode 15.1) rather than derived from unicodedata: the
    # rule is then the same whatever Python runs the daemon or the client,
    # no start pays to scan a million code points, and a test holds it to
    # the running Python's unicodedata.
    "\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2"
    "\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufeff\uffa0\ufff0-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)

_FORBIDDEN = re.compile(f"[{_CONTROL}{_INVISIBLE}]")
"""
What text that is relayed must not hold (docs/protocol.md, "Text that is
relayed"), as one character class that L{decode_line} refuses and
L{escape_controls} escapes, so that a client hides exactly what the daemon
refuses to relay.
"""

_FORBIDDEN_IN_ASCII = re.compile(
    "["
    + "".join(
        re.escape(chr(code)) for code in range(128) if _FORBIDDEN.match(chr(code))
    )
    + "]"
)
"""
The part of L{_FORBIDDEN} that ASCII text can hold, derived from it so that
the rule is written once.  A line of ASCII, the common case and one Python
knows to be ASCII without reading it, is checked against this instead:
a class that reaches past U+FFFF is matched range by range, this one by a
table (a 100-byte line: about 0.45 microseconds rather than 1.3).
"""

_CONTROL_CHARACTER = re.compile(f"[{_CONTROL}]")

_VERB = re.compile(r"[A-Za-z]{1,32}")
_MESSAGE_ID = re.compile(r"[1-9][0-9]{0,17}")
_COUNT = re.compile(r"[1-9][0-9]{0,5}")


class _Overlong(enum.Enum):
    """
    The type of L{OVERLONG}: an enumeration of one, so that a type checker
    narrows C{frame is OVERLONG} to the bytes of a line in the other branch.
    """

    OVERLONG = "OVERLONG"

    def __repr__(self) -> str:
        return "OVERLONG"


OVERLONG: Final = _Overlong.OVERLONG
"""What L{LineFramer.feed} yields in place of a line that was too long."""


class LineFramer:
    """
    Split a byte stream into lines ending in LF (CRLF accepted).

    A line longer than the limit is reported once, as L{OVERLONG}, and the
    rest of it is discarded up to its line ending, so that the session stays
    usable.  Memory held is bounded by the limit whatever the peer sends.
    """

    def __init__(self, max_length: int = MAX_LINE_LENGTH) -> None:
        self.max_length = max_length
        self._buffer = b""
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | _Overlong]:
        """
        Take more bytes; return the complete lines (without their line
        endings) and L{OVERLONG} markers, in order.
        """
        frames: list[bytes | _Overlong] = []
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return frames
            data = data[end + 1 :]
            self._discarding = False
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:end]
            if line.endswith(b"\r"):
                line = line[:-1]
            frames.append(OVERLONG if len(line) > self.max_length else line)
            start = end + 1
        rest = buffer[start:]
        if len(rest) > self.max_length + 1 or (
            len(rest) == self.max_length + 1 and not rest.endswith(b"\r")
        ):
            frames.append(OVERLONG)
            self._discarding = True
            rest = b""
        self._buffer = rest
        return frames

    def finish(self) -> list[bytes]:
        """
        The last line, when the stream ends without its line ending: a
        script's final line that lacks a newline is a line all the same.
        """
        rest, self._buffer = self._buffer, b""
        if self._discarding or not rest:
            return []
        return [rest[:-1] if rest.endswith(b"\r") else rest]


def decode_line(raw: bytes) -> str:
    """
    Decode one framed line, refusing what must never be relayed: the whole
    line is checked, so every text argument of every command is.

    @raise Malformed: the line is not UTF-8, or holds a control character
        or an invisible one (named, so that its sender can find it).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("invalid UTF-8") from None
    forbidden = _FORBIDDEN_IN_ASCII if text.isascii() else _FORBIDDEN
    if found := forbidden.search(text):
        raise Malformed(_refusal(found.group()))
    return text


def _refusal(character: str) -> str:
    """
    Why text holding C{character} is refused: control characters in the
    words scripts already match, an invisible one by its code and name.
    """
    if _CONTROL_CHARACTER.match(character):
        return "control characters are not allowed"
    code = f"U+{ord(character):04X}"
    name = unicodedata.name(character, "")
    shown = f"{code} {name}" if name else code
    return f"text holds {shown}, an invisible character"


def is_blank(text: str) -> bool:
    """
    Whether a decoded line holds nothing but spaces and tabs; such lines are
    ignored rather than answered, as a telnet user's stray Enter deserves.
    """
    return not text.strip(" \t")


def escape_controls(text: str) -> str:
    """
    Show untrusted text (a certificate subject, say) with every character
    that L{decode_line} would refuse escaped as C{\\xNN}, C{\\uNNNN} or
    C{\\UNNNNNNNN}, so that it can go into a reply or a log line without
    driving a terminal or hiding anything.
    """
    return _FORBIDDEN.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def push(*fields: str) -> bytes:
    """
    Format a line the server sends unasked: an upper-case word and fields.
    """
    return (" ".join(fields) + "\n").encode("utf-8")


def format_rate(per_second: float, burst: int, left: int) -> str:
    """
    An identity's rate as the greeting gives it, with how many commands it
    may send at once now (its bucket is shared by its sessions), so that a
    client can pace itself: C{rate 20/s, burst 60, 60 left}.
    """
    shown = str(int(per_second)) if per_second.is_integer() else f"{per_second:g}"
    return f"rate {shown}/s, burst {burst}, {left} left"


_GREETING_RATE = re.compile(
    r"; rate ([0-9]{1,12}(?:\.[0-9]{1,12})?)/s, burst ([0-9]{1,12}), "
    r"([0-9]{1,12}) left$"
)
"""The rate in a greeting; the digits are bounded so that a hostile server
cannot make the client convert a number of thousands of digits."""

SLOWEST_GREETING_RATE = 0.1
"""Commands a second a client paces itself to at the slowest, whatever a
greeting says: a server that claims less would otherwise hold a script's
first command back for days."""

LARGEST_GREETING_BURST = 10**6
"""The largest burst a client believes from a greeting."""


def parse_greeting_rate(text: str) -> tuple[float, int, int] | None:
    """
    The commands a second, the burst and the commands left now that a
    greeting gives, or L{None} if it gives none; an absurd rate is taken
    as the nearest of L{SLOWEST_GREETING_RATE} and L{LARGEST_GREETING_BURST}.
    """
    match = _GREETING_RATE.search(text)
    if match is None or float(match.group(1)) <= 0 or int(match.group(2)) < 1:
        return None
    burst = min(int(match.group(2)), LARGEST_GREETING_BURST)
    per_second = max(float(match.group(1)), SLOWEST_GREETING_RATE)
    return per_second, burst, min(int(match.group(3)), burst)


def format_time(moment: datetime) -> str:
    """
    A message's time as the protocol writes it: UTC, to the second.
    """
    return _second_text(math.floor(moment.timestamp()))


@functools.lru_cache(maxsize=16)
def _second_text(second: int) -> str:
    """
    The text of one second: under load thousands of messages a second
    share it, and C{strftime} costs more than the rest of a push's format.
    """
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def message_fields(message: Stored) -> list[str]:
    """
    The fields of a stored message after its verb: id and time, the room of
    a room message, the sender, the text.
    """
    fields = [str(message.id), format_time(message.created)]
    if message.kind is Kind.ROOM:
        fields.append(message.target)
    return [*fields, message.sender, message.text]


def message_push(message: Stored, redelivery: bool = False) -> bytes:
    """
    Format the push that delivers a stored message; a repeat of one pushed
    before starts with C{REDELIVERED}, so that a client can drop it by id.
    """
    words = ["REDELIVERED"] if redelivery else []
    return push(*words, message.kind.value, *message_fields(message))


def reply(code: int, text: str) -> bytes:
    """
    Format a one-line reply.
    """
    return f"{code} {text}\n".encode()


def listing(code: int, items: list[str], summary: str) -> bytes:
    """
    Format a multi-line reply: C{NNN-} before every item, C{NNN } before the
    closing summary, so that a reader knows where the reply ends.
    """
    lines = [f"{code}-{item}\n" for item in items]
    lines.append(f"{code} {summary}\n")
    return "".join(lines).encode("utf-8")


def split_verb(text: str) -> tuple[str, str]:
    """
    Split a decoded line into its upper-cased verb and the rest.

    @raise UnknownCommand: the verb is not one secmsg knows.
    """
    verb, _, rest = text.lstrip(" ").partition(" ")
    upper = verb.upper()
    if upper not in COMMANDS:
        if _VERB.fullmatch(verb):
            raise UnknownCommand(f"unknown command {upper}")
        raise UnknownCommand("unknown command")
    return upper, rest.lstrip(" ")


def parse_arguments(verb: str, rest: str) -> tuple[str, ...]:
    """
    Check the arguments of a known verb against its usage.

    @return: the arguments, room names lower-cased.
    @raise Malformed: they do not match; the text gives the usage.
    """
    spec = COMMANDS[verb]
    arguments = spec.parse(rest)
    if arguments is None:
        raise Malformed(f"usage: {spec.usage}")
    return arguments


def _nothing(rest: str) -> tuple[str, ...] | None:
    return None if rest.strip(" \t") else ()


def _words(rest: str, count: int) -> list[str]:
    """
    Up to C{count} space-separated words, then the remaining text as is.
    """
    parts: list[str] = []
    while rest and len(parts) < count:
        word, _, rest = rest.partition(" ")
        parts.append(word)
        rest = rest.lstrip(" ")
    if rest:
        parts.append(rest)
    return parts


def _room(word: str) -> str | None:
    room = word.lower()
    return room if ROOM_NAME.fullmatch(room) else None


def _identity(word: str) -> str | None:
    return word if NAME_TOKEN.fullmatch(word) else None


def _one_room(rest: str) -> tuple[str, ...] | None:
    parts = _words(rest, 1)
    room = _room(parts[0]) if len(parts) == 1 else None
    return (room,) if room else None


def _optional_room(rest: str) -> tuple[str, ...] | None:
    return () if not rest.strip(" \t") else _one_room(rest)


def _room_and_text(rest: str) -> tuple[str, ...] | None:
    parts = _words(rest, 1)
    room = _room(parts[0]) if len(parts) == 2 else None
    return (room, parts[1]) if room else None


def _identity_and_text(rest: str) -> tuple[str, ...] | None:
    parts = _words(rest, 1)
    identity = _identity(parts[0]) if len(parts) == 2 else None
    return (identity, parts[1]) if identity else None


def _identity_and_optional_text(rest: str) -> tuple[str, ...] | None:
    parts = _words(rest, 1)
    identity = _identity(parts[0]) if parts else None
    return (identity, *parts[1:]) if identity else None


def _text(rest: str) -> tuple[str, ...] | None:
    return (rest,) if rest.strip(" \t") else None


def _acknowledgement(rest: str) -> tuple[str, ...] | None:
    parts = rest.split()
    if len(parts) == 2 and parts[0].upper() == "UPTO":
        parts = ["UPTO", parts[1]]
    elif len(parts) != 1:
        return None
    return tuple(parts) if _MESSAGE_ID.fullmatch(parts[-1]) else None


def _reload_mode(rest: str) -> tuple[str, ...] | None:
    words = rest.split()
    if not words:
        return ()
    return ("DRY",) if len(words) == 1 and words[0].upper() == "DRY" else None


def _history(rest: str) -> tuple[str, ...] | None:
    parts = rest.split()
    if not 1 <= len(parts) <= 2:
        return None
    target = _room(parts[0]) if parts[0].startswith("#") else _identity(parts[0])
    if target is None or (len(parts) == 2 and not _COUNT.fullmatch(parts[1])):
        return None
    return (target, *parts[1:])


@dataclass(frozen=True)
class CommandSpec:
    """
    One verb of the protocol: how it is written and what it does.
    """

    usage: str
    summary: str
    parse: Callable[[str], tuple[str, ...] | None]


COMMANDS: dict[str, CommandSpec] = {
    "HELP": CommandSpec("HELP", "list the commands you may use", _nothing),
    "WHOAMI": CommandSpec(
        "WHOAMI", "your identity, roles, commands and certificate", _nothing
    ),
    "WHO": CommandSpec("WHO [#room]", "who is online, or in a room", _optional_room),
    "PING": CommandSpec("PING", "check that the server answers", _nothing),
    "CAPS": CommandSpec(
        "CAPS", "the protocol version, capabilities and limits", _nothing
    ),
    "QUIT": CommandSpec("QUIT", "end the session", _nothing),
    "MSG": CommandSpec(
        "MSG <identity> <text>", "send a direct message", _identity_and_text
    ),
    "JOIN": CommandSpec("JOIN #room", "enter a room", _one_room),
    "PART": CommandSpec("PART #room", "leave a room", _one_room),
    "SAY": CommandSpec(
        "SAY #room <text>", "speak in a room you are in", _room_and_text
    ),
    "ROOMS": CommandSpec("ROOMS", "list rooms and how many are in each", _nothing),
    "KICK": CommandSpec(
        "KICK <identity> [reason]",
        "close every session of an identity",
        _identity_and_optional_text,
    ),
    "BROADCAST": CommandSpec("BROADCAST <text>", "send a line to everyone", _text),
    "RELOAD": CommandSpec(
        "RELOAD [DRY]",
        "re-read the policy, CA bundle and CRL (DRY: say what would change)",
        _reload_mode,
    ),
    "ACK": CommandSpec(
        "ACK [UPTO] <id>",
        "confirm you have a message (UPTO: and every one before it)",
        _acknowledgement,
    ),
    "HISTORY": CommandSpec(
        "HISTORY #room|<identity> [n]",
        "the last n messages of a room, or between you and someone",
        _history,
    ),
}
"""Every verb secmsg knows, in the order HELP lists them."""

COMMAND_NAMES = frozenset(COMMANDS)
"""The command names a policy may grant."""


def line_too_long(max_length: int) -> LineTooLong:
    """
    The error for a line that L{LineFramer} reported as L{OVERLONG}.
    """
    return LineTooLong(f"line too long (at most {max_length} bytes)")


@dataclass(frozen=True)
class ReplyLine:
    """
    One line of a server reply, as a client reads it.

    @ivar final: whether it ends the reply (C{NNN text}, not C{NNN-text}).
    """

    code: int
    text: str
    final: bool


@dataclass(frozen=True)
class PushLine:
    """
    A line the server sent unasked, split into its fields: C{MSG} id, time,
    sender and text; C{SAY} id, time, room, sender and text; C{BROADCAST}
    id, time, sender and text; C{KICKED} kicker and reason; C{CLOSED}
    reason; C{NOTICE} text; C{JOINED} and C{PARTED} room and identity;
    C{ONLINE} and C{OFFLINE} identity.  A line of no kind the client knows
    has C{kind} C{""} and the whole line as its field.

    @ivar redelivery: the message was pushed before (C{REDELIVERED} prefix).
    """

    kind: str
    fields: tuple[str, ...]
    redelivery: bool = False


PUSH_WORDS = {
    "MSG": 3,
    "SAY": 4,
    "BROADCAST": 3,
    "KICKED": 1,
    "CLOSED": 0,
    "NOTICE": 0,
    "JOINED": 1,
    "PARTED": 1,
    "ONLINE": 0,
    "OFFLINE": 0,
}
"""How many single-word fields each push has before its free text."""

_REPLY = re.compile(r"([0-9]{3})([ -])(.*)", re.DOTALL)


def parse_server_line(text: str) -> ReplyLine | PushLine:
    """
    Tell a reply line from a push and split it.  Never fails: a client must
    be able to show whatever a server sends.
    """
    if match := _REPLY.fullmatch(text):
        code, separator, rest = match.groups()
        return ReplyLine(int(code), rest, separator == " ")
    kind, _, rest = text.partition(" ")
    redelivery = kind == "REDELIVERED"
    if redelivery:
        kind, _, rest = rest.partition(" ")
    words = PUSH_WORDS.get(kind)
    if words is not None:
        fields = _words(rest.lstrip(" "), words)
        if len(fields) == words:
            fields.append("")
        if len(fields) == words + 1:
            return PushLine(kind, tuple(fields), redelivery)
    return PushLine("", (text,))
