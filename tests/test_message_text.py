"""
The command line of the bot modes: C{secmsg send -} reading one message
from standard input, and C{secmsg listen}'s options.
"""

from __future__ import annotations

import io

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.cli.listen import ListenOptions
from secmsg.cli.message_text import read_message_text
from secmsg.errors import Malformed

COMMAND = "MSG bob "
ROOM = wire.MAX_LINE_LENGTH - len(COMMAND)


class MessageTextTests(SynchronousTestCase):
    def test_one_line_less_its_line_ending(self) -> None:
        """
        The text is standard input less one line ending at its end, LF or
        CRLF; one that fills the line exactly is taken.
        """
        for given, text in [
            (b"hello\n", "hello"),
            (b"hello\r\n", "hello"),
            (b"hello", "hello"),
            ("caf\u00e9 \u2764\ufe0f\n".encode(), "caf\u00e9 \u2764\ufe0f"),
            (b"x" * ROOM + b"\n", "x" * ROOM),
        ]:
            self.assertEqual(read_message_text(io.BytesIO(given), COMMAND), text)

    def test_more_than_one_line_or_too_long_is_refused(self) -> None:
        """
        Two lines, or more than fits in one line with its command, are
        refused with words.
        """
        for given, words in [
            (b"one\ntwo\n", "more than one line"),
            (b"one\n\n", "more than one line"),
            (b"x" * (ROOM + 1), f"longer than the {ROOM} bytes"),
            (b"x" * 100_000, f"longer than the {ROOM} bytes"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                read_message_text(io.BytesIO(given), COMMAND)
            self.assertIn(words, str(caught.exception))

    def test_bytes_that_are_not_utf8_are_kept_for_the_check_to_refuse(self) -> None:
        """
        Bytes that are not UTF-8 come back as surrogate escapes, which the
        send options' check refuses as invalid UTF-8.
        """
        text = read_message_text(io.BytesIO(b"\xff\n"), COMMAND)
        with self.assertRaises(Malformed) as caught:
            wire.decode_line(text.encode("utf-8", "surrogateescape"))
        self.assertEqual(str(caught.exception), "invalid UTF-8")


class ListenOptionsTests(SynchronousTestCase):
    def test_rooms_to_join_and_json(self) -> None:
        """
        --join may be given once for each room, and --json asks for JSON.
        """
        options = ListenOptions()
        options.parseOptions(
            [
                "localhost:7444",
                "--json",
                "--join",
                "#ops",
                "--join",
                "#Dev",
                "--instance",
                "dev",
                "--as",
                "bot",
            ]
        )
        self.assertEqual(
            (options["host"], options["port"], options["json"], options["join"]),
            ("localhost", 7444, True, ["#ops", "#Dev"]),
        )

    def test_bad_rooms_and_addresses_are_refused(self) -> None:
        """
        A room that is not #name, a missing or second address, are refused
        with words.
        """
        for argv, words in [
            (["localhost", "--join", "ops"], "--join 'ops' is not a room"),
            ([], "missing HOST[:PORT], the server to connect to"),
            (["a", "b"], "give the daemon's HOST[:PORT]"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                ListenOptions().parseOptions([*argv, "--instance", "d", "--as", "x"])
            self.assertIn(words, str(caught.exception))
