"""
What the line protocol's commands, the admin API and SIGHUP share: the
operations that act on the daemon and are recorded the same way whoever
asks for them.

Each lives here once, so that a KICK on the line and a kick at the admin
interface close the same sessions and leave the same audit record, and a
reload by RELOAD, by the admin API or on SIGHUP is judged, applied and
recorded by one piece of code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from secmsg.daemon.audit import audit
from secmsg.daemon.interfaces import IHub
from secmsg.daemon.reload import ReloadReport
from secmsg.errors import (
    BackupRefused,
    ConfigurationError,
    NotFound,
    NotStored,
    ServerFault,
    StoreError,
)
from secmsg.wire import escape_controls

log = Logger()

T = TypeVar("T")


def refuse_store_failure(result: defer.Deferred[T]) -> defer.Deferred[T]:
    """
    Turn a store that failed (a full disk, say) into a 503 for the client,
    on the line and at the admin interface: it must never take a failure
    for success.
    """
    return result.addErrback(store_refusal)


def store_refusal(failure: Failure) -> None:
    """
    The errback of L{refuse_store_failure}, for a caller that adds it with
    its own callback in one step.

    @raise NotStored: for a store that failed; any other failure goes on.
    """
    failure.trap(StoreError)
    log.error("message store failed: {error}", error=failure.getErrorMessage())
    raise NotStored(f"not done, the message store failed: {failure.value}")


def kick_identity(hub: IHub, by: str, peer: str, identity: str, reason: str) -> int:
    """
    Close every session of C{identity}, telling each who kicked it and
    why, and record it; for KICK and the admin interface alike.

    @param peer: where the kicker is connected from.
    @return: how many sessions were closed.
    @raise NotFound: the identity has no session.
    """
    count = hub.kick(identity, by, reason or "no reason given")
    if not count:
        raise NotFound(f"{identity} is not online")
    audit(
        "kick",
        "{by} kicked {target} from {count} session(s)",
        by=by,
        peer=peer,
        target=identity,
        count=count,
    )
    return count


def reload_as(
    reload: Callable[[bool], ReloadReport],
    by: str,
    dry: bool,
    asked: str = "by {by}",
) -> ReloadReport:
    """
    Reload (or with C{dry} only judge) on behalf of C{by}, and record it;
    for RELOAD, the admin interface and SIGHUP alike.

    @param by: who asked, as the audit record names it: an identity, or
        C{"SIGHUP"}.
    @param asked: how the log line says who asked, after "reload": "by
        alice" for an identity, "on SIGHUP" for the signal, which no one
        in particular sends.
    @raise ServerFault: a file is missing or invalid; nothing changed.
    """
    try:
        report = reload(dry)
    except ConfigurationError as error:
        audit(
            "reload",
            f"reload {asked} failed, configuration unchanged: {{error}}",
            LogLevel.error,
            by=by,
            dry=dry,
            outcome="failed",
            error=str(error),
        )
        raise ServerFault(f"reload failed, configuration unchanged: {error}") from None
    done = f"reload dry run {asked}" if dry else f"reload {asked}"
    audit(
        "reload",
        done + ": {summary}",
        by=by,
        dry=dry,
        outcome="ok",
        summary=report.summary(),
    )
    return report


BACKUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What a backup may be called: a file name, no path, not hidden."""


@dataclass(frozen=True)
class Backups:
    """
    Where backups go: the operator's C{backup-dir}, and nowhere else, so
    that a right to back up is not a right to write files anywhere the
    daemon's user can.

    @ivar directory: the operator's C{backup-dir}, or L{None} if unset,
        which turns backups off.
    @ivar backup: the store's L{secmsg.daemon.interfaces.IMessageStore.backup}.
    """

    directory: Path | None
    backup: Callable[[Path, bool], defer.Deferred[int]]

    def destination(self, name: str) -> Path:
        """
        @raise BackupRefused: backups are off, or C{name} is no file name.
        """
        if self.directory is None:
            raise BackupRefused(
                "backups are off: set backup-dir in the daemon's configuration "
                "to the directory they go in"
            )
        if not BACKUP_NAME.fullmatch(name):
            raise BackupRefused(
                f"{escape_controls(name)!r} is not a backup's name: letters, "
                "digits and ._-, 1 to 128 characters, not starting with a dot; "
                "backups go in the daemon's backup-dir"
            )
        return self.directory / name


def back_up(
    backups: Backups, by: str, peer: str, name: str, replace: bool
) -> defer.Deferred[int]:
    """
    Back the message store up to C{name} in the backup directory on behalf
    of C{by}, and record it, made or not: who asked, from where, and where
    it went.

    @return: fires with the copy's size in bytes; fails with
        L{secmsg.errors.BackupRefused}, or L{NotStored} if the store failed.
    """
    try:
        destination = backups.destination(name)
    except BackupRefused as refusal:
        _record_backup(by, peer, escape_controls(name), replace, str(refusal))
        return defer.fail(refusal)
    path = str(destination)

    def made(size: int) -> int:
        audit(
            "backup",
            "{by} backed the message store up to {path} ({size} bytes)",
            by=by,
            peer=peer,
            path=path,
            replace=replace,
            outcome="ok",
            size=size,
        )
        return size

    def not_made(failure: Failure) -> Failure:
        _record_backup(by, peer, path, replace, failure.getErrorMessage())
        return failure

    return refuse_store_failure(
        backups.backup(destination, replace).addCallbacks(made, not_made)
    )


def _record_backup(by: str, peer: str, path: str, replace: bool, error: str) -> None:
    audit(
        "backup",
        "backup by {by} to {path} not made: {error}",
        LogLevel.warn,
        by=by,
        peer=peer,
        path=path,
        replace=replace,
        outcome="refused",
        error=error,
    )
