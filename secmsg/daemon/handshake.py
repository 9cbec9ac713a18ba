"""
What a connection is until it logs in: its handshake timer, the bytes it
sent early, why its certificate was refused, and which trust its chain was
judged by; and the records of the ways such a connection ends.

A L{Handshake} is made when a connection arrives and dropped at login, so
that the thousands of logged-in sessions a daemon holds keep none of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography import x509
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from secmsg.daemon.audit import RefusalRecords, audit, record_handshake_refused
from secmsg.daemon.identity import describe_subject, fingerprint
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.tls import TrustVerdict, refusal_for_handshake_failure
from secmsg.errors import CertificateRefused, RefusalReason

if TYPE_CHECKING:
    from secmsg.daemon.protocol import SessionProtocol

EARLY_DATA_LIMIT = 65536
"""Bytes a peer may send before its login completes; past it, it is dropped."""


class Handshake:
    """
    A connection not yet logged in: dropped if its login does not complete
    within the handshake timeout, or if it sends more than
    L{EARLY_DATA_LIMIT} bytes before it; its refusal, when it ends so, is
    counted and recorded within the audit trail's budget.

    @ivar done: the TLS handshake has completed (the login may still be
        under way).
    @ivar displaced: it was dropped to make room for a newer connection,
        which is recorded apart.
    @ivar chain: the chain the verify callback accepted, leaf first.
    @ivar verdict: which trust the verify callback judged its chain by.
    """

    __slots__ = (
        "_early",
        "_metrics",
        "_records",
        "_refusal",
        "_session",
        "_timeout",
        "_timer",
        "chain",
        "displaced",
        "done",
        "verdict",
    )

    def __init__(
        self,
        session: SessionProtocol,
        clock: IReactorTime,
        timeout: float,
        metrics: Metrics,
        records: RefusalRecords,
    ) -> None:
        self._session = session
        self._timeout = timeout
        self._metrics = metrics
        self._records = records
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._too_slow)
        self._early = bytearray()
        self._refusal: CertificateRefused | None = None
        self.chain: list[x509.Certificate] = []
        self.verdict: TrustVerdict | None = None
        self.displaced = self.done = False

    def refused(self, refusal: CertificateRefused) -> None:
        """
        Keep the first reason the verify callback gave to refuse the chain.
        """
        if self._refusal is None:
            self._refusal = refusal

    def hold(self, data: bytes) -> bool:
        """
        Keep bytes sent before the login, to answer after the greeting.

        @return: whether the connection stays within L{EARLY_DATA_LIMIT}.
        """
        self._early += data
        if len(self._early) <= EARLY_DATA_LIMIT:
            return True
        self._refusal = CertificateRefused(
            RefusalReason.HANDSHAKE_FAILED,
            detail=f"more than {EARLY_DATA_LIMIT} bytes before login",
        )
        return False

    def still_trusted(self, chain: list[x509.Certificate], step: str) -> bool:
        """
        Judge the chain again by the trust in force, which a reload may
        have changed since the verify callback judged it; if it no longer
        stands, count and record why.
        """
        refusal = None if self.verdict is None else self.verdict.again(chain)
        if refusal is None:
            return True
        self._metrics.handshake(refusal.reason.value)
        _record_refused_after_reload(self._session.address, step, refusal)
        self._session.close(refusal.reason.value)
        return False

    def logged_in(self) -> bytes:
        """
        The login is complete: the timer has nothing left to watch.

        @return: the bytes held since the connection began.
        """
        self.cancel()
        return bytes(self._early)

    def cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def lost(self, reason: Failure) -> None:
        """
        The connection ended before it logged in: unless it got as far as
        a login, or was dropped to make room, count and record why its
        handshake failed.
        """
        self.cancel()
        if self.done or self.displaced:
            return
        refusal = self._refusal or refusal_for_handshake_failure(reason)
        self._metrics.handshake(refusal.reason.value)
        if self._records.allow(refusal):
            record_handshake_refused(self._session.address, refusal)

    def _too_slow(self) -> None:
        self._timer = None
        if self.done or self._session.closing:
            return
        self._refusal = CertificateRefused(
            RefusalReason.HANDSHAKE_FAILED,
            detail=f"not completed within {self._timeout:g} s",
        )
        self._session.drop()


def record_displaced(address: str, reason: str) -> None:
    """
    Record a connection dropped before it logged in, to make room.
    """
    audit(
        "limit_reached",
        "dropped {peer} before it logged in: {reason}",
        LogLevel.warn,
        peer=address,
        reason=reason,
    )


def record_login_refused(
    address: str, certificate: x509.Certificate, reason: str
) -> None:
    """
    Record a verified certificate whose login the portal refused.
    """
    audit(
        "login_refused",
        "refused login from {peer}: subject {subject}: {reason}",
        LogLevel.warn,
        peer=address,
        subject=describe_subject(certificate),
        serial=f"{certificate.serial_number:x}",
        fingerprint=fingerprint(certificate),
        reason=reason,
    )


def _record_refused_after_reload(
    address: str, step: str, refusal: CertificateRefused
) -> None:
    audit(
        "handshake_refused",
        "refused {peer} at its {step}, after a reload: subject {subject}: {reason}",
        LogLevel.warn,
        peer=address,
        step=step,
        subject=refusal.subject,
        reason=refusal.describe(),
    )
