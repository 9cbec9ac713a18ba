"""
Who is online on the other daemons of a cluster, from what each says of
its sessions on every beat.

A daemon that stops beating is taken for dead after L{EXPIRY}: its
sessions leave C{WHO} and the others' watchers hear them go, whether it
shut down (and said so) or was killed.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

BEAT = 1.0
"""Seconds between two of a daemon's beats."""

EXPIRY = 2.5
"""Seconds without a beat after which a daemon is taken for dead: two and
a half beats, so that a beat late under load is not a death, and a death
is known within three seconds of the last beat (checked every L{CHECK})."""

CHECK = 0.25
"""Seconds between two looks for daemons that stopped beating."""


class Elsewhere:
    """
    The sessions of the other daemons, by daemon and identity.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._nodes: dict[str, tuple[dict[str, int], float]] = {}

    def is_online(self, identity: str) -> bool:
        """
        Whether C{identity} has a session on another daemon.
        """
        return any(identity in sessions for sessions, _ in self._nodes.values())

    def sessions(self, identity: str) -> int:
        """
        How many sessions C{identity} has on the other daemons.
        """
        return sum(sessions.get(identity, 0) for sessions, _ in self._nodes.values())

    def identities(self) -> set[str]:
        """
        Every identity online on another daemon.
        """
        return {name for sessions, _ in self._nodes.values() for name in sessions}

    def beat(self, node: str, sessions: dict[str, int]) -> tuple[set[str], set[str]]:
        """
        C{node} says it holds C{sessions}; return the identities that came
        online elsewhere with it, and those that left.
        """
        before = self.identities()
        self._nodes[node] = (dict(sessions), self._clock.seconds())
        after = self.identities()
        return after - before, before - after

    def gone(self, node: str) -> set[str]:
        """
        C{node} shut down; return the identities no longer online elsewhere.
        """
        before = self.identities()
        self._nodes.pop(node, None)
        return before - self.identities()

    def expire(self) -> set[str]:
        """
        Forget the daemons that stopped beating; return the identities no
        longer online elsewhere.
        """
        oldest = self._clock.seconds() - EXPIRY
        before = self.identities()
        for node in [n for n, (_, seen) in self._nodes.items() if seen < oldest]:
            del self._nodes[node]
        return before - self.identities()

    def held(self) -> list[tuple[str, str, int]]:
        """
        What each daemon alive said it holds: C{(daemon, identity,
        sessions)}, sorted.
        """
        return sorted(
            (node, identity, count)
            for node, (sessions, _) in self._nodes.items()
            for identity, count in sessions.items()
            if count
        )

    def nodes(self) -> list[str]:
        """
        The other daemons alive, sorted.
        """
        return sorted(self._nodes)
