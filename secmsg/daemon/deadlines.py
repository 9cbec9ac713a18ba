"""
The timers a logged-in session lives by: its idle timeout, and the expiry
of its certificates.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from secmsg import wire
from secmsg.daemon.audit import record_session_closed
from secmsg.daemon.pipeline import is_blank

if TYPE_CHECKING:
    from secmsg.daemon.protocol import SessionProtocol

EXPIRY_WARNING = 300.0
"""Seconds before a certificate expires that its sessions are warned."""


class Deadlines:
    """
    The timers of a logged-in session: it is closed after the idle timeout
    without a line from it, and when the first certificate of its chain
    expires, after a warning L{EXPIRY_WARNING} seconds before.  One expiry
    timer at a time, the warning arming the end, since every idle session
    holds them.
    """

    __slots__ = ("_clock", "_expiry", "_idle", "_idle_timeout", "_session")

    def __init__(
        self, session: SessionProtocol, clock: IReactorTime, idle_timeout: float
    ) -> None:
        self._session = session
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._idle = clock.callLater(idle_timeout, self._idle_too_long)
        remaining = self._expires().timestamp() - clock.seconds()
        if remaining > EXPIRY_WARNING:
            self._expiry = clock.callLater(
                remaining - EXPIRY_WARNING, self._warn_of_expiry
            )
        else:
            self._expiry = clock.callLater(max(0.0, remaining), self._expired)

    def heard(self, frames: list[bytes | wire._Overlong]) -> None:
        """
        The peer sent lines: unless all are blank, its idle time starts
        again.
        """
        idle = self._idle
        if idle.active() and not all(is_blank(frame) for frame in frames):
            idle.reset(self._idle_timeout)

    def cancel(self) -> None:
        """
        The connection has ended: nothing is left to watch.
        """
        for timer in (self._idle, self._expiry):
            if timer.active():
                timer.cancel()

    def _expires(self) -> datetime:
        return min(c.not_valid_after_utc for c in self._session.certificate_chain)

    def _warn_of_expiry(self) -> None:
        expires = self._expires()
        self._session.notice(
            f"your certificate expires at {wire.format_time(expires)}; "
            "this session ends then; reconnect with a renewed one"
        )
        self._expiry = self._clock.callLater(
            max(0.0, expires.timestamp() - self._clock.seconds()), self._expired
        )

    def _expired(self) -> None:
        self._close_for("certificate expired")

    def _idle_too_long(self) -> None:
        self._close_for(f"idle for {self._idle_timeout:g} s")

    def _close_for(self, reason: str) -> None:
        """
        Close a session for a reason of the daemon's own, saying so to the
        peer and the audit log.
        """
        session = self._session
        if session.closing:
            return
        record_session_closed(session.avatar.identity, session.address, reason)
        session.close(reason)
