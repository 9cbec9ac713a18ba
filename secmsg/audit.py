"""
The audit trail: one JSON object per line for each security event, in a
file of its own, each line carrying the SHA-256 of the line before it.

Events are emitted through twisted.logger like any other log event, so
that the operator's log shows them too; L{AuditTrail} is the observer that
picks them out and writes them.  An event's fields are named explicitly
where it is emitted, and none of them is ever message text or key material.
Because each record names its predecessor's hash, editing, inserting or
deleting a line breaks the chain at the next one, which L{verify_chain}
finds.  docs/audit.md lists the events and their fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel
from twisted.python.logfile import LogFile
from zope.interface import implementer

AUDIT_NAME = "audit.log"
"""The audit file's name in the data directory."""

ROTATE_BYTES = 10_000_000
"""Size at which the audit file is rotated to C{audit.log.1}, and so on."""

KEEP_ROTATED = 100
"""Rotated files kept; the oldest goes past this."""

GENESIS = "0" * 64
"""The C{prev} of the first record of a new trail."""

AuditValue = str | int | float | bool | None

_log = Logger(namespace="secmsg.audit")


def audit(
    event: str, text: str, level: LogLevel = LogLevel.info, **fields: AuditValue
) -> None:
    """
    Emit a security event.

    @param event: the event's name in the audit file (C{login}, C{denied}).
    @param text: the format of its line in the operator's log, which may
        use the fields by name.
    @param fields: what the audit record holds besides its time and name.
    """
    _log.emit(level, text, audit_event=event, audit_keys=tuple(fields), **fields)


def record_line(event: LogEvent, previous: str) -> bytes:
    """
    The audit record of a log event, as one line without its line ending.
    """
    moment = datetime.fromtimestamp(event["log_time"], UTC)
    record: dict[str, Any] = {
        "time": moment.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "event": event["audit_event"],
    }
    record.update((key, event[key]) for key in event["audit_keys"])
    record["prev"] = previous
    return json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode()


def line_hash(line: bytes) -> str:
    """
    The hash the next record names as its C{prev}.
    """
    return hashlib.sha256(line).hexdigest()


@implementer(ILogObserver)
class AuditTrail:
    """
    Writes each audit event that it observes as a chained line to C{file},
    one write per line.

    @param previous: the hash of the last line written before, so that a
        restarted daemon carries on the same chain.
    """

    def __init__(self, file: BinaryIO | LogFile, previous: str) -> None:
        self._file = file
        self._previous = previous

    def __call__(self, event: LogEvent) -> None:
        if "audit_event" not in event:
            return
        line = record_line(event, self._previous)
        self._file.write(line + b"\n")
        self._previous = line_hash(line)

    def close(self) -> None:
        self._file.close()


def open_trail(directory: Path) -> AuditTrail:
    """
    The audit trail in C{directory}, carrying on from the last record
    written there (in the current file, or in the newest rotated one).
    """
    trail = LogFile(
        AUDIT_NAME,
        str(directory),
        rotateLength=ROTATE_BYTES,
        defaultMode=0o600,
        maxRotatedFiles=KEEP_ROTATED,
    )
    previous = GENESIS
    for candidate in (directory / AUDIT_NAME, directory / f"{AUDIT_NAME}.1"):
        last = _last_line(candidate)
        if last is not None:
            previous = line_hash(last)
            break
    return AuditTrail(trail, previous)


def _last_line(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    lines = data.rstrip(b"\n").split(b"\n")
    return lines[-1] if lines[-1] else None


@dataclass(frozen=True)
class Break:
    """
    Where a chain is broken.

    @ivar where: the file and line number of the first record that does not
        follow the one before it.
    @ivar problem: what is wrong with it, in words.
    """

    where: str
    problem: str


@dataclass(frozen=True)
class Verdict:
    """
    What L{verify_chain} found.

    @ivar records: how many records were read before the first break (all
        of them if there is none).
    @ivar anchored: whether the first record starts a new trail; if not,
        it continues one in a file that was not given.
    @ivar broken: the first break, or L{None}.
    """

    records: int
    anchored: bool
    broken: Break | None


def verify_chain(lines: Iterable[tuple[str, bytes]]) -> Verdict:
    """
    Check that each record names the hash of the one before it.

    @param lines: C{(where, line)} for each line, oldest first, across as
        many files as given (rotated ones first).
    """
    records = 0
    anchored = False
    previous: str | None = None
    for where, line in lines:
        try:
            prev = json.loads(line)["prev"]
        except (ValueError, KeyError, TypeError):
            return Verdict(records, anchored, Break(where, "not an audit record"))
        if previous is None:
            anchored = prev == GENESIS
        elif prev != previous:
            return Verdict(
                records,
                anchored,
                Break(
                    where,
                    "does not follow the record before it (edited, "
                    "inserted, or a record before it removed)",
                ),
            )
        previous = line_hash(line)
        records += 1
    return Verdict(records, anchored, None)


def numbered_lines(paths: Iterable[Path]) -> Iterator[tuple[str, bytes]]:
    """
    The lines of the files, in order, each with C{file:line} to name it.
    """
    for path in paths:
        with path.open("rb") as file:
            for number, line in enumerate(file, start=1):
                yield f"{path}:{number}", line.rstrip(b"\n")
