"""
The line framer and parser, fed what a peer can send.

Properties: the framer gives the same frames however the bytes are split
into reads, and no frame is longer than the limit or holds a line ending;
a frame either decodes, splits and parses into a command, or raises the
error docs/protocol.md names for it (L{Malformed}, L{UnknownCommand}),
whose words are safe to send back; a parsed command, formatted again,
parses back to itself; and decoded text holds nothing that
L{wire.escape_controls} would escape.
"""

from __future__ import annotations

from secmsg import wire
from secmsg.errors import Malformed, UnknownCommand
from tests.fuzz.fields import Fields


def one_input(data: bytes) -> None:
    """
    Frame C{data} whole and a byte at a time, then parse every frame.
    """
    fields = Fields(data)
    max_length = 16 + fields.byte()
    stream = fields.rest()
    frames = _framed(stream, max_length, len(stream) or 1)
    assert frames == _framed(stream, max_length, 1), "framing depends on reads"
    for frame in frames:
        if frame is wire.OVERLONG:
            continue
        assert len(frame) <= max_length and b"\n" not in frame, frame
        _check_line(frame)


def _framed(stream: bytes, max_length: int, read: int) -> list[bytes | object]:
    framer = wire.LineFramer(max_length)
    frames: list[bytes | object] = []
    for start in range(0, len(stream), read):
        frames.extend(framer.feed(stream[start : start + read]))
    frames.extend(framer.finish())
    return frames


def _check_line(frame: bytes) -> None:
    try:
        text = wire.decode_line(frame)
        if wire.is_blank(text):
            return
        verb, rest = wire.split_verb(text)
        arguments = wire.parse_arguments(verb, rest)
    except (Malformed, UnknownCommand) as error:
        assert error.text and wire.escape_controls(error.text) == error.text, error
        return
    assert wire.escape_controls(text) == text, text
    formatted = " ".join((verb, *arguments))
    again = wire.split_verb(wire.decode_line(formatted.encode("utf-8")))
    assert wire.parse_arguments(*again) == arguments, (formatted, arguments)
    assert again[0] == verb, (formatted, verb)
