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
from typing import TYPE_CHECKING, Any, BinaryIO

from cryptography import x509
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel
from twisted.python.logfile import LogFile
from zope.interface import implementer

from secmsg.daemon.identity import describe_subject, fingerprint
from secmsg.errors import CertificateRefused

if TYPE_CHECKING:
    from secmsg.daemon.policy import Grant

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


def record_login(
    identity: str,
    grant: Grant,
    certificate: x509.Certificate,
    peer: str,
    *,
    admin: bool = False,
) -> None:
    """
    Record a login: who, with which roles, granted how, from where, with
    which certificate.  An admin request is recorded as a line session's
    login is, so that what either does can be traced to a certificate.
    """
    fields: dict[str, AuditValue] = {
        "identity": identity,
        "roles": ",".join(grant.roles),
        "granted_by": grant.granted_by,
        "peer": peer,
        "subject": describe_subject(certificate),
        "serial": f"{certificate.serial_number:x}",
        "fingerprint": fingerprint(certificate),
    }
    if admin:
        text = "admin request by {identity} (roles: {roles}) from {peer}"
        fields["interface"] = "admin"
    else:
        text = (
            "login {identity} (roles: {roles}) from {peer}, certificate serial {serial}"
        )
    audit("login", text, **fields)


def record_denial(
    identity: str, peer: str, verb: str, rule: str, *, admin: bool = False
) -> None:
    """
    Record a command refused by the policy (or, at the admin interface, a
    request refused before it was carried out), naming the rule.
    """
    where = " at the admin interface" if admin else ""
    audit(
        "denied",
        "denied {verb} to {identity}" + where + ": {rule}",
        LogLevel.warn,
        identity=identity,
        peer=peer,
        verb=verb,
        rule=rule,
    )


def record_handshake_refused(
    address: str, refusal: CertificateRefused, *, admin: bool = False
) -> None:
    """
    Record a connection that did not get past TLS: its handshake failed,
    or the verify callback refused its certificate.
    """
    audit(
        "handshake_refused",
        "refused " + ("admin " if admin else "") + "handshake from {peer}: "
        "subject {subject}: {reason}",
        peer=address,
        subject=refusal.subject or "(none)",
        reason=refusal.describe(),
    )


def record_session_closed(
    identity: str,
    peer: str,
    reason: str,
    level: LogLevel = LogLevel.info,
    *,
    dropped: bool = False,
) -> None:
    """
    Record that the daemon closed a session for a reason of its own.

    @param level: C{warn} when the client's own conduct closed it.
    @param dropped: it was cut at once, with no last line to it.
    """
    audit(
        "session_closed",
        ("dropped" if dropped else "closing") + " {identity} from {peer}: {reason}",
        level,
        identity=identity,
        peer=peer,
        reason=reason,
    )


def record_line(event: LogEvent, seq: int, previous: str) -> bytes:
    """
    The audit record of a log event, as one line without its line ending.

    @param seq: its number in the trail, one more than the record before,
        so that a record that could not be written leaves a gap.
    """
    moment = datetime.fromtimestamp(event["log_time"], UTC)
    record: dict[str, Any] = {
        "seq": seq,
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


class RecordBudget:
    """
    At most C{per_window} records of one kind in each C{window} seconds;
    past that they are counted, and one record says how many were left out
    when the window ends.  For events anyone can cause without a
    certificate (a failed handshake costs a TCP connect), so that they
    cannot flood the trail and rotate older records away.
    """

    def __init__(
        self,
        clock: IReactorTime,
        event: str,
        per_window: int = 60,
        window: float = 60.0,
    ) -> None:
        self._clock = clock
        self._event = event
        self._per_window = per_window
        self._window = window
        self._window_end = 0.0
        self._used = 0
        self._left_out = 0
        self._summary: IDelayedCall | None = None

    def allow(self) -> bool:
        """
        Whether one more record of this kind may be written now.
        """
        now = self._clock.seconds()
        if now >= self._window_end:
            self._window_end = now + self._window
            self._used = 0
        if self._used < self._per_window:
            self._used += 1
            return True
        self._left_out += 1
        if self._summary is None:
            self._summary = self._clock.callLater(
                self._window_end - now, self._summarize
            )
        return False

    def _summarize(self) -> None:
        self._summary = None
        left_out, self._left_out = self._left_out, 0
        audit(
            "records_left_out",
            "{count} more {kind} events in the last {window} s were not recorded",
            LogLevel.warn,
            kind=self._event,
            count=left_out,
            window=self._window,
        )


class RepeatBudget:
    """
    One record of a kind per party in each window of C{window} seconds;
    that party's repeats within it are counted, and one record says how
    many when the window ends.  For events that a party one can name
    causes over and over (logins past an identity's rate, a revoked
    certificate trying again): each party's first is always recorded,
    whatever anyone else does, and none can flood the trail.
    """

    def __init__(self, clock: IReactorTime, event: str, window: float = 60.0) -> None:
        self._clock = clock
        self._event = event
        self._window = window
        self._repeats: dict[str, int] = {}
        self._summary: IDelayedCall | None = None

    def allow(self, party: str) -> bool:
        """
        Whether a record of this kind for C{party} may be written now.
        """
        if party in self._repeats:
            self._repeats[party] += 1
            return False
        self._repeats[party] = 0
        if self._summary is None:
            self._summary = self._clock.callLater(self._window, self._summarize)
        return True

    def _summarize(self) -> None:
        self._summary = None
        repeats, self._repeats = self._repeats, {}
        for party, count in repeats.items():
            if count:
                audit(
                    "records_left_out",
                    "{count} more {kind} events for {party} in the last {window} s "
                    "were not recorded",
                    LogLevel.warn,
                    kind=self._event,
                    party=party,
                    count=count,
                    window=self._window,
                )


@dataclass(frozen=True)
class RefusalRecords:
    """
    What the audit trail takes of refused handshakes, which come in floods:
    those of certificates our CAs issued (revoked, expired, refused by the
    policy; see L{CertificateRefused.vouched}) by the certificate, each
    one's first in a minute always recorded; the rest, which anyone who
    can connect can cause, within one budget for all.
    """

    anonymous: RecordBudget
    holders: RepeatBudget

    def allow(self, refusal: CertificateRefused) -> bool:
        """
        Whether C{refusal} may be recorded now.
        """
        if refusal.vouched:
            return self.holders.allow(f"{refusal.subject}: {refusal.reason.value}")
        return self.anonymous.allow()


@implementer(ILogObserver)
class AuditTrail:
    """
    Writes each audit event that it observes as a chained line to C{file},
    one write per line.

    @param previous: the hash of the last line written before, so that a
        restarted daemon carries on the same chain.
    @param seq: the number of the next record.
    @ivar repaired: the length of a record that a crash cut short at the
        end of the file, which was ended there so that the trail goes on
        after it; 0 if there was none.
    """

    def __init__(
        self, file: BinaryIO | LogFile, previous: str, seq: int, repaired: int = 0
    ) -> None:
        self._file = file
        self._previous = previous
        self._seq = seq
        self.repaired = repaired

    def __call__(self, event: LogEvent) -> None:
        if "audit_event" not in event:
            return
        line = record_line(event, self._seq, self._previous)
        # Counted before it is written: a write that fails leaves a gap in
        # the numbers, which verify reports.
        self._seq += 1
        self._file.write(line + b"\n")
        self._previous = line_hash(line)

    def close(self) -> None:
        self._file.close()


def open_trail(directory: Path, rotate_bytes: int = ROTATE_BYTES) -> AuditTrail:
    """
    The audit trail in C{directory}, carrying on from the last record
    written there (in the current file, or in the newest rotated one).

    @param rotate_bytes: the size at which the file is rotated.
    """
    current = directory / AUDIT_NAME
    tail = _tail(current) or _tail(directory / f"{AUDIT_NAME}.1")
    trail = LogFile(
        AUDIT_NAME,
        str(directory),
        rotateLength=rotate_bytes,
        defaultMode=0o600,
        maxRotatedFiles=KEEP_ROTATED,
    )
    if tail is None:
        return AuditTrail(trail, GENESIS, 1)
    last, seq, cut_short = tail
    if cut_short:
        # A crash in mid-write: end the fragment, and chain on from it so
        # that verify reports it and checks what follows.
        trail.write(b"\n")
    return AuditTrail(trail, line_hash(last), seq + 1, len(last) if cut_short else 0)


def _tail(path: Path) -> tuple[bytes, int, bool] | None:
    """
    The last line of a trail file, the number of its last whole record,
    and whether that line was cut short; L{None} for no file or an empty
    one.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if not data:
        return None
    lines = data.split(b"\n")
    cut_short = lines[-1] != b""
    last = lines[-1] if cut_short else lines[-2]
    seq = 0
    for line in reversed(lines):
        record = _record(line)
        if record is not None:
            seq = record["seq"]
            break
    return last, seq, cut_short


def _record(line: bytes) -> dict[str, Any] | None:
    """
    A line as an audit record, or L{None} if it is not a whole one.
    """
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("prev"), str)
        or not isinstance(record.get("seq"), int)
    ):
        return None
    return record


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

    @ivar records: how many lines were read.
    @ivar anchored: whether the first record starts a new trail; if not,
        it continues one in a file that was not given.
    @ivar breaks: every place where the chain does not hold, first first.
    """

    records: int
    anchored: bool
    breaks: tuple[Break, ...]

    @property
    def broken(self) -> Break | None:
        """
        The first break, or L{None} if the chain is intact.
        """
        return self.breaks[0] if self.breaks else None


def verify_chain(lines: Iterable[tuple[str, bytes]]) -> Verdict:
    """
    Check that each record names the hash of the line before it and
    carries the next number, and go on past a break to find the others.

    @param lines: C{(where, line)} for each line, oldest first, across as
        many files as given (rotated ones first).
    """
    count = 0
    anchored = False
    breaks: list[Break] = []
    previous: str | None = None
    last_seq: int | None = None
    for where, line in lines:
        count += 1
        record = _record(line)
        if record is None:
            breaks.append(
                Break(where, "not a whole audit record (a write cut short, or edited)")
            )
        elif previous is None:
            anchored = record["prev"] == GENESIS
        elif record["prev"] != previous:
            breaks.append(
                Break(
                    where,
                    "does not follow the line before it (edited, inserted, or "
                    "a record before it removed)",
                )
            )
        elif last_seq is not None and record["seq"] != last_seq + 1:
            breaks.append(
                Break(
                    where,
                    f"numbered {record['seq']} after {last_seq}: "
                    "records in between were never written",
                )
            )
        if record is not None:
            last_seq = record["seq"]
        previous = line_hash(line)
    return Verdict(count, anchored, tuple(breaks))


def numbered_lines(paths: Iterable[Path]) -> Iterator[tuple[str, bytes]]:
    """
    The lines of the files, in order, each with C{file:line} to name it.
    """
    for path in paths:
        with path.open("rb") as file:
            for number, line in enumerate(file, start=1):
                yield f"{path}:{number}", line.rstrip(b"\n")
