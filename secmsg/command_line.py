"""
The base of the C{secmsg} command's option parsers: twisted's
C{usage.Options}, taking options after positional arguments too
(C{secmsg pki issue alice --force}), and naming the whole command in its
usage line.
"""

from __future__ import annotations

import getopt

from twisted.python import usage

from secmsg import __version__


class CommandOptions(usage.Options):
    """
    Options of C{secmsg} or one of its subcommands.  C{synopsis} holds just
    this level's own arguments.
    """

    synopsis = "[options]"

    def opt_version(self) -> None:
        """
        Print secmsg's version and exit.
        """
        print(f"secmsg {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Move options given after positional arguments before them, then
        parse as usual; C{--} still ends the options, so a message may start
        with a dash.
        """
        if options is None or getattr(self, "subCommands", None):
            super().parseOptions(options)
            return
        try:
            pairs, arguments = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.error as error:
            raise usage.UsageError(str(error)) from None
        flat = [self._rejoin(name, value) for name, value in pairs]
        super().parseOptions([*flat, "--", *arguments])

    def _rejoin(self, name: str, value: str) -> str:
        if name.startswith("--"):
            takes_value = f"{name[2:]}=" in self.longOpt
            return f"{name}={value}" if takes_value else name
        return f"{name}{value}"

    def getSynopsis(self) -> str:
        words: list[str] = []
        level: usage.Options = self
        while level.parent is not None:
            words.insert(0, level.parent.subCommand)
            level = level.parent
        return " ".join(["Usage: secmsg", *words, self.synopsis])
