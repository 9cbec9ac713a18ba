"""
The configuration that can change while the daemon runs, and its reload.

A reload reads and checks every file first, and judges every live session
by them; only when all of that has succeeded does it swap in the new TLS
context and policy, so that a bad file changes nothing.  Then it applies
its judgement: a session whose certificate no longer verifies (revoked, its
CA dropped from the bundle, expired) or whose identity the new policy
refuses is closed with the reason, one in a room the new room rules no
longer let it join leaves it, and every other session's rights follow the
new policy at once.  A dry run (RELOAD DRY) stops after the judgement and
reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from secmsg.clock import clock_time
from secmsg.daemon.audit import record_session_closed
from secmsg.daemon.auth import PolicyRealm
from secmsg.daemon.interfaces import IHub, IPeer, ISessionAvatar
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.policy import Grant, Policy, load_policy
from secmsg.daemon.rooms import Rooms
from secmsg.daemon.tls import (
    ServerTLS,
    TLSFiles,
    VerifyingServerTLS,
    load_server_tls,
)
from secmsg.daemon.trust import Recheck
from secmsg.errors import ConfigurationError

log = Logger()


@dataclass(frozen=True)
class ReloadableFiles:
    """
    The files a reload reads again, and how strictly it reads the CRL.
    """

    tls: TLSFiles
    policy: Path
    refuse_on_stale_crl: bool = False


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
    return LiveConfiguration(
        load_policy(files.policy),
        load_server_tls(files.tls, now, files.refuse_on_stale_crl),
    )


@dataclass(frozen=True)
class SessionChange:
    """
    What a reload does, or would do, to one live session.

    @ivar closed: why the session is closed, or L{None} if it stays.
    @ivar roles: the roles before and after, if they change.
    @ivar gains: commands the new policy adds.
    @ivar loses: commands the new policy takes away.
    @ivar parts: rooms the session is taken out of, since the new policy
        no longer lets it join them (a room rule, or JOIN taken away).
    """

    identity: str
    address: str
    closed: str | None = None
    roles: tuple[str, str] | None = None
    gains: frozenset[str] = frozenset()
    loses: frozenset[str] = frozenset()
    parts: tuple[str, ...] = ()

    def describe(self) -> str:
        """
        One line for RELOAD DRY's listing.
        """
        who = f"{self.identity} ({self.address})"
        if self.closed is not None:
            return f"close {who}: {self.closed}"
        changes = []
        if self.roles:
            changes.append(f"roles {self.roles[0]} -> {self.roles[1]}")
        if self.gains:
            changes.append(f"gains {','.join(sorted(self.gains))}")
        if self.loses:
            changes.append(f"loses {','.join(sorted(self.loses))}")
        if self.parts:
            changes.append(f"leaves {','.join(self.parts)}")
        return f"{who} {'; '.join(changes)}"


@dataclass
class ReloadReport:
    """
    What a reload did, or with C{dry} would do, to the live sessions.

    @ivar checked: how many sessions were checked.
    @ivar changes: every session the reload changes.
    @ivar warnings: what the operator should fix although the reload
        went through (a CRL past its next update).
    """

    dry: bool = False
    checked: int = 0
    changes: list[SessionChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def closed(self) -> list[tuple[str, str]]:
        """
        The identity and reason of each session closed.
        """
        return [
            (change.identity, change.closed)
            for change in self.changes
            if change.closed is not None
        ]

    def summary(self) -> str:
        """
        One line for the RELOAD reply and the log.
        """
        closed = "".join(
            f"; closed {identity} ({reason})" for identity, reason in self.closed
        )
        changed = sum(1 for change in self.changes if change.closed is None)
        regranted = f"; rights changed in {_sessions(changed)}" if changed else ""
        warnings = "".join(f"; warning: {warning}" for warning in self.warnings)
        return (
            f"reloaded policy, CA bundle and CRL; {_sessions(self.checked)} checked"
            f"{closed}{regranted}{warnings}"
        )

    def lines(self) -> list[str]:
        """
        RELOAD DRY's listing: one line per session that would change, then
        the warnings.
        """
        return [change.describe() for change in self.changes] + [
            f"warning: {warning}" for warning in self.warnings
        ]


def _sessions(count: int) -> str:
    return "1 session" if count == 1 else f"{count} sessions"


class Reloader:
    """
    Re-reads the reloadable files and applies them to new handshakes, new
    logins and live sessions.

    @param metrics: told how each reload went (a dry run is no reload:
        it leaves the configuration in force as it was, whatever it finds).
    """

    def __init__(
        self,
        files: ReloadableFiles,
        clock: IReactorTime,
        tls: VerifyingServerTLS,
        realm: PolicyRealm,
        hub: IHub,
        rooms: Rooms,
        metrics: Metrics,
    ) -> None:
        """
        @param rooms: the identities' rooms, which a reload parts those
            the new policy no longer lets join.
        """
        self._files = files
        self._clock = clock
        self._tls = tls
        self._realm = realm
        self._hub = hub
        self._rooms = rooms
        self._metrics = metrics

    def reload(self, dry: bool = False) -> ReloadReport:
        """
        Reload, or change nothing; with C{dry}, only say what a reload
        would change.

        @raise secmsg.errors.ConfigurationError: a file is missing or
            invalid; the old configuration stays in force, whole.
        """
        now = clock_time(self._clock)
        new = self._load(now, dry)
        report = ReloadReport(dry, warnings=new.tls.trust.stale_crls(now))
        recheck = new.tls.trust.rechecker(now)
        judged = [
            (avatar, peer, *self._judge(new, recheck, avatar, peer))
            for avatar, peer in self._hub.sessions()
        ]
        report.checked = len(judged)
        report.changes = [change for _, _, change, _ in judged if change is not None]
        if dry:
            return report
        # Every judgement is made before anything changes: from here on,
        # nothing can fail half way.
        self._tls.use(new.tls)
        self._realm.policy = new.policy
        self._apply(judged)
        self._metrics.configuration_loaded(True, self._clock.seconds())
        log.info("{summary}", summary=report.summary())
        return report

    def _load(self, now: datetime, dry: bool) -> LiveConfiguration:
        try:
            return load_live_configuration(self._files, now)
        except ConfigurationError:
            if not dry:
                self._metrics.configuration_loaded(False, self._clock.seconds())
            raise

    def recheck(self) -> None:
        """
        Verify every live session's certificate again against the trust in
        force, as of now, and close those it refuses: for a CRL that went
        stale under C{stale-crl = "refuse"}.
        """
        recheck = self._tls.trust.rechecker(clock_time(self._clock))
        for avatar, peer in self._hub.sessions():
            refusal = recheck(peer.certificate_chain)
            if refusal is not None:
                _close(avatar, peer, refusal.reason.value)

    def _judge(
        self,
        new: LiveConfiguration,
        recheck: Recheck,
        avatar: ISessionAvatar,
        peer: IPeer,
    ) -> tuple[SessionChange | None, Grant | None]:
        """
        How the new configuration would treat one live session.
        """
        refusal = recheck(peer.certificate_chain)
        grant = new.policy.grant_for(avatar.identity, peer.certificate_chain[0])
        if refusal is not None:
            return SessionChange(
                avatar.identity, peer.address, closed=refusal.reason.value
            ), None
        if grant is None:
            return SessionChange(
                avatar.identity, peer.address, closed="refused by the new policy"
            ), None
        old = avatar.grant
        # Only what this reload takes away: a session that never had the
        # right (another certificate of the identity joined) parts nothing.
        parts = tuple(
            room
            for room in sorted(self._rooms.of(avatar.identity))
            if old.may_join(room) and not grant.may_join(room)
        )
        roles = (",".join(old.roles), ",".join(grant.roles))
        change = SessionChange(
            avatar.identity,
            peer.address,
            roles=roles if roles[0] != roles[1] else None,
            gains=grant.commands - old.commands,
            loses=old.commands - grant.commands,
            parts=parts,
        )
        if change == SessionChange(avatar.identity, peer.address):
            change = None
        return change, grant

    def _apply(
        self,
        judged: list[tuple[ISessionAvatar, IPeer, SessionChange | None, Grant | None]],
    ) -> None:
        """
        Give every session that stays its new rights first, then take
        sessions out of rooms and close those refused: what that announces
        is heard by the rights of the new policy only, not by a session
        that loses them in this same reload.
        """
        for avatar, peer, _, grant in judged:
            if grant is not None:
                avatar.regrant(grant)
                self._hub.regranted(peer)
                self._rooms.follow_reads(avatar)
        for avatar, peer, change, grant in judged:
            if change is None:
                continue
            if grant is None:
                _close(avatar, peer, change.closed)
            else:
                self._part(avatar.identity, peer, change.parts)

    def _part(self, identity: str, peer: IPeer, rooms: tuple[str, ...]) -> None:
        """
        Take C{identity} out of the rooms the new policy no longer lets
        C{peer}, its session, join; a room it has left meanwhile is passed
        over.
        """
        for room in rooms:
            self._rooms.leave_refused(identity, peer, room)


def _close(avatar: ISessionAvatar, peer: IPeer, reason: str) -> None:
    """
    Close a session the configuration in force no longer admits, saying
    why to it and to the audit trail.
    """
    record_session_closed(avatar.identity, peer.address, reason)
    peer.close(reason)
