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

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from secmsg.daemon.audit import audit
from secmsg.daemon.interfaces import IHub
from secmsg.daemon.reload import ReloadReport
from secmsg.errors import (
    ConfigurationError,
    NotFound,
    NotStored,
    ServerFault,
    StoreError,
)

log = Logger()

T = TypeVar("T")


def refuse_store_failure(result: defer.Deferred[T]) -> defer.Deferred[T]:
    """
    Turn a store that failed (a full disk, say) into a 503 for the client,
    on the line and at the admin interface: it must never take a failure
    for success.
    """

    def refused(failure: Failure) -> None:
        failure.trap(StoreError)
        log.error("message store failed: {error}", error=failure.getErrorMessage())
        raise NotStored(f"not done, the message store failed: {failure.value}")

    return result.addErrback(refused)


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


def back_up(
    backup: Callable[[Path, bool], defer.Deferred[int]],
    by: str,
    peer: str,
    destination: Path,
    replace: bool,
) -> defer.Deferred[int]:
    """
    Back the message store up to C{destination} on behalf of C{by}, and
    record it, made or not: who asked, from where, and where it went.

    @param backup: the store's L{secmsg.daemon.interfaces.IMessageStore.backup}.
    @return: fires with the copy's size in bytes; fails with
        L{secmsg.errors.BackupRefused}, or L{NotStored} if the store failed.
    """
    fields: dict[str, str | bool] = {
        "by": by,
        "peer": peer,
        "path": str(destination),
        "replace": replace,
    }

    def made(size: int) -> int:
        audit(
            "backup",
            "{by} backed the message store up to {path} ({size} bytes)",
            LogLevel.info,
            **fields,
            outcome="ok",
            size=size,
        )
        return size

    def not_made(failure: Failure) -> Failure:
        audit(
            "backup",
            "backup by {by} to {path} not made: {error}",
            LogLevel.warn,
            **fields,
            outcome="refused",
            error=failure.getErrorMessage(),
        )
        return failure

    return refuse_store_failure(
        backup(destination, replace).addCallbacks(made, not_made)
    )
