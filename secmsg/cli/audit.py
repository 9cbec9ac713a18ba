"""
C{secmsg audit verify FILE...}: check an audit trail's chain, with the
key that makes its links, and name its first broken record if not; with
C{--head}, check that the trail still reaches a head the daemon logged,
which is what shows a cut end; with C{--key-id}, that the key is the one
the daemon logged, which is what shows a key planted beside the trail.
A trail with no keyed record while a key is at hand is tampering: an
unkeyed rewrite would otherwise pass as a trail from before keys.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

from twisted.python import usage

from secmsg.cli.options import CommandOptions
from secmsg.daemon.chain import (
    KEY_NAME,
    ChainKey,
    Head,
    Verdict,
    load_key,
    numbered_lines,
    verify_chain,
)
from secmsg.errors import ConfigurationError


class VerifyStatus(enum.IntEnum):
    """
    The exit statuses of C{secmsg audit verify}, so that a script can
    tell tampering from a verification that could not be made.
    """

    INTACT = 0
    TAMPERED = 1
    TROUBLE = 2
    """A file or the key could not be read, no key to check with, or a key
    other than the one C{--key-id} names."""


class VerifyOptions(CommandOptions):
    """
    secmsg audit verify [--key FILE | --no-key] [--key-id ID] [--head SEQ:HASH]
    FILE...
    """

    synopsis = (
        "[--key FILE | --no-key] [--key-id ID] [--head SEQ:HASH] FILE... "
        "(rotated files first: audit.log.2 audit.log.1 audit.log)"
    )
    optParameters = [
        ["key", None, None, f"The trail's key (default: {KEY_NAME} beside it)."],
        ["head", None, None, "A head the daemon logged, SEQ:HASH, to reach."],
        [
            "key-id",
            None,
            None,
            "The id the key must have, as the daemon logged it (trail_keyed, head).",
        ],
    ]
    optFlags = [
        ["no-key", None, "Check only the order of keyed records, not their MACs."],
    ]

    def parseArgs(self, *files: str) -> None:
        if not files:
            raise usage.UsageError("give the audit files to verify")
        self["files"] = sorted((Path(name) for name in files), key=_oldest_first)

    def postOptions(self) -> None:
        if self["key"] is not None and self["no-key"]:
            raise usage.UsageError("give --key or --no-key, not both")
        if self["key-id"] is not None:
            if self["no-key"]:
                raise usage.UsageError("--key-id checks the key: not with --no-key")
            if not re.fullmatch(r"[0-9a-f]{16}", self["key-id"]):
                raise usage.UsageError(
                    f"not a key id (16 hex digits, as the daemon logs it): "
                    f"{self['key-id']}"
                )
        if self["head"] is not None:
            try:
                self["head"] = Head.parse(self["head"])
            except ValueError as error:
                raise usage.UsageError(str(error)) from None


class Options(CommandOptions):
    """
    secmsg audit verify ...
    """

    synopsis = "verify ..."
    subCommands = [
        ["verify", None, VerifyOptions, "Check the chain of audit files."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("give a command: verify")


SHOWN_BREAKS = 20
"""Breaks listed one by one; the rest are counted."""


def run(options: Options) -> tuple[list[str], VerifyStatus]:
    """
    Verify the files given as one chain, oldest first whatever the order
    they were named in (C{audit.log.*} expands to the wrong one).

    @return: the lines to print, and what was found.
    @raise ConfigurationError: a file or the key cannot be read, the key
        is open to others or is not the one C{--key-id} names, or there is
        none and the trail is keyed: nothing could be concluded.
    """
    verify = options.subOptions
    files: list[Path] = verify["files"]
    key_path = Path(verify["key"] or files[-1].parent / KEY_NAME)
    key = _key(
        key_path, explicit=verify["key"] is not None, wanted=not verify["no-key"]
    )
    _check_key_id(key, key_path, verify["key-id"])
    try:
        verdict = verify_chain(numbered_lines(files), key, verify["head"])
    except OSError as error:
        raise ConfigurationError(
            str(error.filename), f"cannot read: {error.strerror}"
        ) from None
    _check_key_use(verdict, key, key_path, checked=not verify["no-key"])
    problems = _key_problems(verdict, key, key_path)
    intact = not verdict.breaks and not problems
    lines = _intact(verdict, key) if intact else _breaks(verdict, problems)
    if verify["head"] is not None:
        reached, words = _reaches(verdict, verify["head"])
        lines.append(words)
        intact = intact and reached
    elif intact and verdict.head is not None:
        lines.append(
            f"head {verdict.head}: a cut end shows only against a head the "
            "daemon logged (--head)"
        )
    return lines, VerifyStatus.INTACT if intact else VerifyStatus.TAMPERED


def _key(path: Path, *, explicit: bool, wanted: bool) -> ChainKey | None:
    """
    The key to check with: the one named, or the data directory's if it
    has one; L{None} under C{--no-key} or when there is none to find.
    """
    if not wanted or (not explicit and not path.exists()):
        return None
    return load_key(path)


def _check_key_id(key: ChainKey | None, path: Path, expected: str | None) -> None:
    """
    Refuse a key other than the one the daemon logged: anyone who can
    write beside the trail can put a key of their own there, with a trail
    rewritten under it.
    """
    if expected is None:
        return
    if key is None:
        raise ConfigurationError(
            str(path),
            f"no audit key here to check against key id {expected} "
            "(--key-id): give --key FILE",
        )
    if key.id != expected:
        raise ConfigurationError(
            str(path),
            f"this key's id is {key.id}, not {expected} (--key-id): it is not "
            "the key the daemon logged, perhaps put beside the trail by "
            "someone who could write there; give the daemon's key with "
            "--key FILE",
        )


def _check_key_use(
    verdict: Verdict, key: ChainKey | None, path: Path, *, checked: bool
) -> None:
    """
    Refuse a verdict that says nothing about the MACs: keyed records and
    no key.
    """
    if checked and verdict.unchecked is not None:
        raise ConfigurationError(
            str(path),
            f"no audit key here, and the records from {verdict.unchecked} on are "
            "keyed: give --key FILE (the audit.key of the daemon's data "
            "directory), or --no-key to check only their order",
        )


def _key_problems(verdict: Verdict, key: ChainKey | None, path: Path) -> list[str]:
    """
    What shows that a trail was rewritten without its key, though each of
    its links may hold: no record keyed at all, or records keyed under
    another key.  The daemon keys every record once it has a key, and
    never changes key within a trail.
    """
    if key is None:
        return []
    if not verdict.keyed:
        return [
            f"there is a key ({path}, key id {key.id}), but no record is "
            "keyed: an unkeyed rewrite? (files from before the daemon was "
            "keyed verify together with the newer ones it keyed)"
        ]
    others = [each for each in verdict.key_ids if each != key.id]
    if others:
        return [
            f"records are keyed with key id {', '.join(others)}, not with this "
            f"key ({path}, key id {key.id}): rewritten under another key, or "
            "this is not the trail's key (pin it with --key-id)"
        ]
    return []


def _breaks(verdict: Verdict, problems: list[str]) -> list[str]:
    lines = [
        *problems,
        *(
            f"{each.where}"
            + ("" if each.seq is None else f" (seq {each.seq})")
            + f": chain broken: {each.problem}"
            for each in verdict.breaks[:SHOWN_BREAKS]
        ),
    ]
    if len(verdict.breaks) > SHOWN_BREAKS:
        lines.append(f"and {len(verdict.breaks) - SHOWN_BREAKS} more breaks")
    lines.append(
        f"{_records(verdict.records)}, {len(verdict.breaks)} broken"
        + (", not keyed with this key" if problems else "")
    )
    return lines


def _intact(verdict: Verdict, key: ChainKey | None) -> list[str]:
    start = (
        "from the first record of the trail"
        if verdict.anchored
        else "(the first continues a file not given)"
    )
    unkeyed = verdict.records - verdict.keyed
    if not verdict.keyed:
        links = (
            "unkeyed: plain hashes, which anyone who can write the files "
            "could recompute"
        )
    else:
        links = f"keyed with key id {', '.join(verdict.key_ids)}" + (
            f", after {unkeyed} unkeyed" if unkeyed else ""
        )
        if key is None:
            links += "; MACs not checked (--no-key): only order and numbering"
    return [f"{_records(verdict.records)}, chain intact {start}; {links}"]


def _reaches(verdict: Verdict, expected: Head) -> tuple[bool, str]:
    """
    Whether the trail still holds the record logged as C{expected}, and
    what it says.

    @raise ConfigurationError: that record is older than the files given.
    """
    if verdict.at_expected == expected.link:
        return True, f"reaches the logged head {expected.seq}"
    if verdict.first_seq is not None and expected.seq < verdict.first_seq:
        raise ConfigurationError(
            f"--head {expected.seq}",
            f"before the first record given ({verdict.first_seq}): give the "
            "rotated files too",
        )
    if verdict.at_expected is not None:
        return False, (
            f"record {expected.seq} is not the one logged as the head: "
            "the trail was rewritten"
        )
    last = "nothing" if verdict.head is None else f"record {verdict.head.seq}"
    return False, (
        f"does not reach the logged head {expected.seq}: the trail ends at "
        f"{last}, so records were cut from its end"
    )


def _records(count: int) -> str:
    return f"{count} record" + ("" if count == 1 else "s")


def _oldest_first(path: Path) -> tuple[str, int]:
    """
    Sort key: a rotated file (C{audit.log.2}) before a newer one
    (C{audit.log.1}), and both before the current file (C{audit.log}).
    """
    base, _, suffix = path.name.rpartition(".")
    if suffix.isdigit() and base:
        return (str(path.parent / base), -int(suffix))
    return (str(path), 0)
