"""
C{secmsg audit verify FILE...}: check that an audit trail's hash chain is
unbroken, and name its first broken link if not.
"""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage

from secmsg.audit import numbered_lines, verify_chain
from secmsg.command_line import CommandOptions
from secmsg.errors import ConfigurationError


class VerifyOptions(CommandOptions):
    """
    secmsg audit verify FILE...
    """

    synopsis = "FILE... (rotated files first: audit.log.2 audit.log.1 audit.log)"

    def parseArgs(self, *files: str) -> None:
        if not files:
            raise usage.UsageError("give the audit files to verify")
        self["files"] = [Path(name) for name in files]


class Options(CommandOptions):
    """
    secmsg audit verify FILE...
    """

    synopsis = "verify FILE..."
    subCommands = [
        ["verify", None, VerifyOptions, "Check the hash chain of audit files."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("give a command: verify")


def run(options: Options) -> tuple[list[str], bool]:
    """
    Verify the files given, oldest first, as one chain.

    @return: the lines to print, and whether the chain is intact.
    @raise ConfigurationError: a file cannot be read.
    """
    files = options.subOptions["files"]
    try:
        verdict = verify_chain(numbered_lines(files))
    except OSError as error:
        raise ConfigurationError(
            str(error.filename), f"cannot read: {error.strerror}"
        ) from None
    records = f"{verdict.records} record" + ("" if verdict.records == 1 else "s")
    if verdict.broken is not None:
        return [
            f"{verdict.broken.where}: chain broken: {verdict.broken.problem}",
            f"the {records} before it are intact",
        ], False
    start = (
        "from the first record of the trail"
        if verdict.anchored
        else "(the first continues a file not given)"
    )
    return [f"{records}, chain intact {start}"], True
