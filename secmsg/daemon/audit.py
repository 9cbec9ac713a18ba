"""
The audit trail: one JSON object per line for each security event, in a
file of its own, each line linked to the line before it by a MAC under a
key in the data directory (L{secmsg.daemon.chain}).

Events are emitted through twisted.logger like any other log event, so
that the operator's log shows them too; L{AuditTrail} is the observer that
picks them out and writes them.  An event's fields are named explicitly
where it is emitted, and none of them is ever message text or key material.
Because each record's MAC covers the record and its predecessor's MAC,
editing, inserting or deleting a line, or rewriting the tail without the
key, breaks the chain, which L{secmsg.daemon.chain.verify_chain} finds.
docs/audit.md lists the events and their fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cryptography import x509
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel
from twisted.python.logfile import LogFile
from zope.interface import implementer

from secmsg.daemon.chain import (
    GENESIS,
    KEY_NAME,
    ChainKey,
    Head,
    create_key,
    link,
    load_key,
    parse_record,
    seal,
)
from secmsg.daemon.identity import describe_subject, fingerprint
from secmsg.errors import CertificateRefused, ConfigurationError

if TYPE_CHECKING:
    from secmsg.daemon.policy import Grant

AUDIT_NAME = "audit.log"
"""The audit file's name in the data directory."""

ROTATE_BYTES = 10_000_000
"""Size at which the audit file is rotated to C{audit.log.1}, and so on."""

KEEP_ROTATED = 100
"""Rotated files kept; the oldest goes past this."""

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


def record_logout(identity: str, peer: str) -> None:
    """
    Record the end of a line session's login, whoever ended it.
    """
    audit("logout", "logout {identity} from {peer}", identity=identity, peer=peer)


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


def record_line(event: LogEvent, seq: int, previous: str, key: ChainKey) -> bytes:
    """
    The audit record of a log event, as one keyed line without its line
    ending.

    @param seq: its number in the trail, one more than the record before,
        so that a record that could not be written leaves a gap.
    @param previous: the link of the line before (L{chain.link}).
    """
    moment = datetime.fromtimestamp(event["log_time"], UTC)
    record: dict[str, Any] = {
        "seq": seq,
        "time": moment.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "event": event["audit_event"],
    }
    record.update((name, event[name]) for name in event["audit_keys"])
    return seal(record, previous, key)


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
    Writes each audit event that it observes as a keyed line to C{file},
    one write per line.

    @param previous: the link of the last line written before, so that a
        restarted daemon carries on the same chain.
    @param seq: the number of the next record.
    @ivar head: the last record written, for the operator's log; L{None}
        while the trail is empty.
    @ivar repaired: the length of a record that a crash cut short at the
        end of the file, which was ended there so that the trail goes on
        after it; 0 if there was none.
    @ivar new_key: the key was made for this trail as it opened.
    """

    def __init__(
        self,
        file: BinaryIO | LogFile,
        key: ChainKey,
        previous: str,
        seq: int,
        head: Head | None = None,
    ) -> None:
        self._file = file
        self._key = key
        self._previous = previous
        self._seq = seq
        self.head = head
        self.repaired = 0
        self.new_key = False

    def __call__(self, event: LogEvent) -> None:
        if "audit_event" not in event:
            return
        seq = self._seq
        line = record_line(event, seq, self._previous, self._key)
        # Counted before it is written: a write that fails leaves a gap in
        # the numbers, which verify reports.
        self._seq += 1
        self._file.write(line + b"\n")
        self._previous = link(line)
        self.head = Head(seq, self._previous)

    @property
    def key_id(self) -> str:
        """
        The id of the key the trail is written with.
        """
        return self._key.id

    def close(self) -> None:
        self._file.close()


def open_trail(directory: Path, rotate_bytes: int = ROTATE_BYTES) -> AuditTrail:
    """
    The audit trail in C{directory}, carrying on from the last record
    written there (in the current file, or in the newest rotated one),
    keyed with the key beside it, which is made if the trail has none.

    @param rotate_bytes: the size at which the file is rotated.
    @raise ConfigurationError: the key is open to others or is not a key,
        or the trail was keyed with a key that is missing or another.
    """
    tail = _tail(directory / AUDIT_NAME) or _tail(directory / f"{AUDIT_NAME}.1")
    whole = None if tail is None else tail[1]
    last_record = None if whole is None else parse_record(whole)
    key, new_key = _trail_key(directory / KEY_NAME, last_record)
    file = LogFile(
        AUDIT_NAME,
        str(directory),
        rotateLength=rotate_bytes,
        defaultMode=0o600,
        maxRotatedFiles=KEEP_ROTATED,
    )
    if tail is None or whole is None or last_record is None:
        trail = AuditTrail(file, key, GENESIS, 1)
    else:
        trail = AuditTrail(
            file,
            key,
            link(tail[0]),
            last_record["seq"] + 1,
            Head(last_record["seq"], link(whole)),
        )
    if tail is not None and tail[2]:
        # A crash in mid-write: end the fragment, and chain on from it so
        # that verify reports it and checks what follows.
        file.write(b"\n")
        trail.repaired = len(tail[0])
    trail.new_key = new_key
    return trail


def _trail_key(path: Path, last_record: dict[str, Any] | None) -> tuple[ChainKey, bool]:
    """
    The key to go on with after C{last_record}, and whether it was made
    now: a trail keyed before goes on only with its own key, never with a
    new one that would hide the loss of the old.
    """
    keyed_by = None if last_record is None else last_record.get("key")
    retire = "or move the audit files aside to begin a new trail"
    if not path.exists():
        if keyed_by is not None:
            raise ConfigurationError(
                str(path),
                f"missing, and the audit trail is keyed with it "
                f"(key id {keyed_by}): restore it, {retire}",
            )
        return create_key(path), True
    key = load_key(path)
    if keyed_by is not None and keyed_by != key.id:
        raise ConfigurationError(
            str(path),
            f"this is key id {key.id}, but the audit trail is keyed with "
            f"key id {keyed_by}: restore that key, {retire}",
        )
    return key, False


def _tail(path: Path) -> tuple[bytes, bytes | None, bool] | None:
    """
    The last line of a trail file, the line of its last whole record, and
    whether the last line was cut short; L{None} for no file or an empty
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
    whole = next(
        (line for line in reversed(lines) if parse_record(line) is not None), None
    )
    return last, whole, cut_short
