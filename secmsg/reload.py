"""
The configuration that can change while the daemon runs, and its reload.

A reload reads and checks every file first; only when all of them are good
does it swap in the new TLS context and policy, so that a bad file changes
nothing.  Then it applies the new configuration to the live sessions: one
whose certificate no longer verifies (revoked, its CA dropped, expired) or
whose identity the new policy refuses is closed with the reason, and every
other session's command set follows the new policy at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from secmsg.auth import PolicyRealm
from secmsg.clock import clock_time
from secmsg.interfaces import IHub
from secmsg.policy import Policy, load_policy
from secmsg.tls import (
    ServerTLS,
    TLSFiles,
    VerifyingServerTLS,
    load_server_tls,
)

log = Logger()


@dataclass(frozen=True)
class ReloadableFiles:
    """
    The files a reload reads again.
    """

    tls: TLSFiles
    policy: Path


@dataclass(frozen=True)
class LiveConfiguration:
    """
    A policy and a server TLS context, loaded and checked together.
    """

    policy: Policy
    tls: ServerTLS


def load_live_configuration(files: ReloadableFiles, now: datetime) -> LiveConfiguration:
    """
    Load the policy and build a server TLS context.

    @raise secmsg.errors.ConfigurationError: a file is missing or invalid.
    """
    return LiveConfiguration(load_policy(files.policy), load_server_tls(files.tls, now))


@dataclass
class ReloadReport:
    """
    What a reload did to the live sessions.

    @ivar checked: how many sessions were checked.
    @ivar closed: the identity and reason of each session closed.
    """

    checked: int = 0
    closed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """
        One line for the RELOAD reply and the log.
        """
        closed = "".join(
            f"; closed {identity} ({reason})" for identity, reason in self.closed
        )
        return (
            f"reloaded policy, CA bundle and CRL; {self.checked} sessions checked"
            f"{closed}"
        )


class Reloader:
    """
    Re-reads the reloadable files and applies them to new handshakes, new
    logins and live sessions.
    """

    def __init__(
        self,
        files: ReloadableFiles,
        clock: IReactorTime,
        tls: VerifyingServerTLS,
        realm: PolicyRealm,
        hub: IHub,
    ) -> None:
        self._files = files
        self._clock = clock
        self._tls = tls
        self._realm = realm
        self._hub = hub

    def reload(self) -> ReloadReport:
        """
        Reload, or change nothing.

        @raise secmsg.errors.ConfigurationError: a file is missing or
            invalid; the old configuration stays in force, whole.
        """
        now = clock_time(self._clock)
        new = load_live_configuration(self._files, now)
        self._tls.use(new.tls)
        self._realm.policy = new.policy
        report = ReloadReport()
        for avatar, peer in self._hub.sessions():
            report.checked += 1
            refusal = new.tls.trust.recheck(peer.certificate_chain, now)
            grant = new.policy.grant_for(avatar.identity)
            if refusal is not None:
                reason = refusal.reason.value
                log.info(
                    "closing {identity}: {refusal}",
                    identity=avatar.identity,
                    refusal=refusal.describe(),
                )
            elif grant is None:
                reason = "refused by the new policy"
            else:
                avatar.regrant(grant.roles, grant.commands)
                continue
            report.closed.append((avatar.identity, reason))
            peer.close(reason)
        log.info("{summary}", summary=report.summary())
        return report
