"""
The bounds a session lives within: how long its handshake and its silences
may last, how many sessions one identity, one address and the daemon may
hold, how many rooms one identity and the daemon may be in, and how fast
an identity may send commands.

Past a bound the daemon answers in words (C{503} for a session limit,
C{403} for a room limit, C{429} for the rate) and carries on serving
everyone else.
"""

from __future__ import annotations

import ipaddress
import math
import resource
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from twisted.internet.interfaces import IAddress, IReactorTime

from secmsg.rate import Rate, RateLimiter


@dataclass(frozen=True)
class RoomLimits:
    """
    The operator's bounds on rooms, which JOIN creates: without them one
    identity could join rooms without end, costing the daemon memory for
    each and making every C{ROOMS} reply as long as their number.

    @ivar max_rooms: rooms the daemon holds at once; a JOIN that would
        create one more is refused, one into a room that exists is not.
    @ivar max_per_identity: rooms one identity is in at once, by any of
        its sessions; its second session in a room it is in costs nothing.
    """

    max_rooms: int = 10000
    max_per_identity: int = 100


@dataclass(frozen=True)
class Limits:
    """
    The operator's bounds on sessions.

    @ivar handshake_timeout: seconds from connecting to being logged in.
    @ivar idle_timeout: seconds a session may send no line before it is
        closed (PING keeps it open).
    @ivar max_sessions: sessions the daemon holds at once.
    @ivar max_per_identity: sessions one identity holds at once.
    @ivar max_per_address: sessions from one address (an IPv6 /64 counts
        as one address) at once.
    @ivar max_handshakes: connections not yet logged in at once.
    @ivar max_handshakes_per_address: connections not yet logged in from
        one address at once.
    @ivar logins_per_identity: logins a minute one identity may make, any
        of them at once.
    @ivar logins_per_address: logins a minute from one address, any of
        them at once; more than one identity's, so that no one identity can
        use up its address's.
    @ivar rooms: the bounds on the rooms sessions are in.
    """

    handshake_timeout: float = 10.0
    idle_timeout: float = 900.0
    max_sessions: int = 10000
    max_per_identity: int = 16
    max_per_address: int = 64
    max_handshakes: int = 1000
    max_handshakes_per_address: int = 32
    logins_per_identity: int = 60
    logins_per_address: int = 600
    rooms: RoomLimits = field(default_factory=RoomLimits)

    @property
    def open_files(self) -> int:
        """
        File descriptors the daemon needs to hold its limits: every session,
        every connection still in its handshake, as many on the admin
        port, and a margin for its files.  (Connections past a limit are
        refused, but held a moment.)
        """
        return self.max_sessions + 2 * self.max_handshakes + 64


def address_group(host: str) -> str:
    """
    The address a per-address limit counts: the host itself, or its /64
    for IPv6, the block one subscriber usually holds whole.  An IPv4
    client of a dual-stack socket (C{::ffff:192.0.2.1}) counts as its IPv4
    address, not as one /64 shared by every IPv4 client.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


def describe_address(address: IAddress) -> str:
    """
    C{host:port} for IP addresses (C{[host]:port} for IPv6), the
    address's own text otherwise.
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def count_down(counter: Counter[str], key: str) -> None:
    """
    Count one fewer of C{key}, forgetting it at zero, so that a counter of
    connections by address or identity holds only what is live.
    """
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


Connection = TypeVar("Connection")


class OldestMakesRoom(Generic[Connection]):
    """
    Connections held within a bound per address and a bound in all, where
    one past a bound displaces the oldest of its address (or, past the
    bound in all, the oldest of all) instead of being refused.

    For connections that have not logged in: one that holds a connection
    open without logging in costs nothing to make, so refusing newcomers
    past a bound would let anyone who can connect lock everyone out of an
    address; a client with a certificate logs in within milliseconds of
    connecting, so it is never the oldest for long, while connections held
    open to fill the bound are displaced as soon as anyone else arrives.
    """

    def __init__(self, per_address: int, in_all: int) -> None:
        self._per_address = per_address
        self._in_all = in_all
        self._all: dict[Connection, str] = {}
        self._by_address: dict[str, dict[Connection, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def add(self, connection: Connection, address: str) -> Connection | None:
        """
        Hold C{connection}, from C{address} (as L{address_group} names it).

        @return: the connection it displaces, no longer held, which the
            caller drops; or L{None}.
        """
        self._all[connection] = address
        here = self._by_address.setdefault(address, {})
        here[connection] = None
        if len(here) > self._per_address:
            oldest = next(iter(here))
        elif len(self._all) > self._in_all:
            oldest = next(iter(self._all))
        else:
            return None
        self.discard(oldest)
        return oldest

    def discard(self, connection: Connection) -> None:
        """
        Hold C{connection} no more, if it was held.
        """
        address = self._all.pop(connection, None)
        if address is None:
            return
        here = self._by_address[address]
        del here[connection]
        if not here:
            del self._by_address[address]


def held_nowhere(key: str) -> int:
    """
    What a daemon alone knows of the connections other daemons hold.
    """
    return 0


@dataclass(frozen=True)
class Quota:
    """
    A bound on connections admitted at once that share a key (an identity,
    an address, or the same key for all), and what a refusal past it says.

    @ivar refusal: the refusal's text, with C{{key}} and C{{limit}} in it
        filled in.
    @ivar elsewhere: how many connections with a key the other daemons of
        a cluster hold, which count against the limit too.
    """

    limit: int
    refusal: str
    elsewhere: Callable[[str], int] = held_nowhere


class Admissions(Generic[Connection]):
    """
    Connections in two stages.  While they wait, they are held within a
    bound per address and one in all, where the oldest makes room
    (L{OldestMakesRoom}): holding a connection open costs nothing, so
    refusing the newest would let anyone lock an address out.  Once
    admitted they are counted against quotas, where the newest is refused:
    it has proved who it is, and may be told why.
    """

    def __init__(
        self, waiting_per_address: int, waiting_in_all: int, quotas: Sequence[Quota]
    ) -> None:
        """
        @param quotas: the bounds on connections admitted, checked in
            order; L{admit} gives each one's key.
        """
        self._waiting: OldestMakesRoom[Connection] = OldestMakesRoom(
            waiting_per_address, waiting_in_all
        )
        self._quotas = tuple(quotas)
        self._counts: tuple[Counter[str], ...] = tuple(Counter() for _ in quotas)
        self._admitted: dict[Connection, tuple[str, ...]] = {}

    @property
    def admitted(self) -> int:
        """
        How many connections are admitted now.
        """
        return len(self._admitted)

    def arrive(self, connection: Connection, address: str) -> Connection | None:
        """
        Hold a new connection from C{address} (as
        L{secmsg.daemon.limits.address_group} names it) while it waits.

        @return: the oldest connection it displaces, no longer held, which
            the caller drops; or L{None}.
        """
        return self._waiting.add(connection, address)

    def admit(self, connection: Connection, keys: tuple[str, ...]) -> str | None:
        """
        Admit a waiting connection, unless a quota is full.

        @param keys: the connection's key for each quota, in their order.
        @return: why it is refused, or L{None}; a refused connection still
            waits, until L{leave}.
        """
        for quota, counts, key in zip(self._quotas, self._counts, keys, strict=True):
            if counts[key] + quota.elsewhere(key) >= quota.limit:
                return quota.refusal.format(key=key, limit=quota.limit)
        self._waiting.discard(connection)
        self._admitted[connection] = keys
        for counts, key in zip(self._counts, keys, strict=True):
            counts[key] += 1
        return None

    def leave(self, connection: Connection) -> None:
        """
        Forget a connection that has ended, waiting or admitted.
        """
        self._waiting.discard(connection)
        keys = self._admitted.pop(connection, None)
        if keys is None:
            return
        for counts, key in zip(self._counts, keys, strict=True):
            count_down(counts, key)


@dataclass(frozen=True)
class LoginPastRate:
    """
    A login refused for coming too soon after others.

    @ivar whose: the identity, or C{address <host>}, whose logins were too
        many: what the audit trail counts refusals by.
    @ivar text: the reply's text.
    """

    whose: str
    text: str


class LoginLimiter:
    """
    Token buckets of logins, per identity and per address: each login is a
    handshake and two audit records, so one certificate logging in and out
    in a loop could otherwise spend the daemon's time and rotate older
    records out of the trail.
    """

    def __init__(self, clock: IReactorTime, limits: Limits) -> None:
        self._by_identity = RateLimiter(clock)
        self._by_address = RateLimiter(clock)
        self._per_identity = _per_minute(limits.logins_per_identity)
        self._per_address = _per_minute(limits.logins_per_address)

    def take(self, identity: str, address: str) -> LoginPastRate | None:
        """
        Spend a login of C{identity}'s and one of C{address}'s.

        @return: the refusal, if either has none left; or L{None}.
        """
        wait = self._by_identity.take(identity, self._per_identity)
        if wait:
            return _past_rate(identity, f"as {identity}", self._per_identity, wait)
        wait = self._by_address.take(address, self._per_address)
        if wait:
            return _past_rate(
                f"address {address}", f"from {address}", self._per_address, wait
            )
        return None


def _per_minute(count: int) -> Rate:
    return Rate(count / 60, count)


def _past_rate(whose: str, where: str, rate: Rate, wait: float) -> LoginPastRate:
    return LoginPastRate(
        whose,
        f"too many logins {where} (limit {rate.burst} a minute); "
        f"retry in {math.ceil(wait)} s",
    )


def raise_open_file_limit(needed: int) -> str | None:
    """
    Raise this process's limit of open files towards C{needed}, as far as
    the hard limit allows.

    @return: a warning if the limit stays below C{needed}, else L{None}.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    if soft != resource.RLIM_INFINITY and soft < needed:
        return (
            f"the limit of open files is {soft}, below the {needed} the session "
            "limits may need; connections past it will fail to be accepted"
        )
    return None
