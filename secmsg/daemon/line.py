"""
The line protocol's side of the daemon, wired: delivery, the commands and
the factory of sessions, as the daemon runs them and as the tests'
sessions do (L{secmsg.tap} builds the rest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IReactorTime

from secmsg.daemon.auth import PolicyRealm
from secmsg.daemon.commands import Commands, Terms
from secmsg.daemon.delivery import Delivery
from secmsg.daemon.factory import SessionFactory
from secmsg.daemon.interfaces import IHub, IMessageStore
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.reload import ReloadReport
from secmsg.daemon.rooms import Rooms
from secmsg.daemon.settings import LineSettings


@dataclass(frozen=True)
class LineParts:
    """
    What the line sessions are built on: the hub and store they share with
    the admin interface, the realm and portal they log in through, the
    clock and the metrics.
    """

    hub: IHub
    store: IMessageStore
    rooms: Rooms
    realm: PolicyRealm
    portal: Portal
    clock: IReactorTime
    metrics: Metrics


@dataclass(frozen=True)
class LineSessions:
    """
    The line protocol's side of the daemon: delivery, which the admin
    interface sends through too, and the factory of sessions.
    """

    delivery: Delivery
    sessions: SessionFactory


def build_line_sessions(
    line: LineSettings, parts: LineParts, reload: Callable[[bool], ReloadReport]
) -> LineSessions:
    """
    Wire delivery, the commands and the session factory, as the daemon
    runs them and as the tests' sessions do.

    @param reload: what RELOAD does, given whether it is a dry run.
    """
    delivery = Delivery(
        parts.hub,
        parts.store,
        parts.clock,
        lambda: parts.realm.policy.identities,
        parts.metrics,
        line.waiting_limit,
    )
    terms = Terms(
        line.history_max,
        line.max_line_length,
        line.limits.idle_timeout,
        line.waiting_limit,
        line.limits.rooms.max_per_identity,
    )
    commands = Commands(parts.hub, parts.store, delivery, parts.rooms, reload, terms)
    sessions = SessionFactory(
        parts.portal,
        commands,
        parts.clock,
        line.limits,
        parts.metrics,
        parts.hub.sessions_elsewhere,
        line.max_line_length,
    )
    parts.metrics.count_sessions(lambda: sessions.session_count)
    parts.metrics.count_waiting(delivery.waiting)
    return LineSessions(delivery, sessions)
