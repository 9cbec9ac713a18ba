"""
Rates and the token buckets that enforce them: the daemon's limit on each
identity's commands, and the client's mirror of it, which paces a script so
that it never meets the daemon's C{429}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime


@dataclass(frozen=True, order=True)
class Rate:
    """
    A token bucket's shape: C{burst} commands at once, refilled at
    C{per_second}.  Ordered so that the more generous of two compares
    greater.
    """

    per_second: float
    burst: int


DEFAULT_RATE = Rate(per_second=20.0, burst=60)
"""The rate of a role that sets none and inherits none: a person typing,
or a small script, never meets it; a flood does."""


RATE_EXEMPT = frozenset({"ACK", "QUIT"})
"""Commands outside the identity's bucket of commands: leaving, which is
never refused, and acknowledging mail, which has a bucket of its own
(L{acknowledgement_rate}), since a client acknowledges every message it is
shown and a busy room would otherwise use up its commands."""

ACKNOWLEDGEMENTS_PER_COMMAND = 10
"""How many acknowledgements an identity may send for each command its
rate allows."""


def acknowledgement_rate(rate: Rate) -> Rate:
    """
    The rate of C{ACK}s that goes with a rate of commands.
    """
    return Rate(
        rate.per_second * ACKNOWLEDGEMENTS_PER_COMMAND,
        rate.burst * ACKNOWLEDGEMENTS_PER_COMMAND,
    )


@dataclass
class _Bucket:
    rate: Rate
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.rate.burst, self.tokens + elapsed * self.rate.per_second)
        self.updated = now


class RateLimiter:
    """
    A token bucket per identity, shared by all of its sessions, so that
    opening more sessions gives no more commands per second.

    A bucket that has filled up again is the same as a new one, so full
    buckets are forgotten from time to time: memory follows the identities
    that were busy lately, not every identity ever seen.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._sweep_at = 1024

    def take(self, identity: str, rate: Rate) -> float:
        """
        Spend one of C{identity}'s tokens, if it has one.

        @param rate: the identity's rate under the policy in force.
        @return: 0 if the command may run, or else the seconds until the
            next token.
        """
        bucket = self._bucket(identity, rate)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate.per_second

    def charge(self, identity: str, verb: str, rate: Rate) -> float:
        """
        Take what a line whose first word is C{verb} costs: nothing for
        QUIT, a token of the acknowledgement bucket for ACK (a client sends
        one for every message it is shown), a token of the command bucket
        for anything else.

        @return: as L{take}.
        """
        if verb == "QUIT":
            return 0.0
        if verb == "ACK":
            return self.take(f"{identity} ACK", acknowledgement_rate(rate))
        return self.take(identity, rate)

    def available(self, identity: str, rate: Rate) -> int:
        """
        How many whole tokens C{identity} has now, spending none: what its
        greeting tells a client that wants to pace itself.
        """
        return int(self._bucket(identity, rate).tokens)

    def begin(self, identity: str, rate: Rate, tokens: float) -> None:
        """
        Start C{identity}'s bucket with C{tokens} rather than full: for a
        client that mirrors a server's bucket it was told the state of.
        """
        self._buckets[identity] = _Bucket(
            rate, min(tokens, rate.burst), self._clock.seconds()
        )

    def _bucket(self, identity: str, rate: Rate) -> _Bucket:
        """
        C{identity}'s bucket, refilled to now; a new one is full.
        """
        now = self._clock.seconds()
        bucket = self._buckets.get(identity)
        if bucket is None:
            self._sweep(now)
            bucket = self._buckets[identity] = _Bucket(rate, rate.burst, now)
        else:
            # A reload may have changed the rate; the tokens saved carry over.
            bucket.rate = rate
            bucket.refill(now)
        return bucket

    def _sweep(self, now: float) -> None:
        if len(self._buckets) < self._sweep_at:
            return
        for bucket in self._buckets.values():
            bucket.refill(now)
        self._buckets = {
            identity: bucket
            for identity, bucket in self._buckets.items()
            if bucket.tokens < bucket.rate.burst
        }
        self._sweep_at = max(1024, 2 * len(self._buckets))
