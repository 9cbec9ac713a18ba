"""
The base of the C{secmsg} command's option parsers: twisted's
C{usage.Options}, taking options after positional arguments too
(C{secmsg pki issue alice --force}), whatever C{POSIXLY_CORRECT} says, and
naming the whole command in its usage line.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections.abc import Iterator
from typing import Any, TextIO

from twisted.python import usage

from secmsg import __version__
from secmsg.wire import escape_controls


class CommandOptions(usage.Options):
    """
    Options of C{secmsg} or one of its subcommands.  C{synopsis} holds just
    this level's own arguments.
    """

    synopsis = "[options]"
    # Without one, usage.Options shows __main__'s docstring under the
    # options: under python -m secmsg, that of secmsg/__main__.py.
    longdesc = ""

    def opt_version(self) -> None:
        """
        Print secmsg's version and exit.
        """
        print(f"secmsg {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Move options given after positional arguments before them, then
        parse as usual.  The first C{--} ends the options: everything after
        it, a message starting with a dash or holding C{--} itself, is
        positional.
        """
        try:
            self._parse(options)
        except usage.UsageError as error:
            # Twisted words a value our own check refused as a failure of
            # "parameter type enforcement"; our check's words are enough.
            raise usage.UsageError(
                str(error).removeprefix("Parameter type enforcement failed: ")
            ) from None

    def _parse(self, options: list[str] | None) -> None:
        if options is None or getattr(self, "subCommands", None):
            super().parseOptions(options)
            return
        flags: list[str] = []
        positional: list[str] = []
        words = iter(options)
        for word in words:
            if word == "--":
                positional.extend(words)
            elif word.startswith("--") and "=" not in word:
                flags.append(word)
                if f"{word[2:]}=" in self.longOpt:
                    flags.extend(_next(words))
            elif word.startswith("-") and word != "-":
                flags.append(word)
                if len(word) == 2 and f"{word[1]}:" in self.shortOpt:
                    flags.extend(_next(words))
            else:
                positional.append(word)
        super().parseOptions([*flags, "--", *positional])

    def getUsage(self, width: int | None = None) -> str:
        """
        Twisted's usage, with the commands' descriptions in the column of
        the options' rather than in one of their own.
        """
        text = super().getUsage(width)
        options, heading, _ = text.partition("Commands:\n")
        found = _OPTION_NAME.search(options)
        commands: list[list[Any]] = getattr(self, "subCommands", None) or []
        if not heading or found is None or not commands:
            return text
        column = len(found.group())
        wanted = max(column, 4 + max(len(command[0]) for command in commands) + 2)
        if wanted > column:
            options = _OPTION_NAME.sub(lambda name: name.group().ljust(wanted), options)
            options = re.sub(
                f"^ {{{column}}}(?=\\S)", " " * wanted, options, flags=re.M
            )
        lines = []
        for name, _, _, description in sorted(commands, key=lambda command: command[0]):
            wrapped = textwrap.wrap(description, (width or _terminal_width()) - wanted)
            lines.append(f"    {name:<{wanted - 4}}{wrapped[0] if wrapped else ''}")
            lines.extend(" " * wanted + more for more in wrapped[1:])
        return options + heading + "\n".join(lines) + "\n"

    def getSynopsis(self) -> str:
        words: list[str] = []
        level: usage.Options = self
        while level.parent is not None:
            words.insert(0, level.parent.subCommand)
            level = level.parent
        return " ".join(["Usage: secmsg", *words, self.synopsis])


_OPTION_NAME = re.compile(r"^ *(?:-\w, )?--\S+ +(?=\S)", re.MULTILINE)
"""An option's name in Twisted's usage, up to the column of its description."""


def _terminal_width() -> int:
    """
    The width Twisted's usage wraps to when given none.
    """
    return int(os.environ.get("COLUMNS", "80"))


def _next(words: Iterator[str]) -> list[str]:
    """
    The value an option takes, if any is left; if none is, the parser says
    that the option needs one.
    """
    value = next(words, None)
    return [] if value is None else [value]


def complain(text: str) -> None:
    """
    Write a line to standard error, escaped: it may echo the user's
    arguments or a server's words.
    """
    print(escape_controls(text), file=sys.stderr)


def stop_writing(stream: TextIO) -> None:
    """
    Point a stream whose reader has gone (C{head}, say) at the null device,
    so that nothing more written to it, at exit included, fails.
    """
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
