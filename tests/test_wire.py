"""
The pure line grammar, hammered with hypothesis; and the protocol fed
arbitrary byte streams.
"""

from __future__ import annotations

import re
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.errors import Malformed, UnknownCommand
from tests.sessions import Network

SMALL = 64

short_lines = st.lists(
    st.binary(max_size=SMALL).map(lambda b: b.replace(b"\n", b"")), max_size=20
)
chunk_sizes = st.lists(st.integers(min_value=1, max_value=40), max_size=50)


def chunked(stream: bytes, sizes: list[int]) -> list[bytes]:
    """
    Cut C{stream} into pieces of the given sizes, the rest in one piece.
    """
    pieces, start = [], 0
    for size in sizes:
        pieces.append(stream[start : start + size])
        start += size
    pieces.append(stream[start:])
    return pieces


def strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


class FramerTests(SynchronousTestCase):
    @given(short_lines, chunk_sizes)
    def test_lines_come_out_as_they_went_in(self, lines, sizes) -> None:
        """
        However the stream is cut, the framer yields exactly its lines,
        one trailing CR removed from each.
        """
        framer = wire.LineFramer(SMALL)
        stream = b"".join(line + b"\n" for line in lines)
        frames = [f for piece in chunked(stream, sizes) for f in framer.feed(piece)]
        self.assertEqual(frames, [strip_cr(line) for line in lines])

    @given(short_lines, st.integers(min_value=SMALL + 2, max_value=500), chunk_sizes)
    def test_overlong_line_is_one_marker(self, lines, length, sizes) -> None:
        """
        A line over the limit becomes exactly one OVERLONG, in its place,
        and the lines around it are untouched.
        """
        framer = wire.LineFramer(SMALL)
        half = len(lines) // 2
        stream = b"".join(line + b"\n" for line in lines[:half])
        stream += b"z" * length + b"\n"
        stream += b"".join(line + b"\n" for line in lines[half:])
        frames = [f for piece in chunked(stream, sizes) for f in framer.feed(piece)]
        expected = [strip_cr(line) for line in lines]
        expected.insert(half, wire.OVERLONG)
        self.assertEqual(frames, expected)

    def test_buffer_stays_bounded(self) -> None:
        """
        A peer that never sends a line ending cannot make the framer hold
        more than the limit.
        """
        framer = wire.LineFramer(SMALL)
        frames = []
        for _ in range(1000):
            frames += framer.feed(b"a" * 1000)
        self.assertEqual(frames, [wire.OVERLONG])
        self.assertLessEqual(len(framer._buffer), SMALL + 1)


CONTROL_CHARACTERS = frozenset(
    "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e"
    "\u2066\u2067\u2068\u2069"
)
"""Beyond the C0 and C1 controls, what is refused as a control character."""

INVISIBLE_RANGES = (
    # Default_Ignorable_Code_Point characters that are not format (Cf)
    # characters: the combining grapheme joiner, the Hangul fillers, Khmer
    # inherent vowels, Mongolian variation selectors, reserved code points,
    # and the whole tag and variation-selector plane block.
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x2065, 0x2065),
    (0x3164, 0x3164),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0xE0000, 0xE0FFF),
    # The Egyptian hieroglyph format controls that Unicode 15.0 added, Cf
    # for a newer Python and unassigned for an older one.
    (0x13439, 0x1343F),
)
"""Refused beyond general category Cf, as docs/protocol.md lists them."""

EMOJI_VARIATION_SELECTORS = range(0xFE00, 0xFE10)


def is_control_character(character: str) -> bool:
    return (
        unicodedata.category(character) == "Cc" and character != "\t"
    ) or character in CONTROL_CHARACTERS


def is_invisible_character(character: str) -> bool:
    code = ord(character)
    return unicodedata.category(character) == "Cf" or any(
        low <= code <= high for low, high in INVISIBLE_RANGES
    )


def is_refused_character(character: str) -> bool:
    return is_control_character(character) or is_invisible_character(character)


def named(character: str) -> str:
    code = f"U+{ord(character):04X}"
    name = unicodedata.name(character, "")
    return f"{code} {name}" if name else code


def escaped(character: str) -> str:
    code = ord(character)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


allowed_text = st.text(
    st.characters(blacklist_categories=("Cs",)).filter(
        lambda c: not is_refused_character(c)
    )
)
invisible_characters = st.one_of(
    st.characters(whitelist_categories=("Cf",)).filter(
        lambda c: not is_control_character(c)
    ),
    *(st.integers(low, high).map(chr) for low, high in INVISIBLE_RANGES),
)


class TextTests(SynchronousTestCase):
    @given(st.text())
    def test_decode_refuses_exactly_the_control_and_invisible_characters(
        self, text
    ) -> None:
        """
        A line is refused if and only if it holds a character a terminal
        could act on or one that shows as nothing.
        """
        refused = any(is_refused_character(c) for c in text)
        try:
            self.assertEqual(
                wire.decode_line(text.encode("utf-8", "surrogatepass")), text
            )
            self.assertFalse(refused)
        except Malformed:
            self.assertTrue(refused or any(0xD800 <= ord(c) <= 0xDFFF for c in text))

    @given(allowed_text, invisible_characters, allowed_text)
    def test_invisible_character_is_refused_by_name(
        self, before: str, invisible: str, after: str
    ) -> None:
        """
        Text holding a format character, a tag or another default-ignorable
        code point is refused with a reason that names it, so that its
        sender can see what was hidden in what they pasted.
        """
        raw = (before + invisible + after).encode("utf-8")
        with self.assertRaises(Malformed) as raised:
            wire.decode_line(raw)
        self.assertEqual(
            raised.exception.text,
            f"text holds {named(invisible)}, an invisible character",
        )

    @given(allowed_text)
    def test_text_of_allowed_characters_passes(self, text: str) -> None:
        """
        Text made only of characters outside the refused set comes through
        decoding unchanged.
        """
        self.assertEqual(wire.decode_line(text.encode("utf-8")), text)

    def test_refusal_names_the_zero_width_space(self) -> None:
        """
        The reason for the commonest hidden character reads as the protocol
        documents it.
        """
        with self.assertRaises(Malformed) as raised:
            wire.decode_line("MSG bob hi\u200bthere".encode())
        self.assertEqual(
            raised.exception.text,
            "text holds U+200B ZERO WIDTH SPACE, an invisible character",
        )

    def test_control_characters_keep_their_reason(self) -> None:
        """
        A control character (a bidi override among them) is still refused
        in the words scripts have matched on.
        """
        for text in ("\x1b[2J", "\u202e", "\u2028", "a\x85b"):
            with self.assertRaises(Malformed) as raised:
                wire.decode_line(text.encode())
            self.assertEqual(
                raised.exception.text, "control characters are not allowed"
            )

    def test_emoji_presentation_passes_and_joined_emoji_is_refused(self) -> None:
        """
        The variation selectors emoji use are relayed (a heart with U+FE0F),
        but a family emoji is refused, since its zero width joiners are
        format characters.
        """
        for code in EMOJI_VARIATION_SELECTORS:
            text = f"MSG bob \u2764{chr(code)}"
            self.assertEqual(wire.decode_line(text.encode()), text)
        with self.assertRaises(Malformed) as raised:
            wire.decode_line(
                "MSG bob \U0001f468\u200d\U0001f469\u200d\U0001f467".encode()
            )
        self.assertIn("U+200D ZERO WIDTH JOINER", raised.exception.text)

    def test_tab_is_relayed_and_left_unescaped(self) -> None:
        """
        A tab is visible whitespace, not an invisible character: it is
        relayed, and shown as sent.
        """
        self.assertEqual(wire.decode_line(b"MSG bob a\tb"), "MSG bob a\tb")
        self.assertEqual(wire.escape_controls("a\tb"), "a\tb")

    def test_every_code_point_is_escaped_exactly_when_refused(self) -> None:
        """
        Over all of Unicode, escape_controls escapes the very characters the
        rule refuses, so that the client hides what the daemon refuses; a
        character that a newer Unicode makes a format character fails here
        until the rule takes it in.
        """
        every = "".join(
            chr(code)
            for code in range(0x110000)
            if not 0xD800 <= code <= 0xDFFF and code != ord("\\")
        )
        refused = {c for c in every if unicodedata.category(c) in ("Cc", "Cf")}
        refused |= CONTROL_CHARACTERS
        refused |= {
            chr(c) for low, high in INVISIBLE_RANGES for c in range(low, high + 1)
        }
        refused.discard("\t")
        shown = wire.escape_controls(every)
        escaped_codes = re.findall(r"\\[xuU]([0-9a-f]+)", shown)
        wrong = refused ^ {chr(int(code, 16)) for code in escaped_codes}
        self.assertEqual(sorted(f"U+{ord(c):04X}" for c in wrong), [])
        self.assertEqual(
            len(shown),
            sum(len(escaped(c)) for c in refused) + len(every) - len(refused),
        )

    def test_ascii_line_is_refused_by_the_same_rule(self) -> None:
        """
        decode_line's shortcut for a line of ASCII refuses exactly the ASCII
        characters the rule refuses, a tab still let through.
        """
        for code in range(128):
            try:
                wire.decode_line(bytes([code]))
            except Malformed:
                self.assertTrue(is_refused_character(chr(code)), code)
            else:
                self.assertFalse(is_refused_character(chr(code)), code)

    def test_escape_of_a_plane_fourteen_tag_is_unambiguous(self) -> None:
        """
        A tag character is escaped with all its digits (C{\\U000e0041}), so
        that the escape cannot be read as a shorter code and a letter.
        """
        self.assertEqual(wire.escape_controls("a\U000e0041b"), "a\\U000e0041b")

    @given(st.text())
    def test_escaped_text_is_clean_and_clean_text_unchanged(self, text) -> None:
        """
        escape_controls leaves nothing a terminal could act on or that
        shows as nothing, and changes nothing in text that was clean
        already.
        """
        escaped = wire.escape_controls(text)
        self.assertFalse(any(is_refused_character(c) for c in escaped))
        if not any(is_refused_character(c) for c in text):
            self.assertEqual(escaped, text)


class GrammarTests(SynchronousTestCase):
    @given(st.text())
    def test_parsing_raises_only_protocol_errors(self, text) -> None:
        """
        Any text splits into a known verb and arguments, or is refused with
        a protocol error; nothing else escapes.
        """
        try:
            verb, rest = wire.split_verb(text)
            wire.parse_arguments(verb, rest)
        except (Malformed, UnknownCommand):
            pass

    def test_arguments(self) -> None:
        """
        Each argument shape, accepted and refused.
        """
        parse = wire.parse_arguments
        self.assertEqual(parse("MSG", "bob  hi  there "), ("bob", "hi  there "))
        self.assertEqual(parse("KICK", "bob"), ("bob",))
        self.assertEqual(parse("KICK", "bob go away"), ("bob", "go away"))
        self.assertEqual(parse("WHO", ""), ())
        self.assertEqual(parse("WHO", "#Ops"), ("#ops",))
        self.assertEqual(parse("SAY", "#a b"), ("#a", "b"))
        for verb, rest in [
            ("SAY", "#a"),
            ("JOIN", "#"),
            ("JOIN", "#a #b"),
            ("MSG", ""),
        ]:
            self.assertRaises(Malformed, parse, verb, rest)


command_lines = st.sampled_from(
    [
        b"PING",
        b"WHO",
        b"HELP",
        b"WHOAMI",
        b"ROOMS",
        b"JOIN #r",
        b"PART #r",
        b"SAY #r hi",
        b"MSG alice hi",
        b"MSG bob hi",
        b"BROADCAST hi",
        b"KICK alice",
        b"QUIT",
        b"RELOAD",
        b"",
        b" ",
        b"\r",
        b"x" * 5000,
        b"\xff\xfe",
        b"SAY #r \x1b[2J",
    ]
)
any_line = st.one_of(
    command_lines,
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"")),
    st.text(max_size=40).map(lambda t: t.replace("\n", "").encode()),
)

EVERYTHING_BUT_QUIT_AND_KICK = """\
default_roles = ["all"]
[roles.all]
commands = ["HELP", "WHOAMI", "WHO", "PING", "MSG", "JOIN", "PART", "SAY",
            "ROOMS", "BROADCAST", "RELOAD"]
"""


def is_blank(line: bytes) -> bool:
    return not strip_cr(line).strip(b" \t")


class ArbitraryInputTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(any_line, max_size=30), chunk_sizes, st.binary(max_size=30))
    def test_every_complete_line_gets_exactly_one_reply(self, lines, sizes, tail):
        """
        Whatever bytes arrive, in whatever pieces, the session never fails:
        each complete non-blank line gets exactly one reply, in order, and
        no reply is a server fault, until (if ever) ten bad lines in a row
        (blank ones, which get no reply, among them) close it with the
        reason.  (QUIT and KICK are outside the role, so they are answered
        with 403 rather than ending the session.)
        """
        session = Network(EVERYTHING_BUT_QUIT_AND_KICK).connect("alice")
        session.take()
        tail = tail.replace(b"\n", b"")[:SMALL]
        stream = b"".join(line + b"\n" for line in lines) + tail
        received = []
        for piece in chunked(stream, sizes):
            received += session.send(piece)
        replies = [line for line in received if line[:3].isdigit() and line[3:4] == " "]
        self.assertFalse([r for r in replies if r.startswith("5")])
        if session.closed:
            self.assertEqual(received[-1], "CLOSED 10 bad lines in a row")
            bad_run = len(replies) - next(
                (
                    i + 1
                    for i, r in reversed(list(enumerate(replies)))
                    if r[:3] not in {"400", "405", "413"}
                ),
                0,
            )
            self.assertLessEqual(bad_run, 10)
            self.assertLessEqual(
                len(replies), len([x for x in lines if not is_blank(x)])
            )
        else:
            self.assertEqual(len(replies), len([x for x in lines if not is_blank(x)]))


class GreetingRateTests(SynchronousTestCase):
    def test_rate_round_trips_through_the_greeting(self) -> None:
        """
        The rate the daemon writes in its greeting, with the commands left
        now, is what a client reads back; a greeting without one gives none.
        """
        for per_second, burst, left in [(20.0, 60, 60), (0.5, 2, 0), (1e9, 3, 1)]:
            greeting = "secmsg 0.1.0 ready; you are a (roles: r); " + wire.format_rate(
                per_second, burst, left
            )
            self.assertEqual(
                wire.parse_greeting_rate(greeting), (per_second, burst, left)
            )
        self.assertEqual(wire.format_rate(20.0, 60, 12), "rate 20/s, burst 60, 12 left")
        self.assertIsNone(
            wire.parse_greeting_rate("secmsg ready; you are a (roles: r)")
        )


class FramerEndTests(SynchronousTestCase):
    def test_a_last_line_without_its_newline_is_a_line(self) -> None:
        """
        At the end of a stream, what is left after the last newline is
        one more line; nothing, or an over-long line's tail, is none.
        """
        framer = wire.LineFramer(8)
        self.assertEqual(framer.feed(b"PING\nWHO"), [b"PING"])
        self.assertEqual(framer.finish(), [b"WHO"])
        self.assertEqual(framer.finish(), [])
        framer.feed(b"x" * 20)
        self.assertEqual(framer.finish(), [])
