"""
Bus messages sealed with the cluster's key, so that only a daemon of the
cluster can tell the others anything.

Redis carries the bus; anyone who can reach it could publish.  Each bus
message is therefore an HMAC-SHA256 (the standard library's) of its text
under the cluster's bus key, which the first daemon made in the shared
database with the schema (C{bus_key}) and every daemon reads from there:
a daemon that can read the database can speak on the bus, and no one
else.  A message is checked before anything of it is read: its seal, then
its age (a message replayed long after it was sent is refused), then its
event (L{secmsg.daemon.cluster.events.decode}).

Each daemon process seals with an instance id of its own, by which it
knows its own messages coming back, and tells two daemons that were given
the same name.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass

from secmsg.daemon.cluster import events

MAX_BYTES = 16 << 20
"""The longest bus message taken: a segment of a whole batch of the
longest lines, escaped, with room to spare; anything longer is refused
before it is read."""

FRESH = 60.0
"""Seconds a bus message is taken for after it was sealed, either way, for
clocks that differ a little."""


@dataclass(frozen=True)
class Opened:
    """
    A bus message whose seal held: who sent it, and what it says.
    """

    instance: str
    event: events.Event


class Envelope:
    """
    Seals this daemon's bus messages and opens the others'.

    @param key: the cluster's bus key.
    @param instance: this daemon process's id.
    @param now: the time, in seconds since the epoch.
    """

    def __init__(self, key: bytes, instance: str, now: Callable[[], float]) -> None:
        self._key = key
        self.instance = instance
        self._now = now
        self._latest: dict[str, float] = {}

    def seal(self, event: events.Event) -> str:
        """
        The bus message of C{event}, sealed.
        """
        text = f"{self.instance} {self._now():.3f} {events.encode(event)}"
        return f"{self._mac(text)} {text}"

    def open(self, message: str) -> Opened:
        """
        What a bus message says, if its seal holds, it is fresh, and it
        was not sealed before the last one taken from its daemon process.

        Redis hands on one publisher's messages in the order it sent them,
        so an older one after a newer is a replay: someone on Redis sending
        again what a daemon said (a beat that held an identity's sessions,
        say, to refuse its logins elsewhere).  A daemon whose clock steps
        back is not heard until it passes its last message's time again;
        what it committed meanwhile is read from the database.

        @raise events.BadEvent: it is too long, its seal does not hold, it
            is stale or replayed, or it holds no event.
        """
        if len(message) > MAX_BYTES:
            raise events.BadEvent("longer than any bus message")
        mac, _, text = message.partition(" ")
        if not hmac.compare_digest(mac.encode(), self._mac(text).encode()):
            raise events.BadEvent("its seal does not hold: not from this cluster")
        instance, sent, event = _fields(text)
        now = self._now()
        if abs(now - sent) > FRESH:
            raise events.BadEvent("sealed too long ago, or the clocks differ")
        if sent < self._latest.get(instance, sent):
            raise events.BadEvent("sealed before its daemon's last: a replay")
        if instance not in self._latest:
            self._forget_before(now - FRESH)
        self._latest[instance] = sent
        return Opened(instance, events.decode(event))

    def _forget_before(self, oldest: float) -> None:
        """
        Forget the daemon processes last heard before C{oldest}: nothing
        sealed before their last could be fresh now.  Done as a new one is
        first heard, since only then does the record grow.
        """
        for stale in [i for i, t in self._latest.items() if t < oldest]:
            del self._latest[stale]

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def _fields(text: str) -> tuple[str, float, str]:
    instance, _, rest = text.partition(" ")
    sent, _, event = rest.partition(" ")
    try:
        moment = float(sent)
    except ValueError:
        moment = math.nan
    if not math.isfinite(moment):
        raise events.BadEvent("no time it was sealed")
    return instance, moment, event
