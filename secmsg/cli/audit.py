"""
C{secmsg audit verify FILE...}: check that an audit trail's hash chain is
unbroken, and name its first broken link if not.
"""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage

from secmsg.cli.options import CommandOptions
from secmsg.daemon.audit import numbered_lines, verify_chain
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


SHOWN_BREAKS = 20
"""Breaks listed one by one; the rest are counted."""


def run(options: Options) -> tuple[list[str], bool]:
    """
    Verify the files given as one chain, oldest first whatever the order
    they were named in (C{audit.log.*} expands to the wrong one).

    @return: the lines to print, and whether the chain is intact.
    @raise ConfigurationError: a file cannot be read.
    """
    files = sorted(options.subOptions["files"], key=_oldest_first)
    try:
        verdict = verify_chain(numbered_lines(files))
    except OSError as error:
        raise ConfigurationError(
            str(error.filename), f"cannot read: {error.strerror}"
        ) from None
    records = f"{verdict.records} record" + ("" if verdict.records == 1 else "s")
    if verdict.breaks:
        lines = [
            f"{each.where}: chain broken: {each.problem}"
            for each in verdict.breaks[:SHOWN_BREAKS]
        ]
        if len(verdict.breaks) > SHOWN_BREAKS:
            lines.append(f"and {len(verdict.breaks) - SHOWN_BREAKS} more breaks")
        lines.append(f"{records}, {len(verdict.breaks)} broken")
        return lines, False
    start = (
        "from the first record of the trail"
        if verdict.anchored
        else "(the first continues a file not given)"
    )
    return [f"{records}, chain intact {start}"], True


def _oldest_first(path: Path) -> tuple[str, int]:
    """
    Sort key: a rotated file (C{audit.log.2}) before a newer one
    (C{audit.log.1}), and both before the current file (C{audit.log}).
    """
    base, _, suffix = path.name.rpartition(".")
    if suffix.isdigit() and base:
        return (str(path.parent / base), -int(suffix))
    return (str(path), 0)
