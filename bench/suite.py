"""
The scenarios as the parent runs them: start a server, hand each
client worker its share of the load, measure, stop the server, and turn
what the workers counted into figures.

1. handshakes: new mutual-TLS sessions a second, each to the greeting.
2. direct: N sender/receiver pairs, at fixed offered loads and at
   saturation.
3. rooms: one sender, M members, at saturation; and room-steady, a room
   of 100 at a steady 100 messages a second.
4. idle: the server's resident memory per held session.
5. durable: messages to offline identities, confirmed a second.
6. flood: another session's PING and a fresh login, at rest and while
   sessions write blank lines as fast as they can (secmsg only).

The scenarios on a store filled before the daemon starts (broadcast and
history) are L{bench.filled}'s.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.flood import FloodPlan, ProbePlan
from bench.scenarios import (
    FlowPlan,
    HandshakePlan,
    IdlePlan,
    Target,
    Workers,
    measure,
    percentiles,
)
from bench.servers import Credentials, SecmsgServer, Server, make_pki

HANDSHAKE_IDENTITIES = 8
IDLE_IDENTITIES = 100

PROBE = "probe"
NEWCOMER = "newcomer"
"""The blank-line flood's probes: one PINGs, one logs in now and then."""

IDLE_CONCURRENCY = 16
"""Idle sessions a worker opens at once: a burst of thousands would
overflow the listen queue and measure the kernel's SYN retries."""


@dataclass(frozen=True)
class Settings:
    """
    The parameters of a run, recorded with its results.
    """

    workers: int = 2
    warmup: float = 2.0
    seconds: float = 5.0
    pairs: int = 4
    in_flight: int = 100
    room_in_flight: int = 20
    loads: tuple[int, ...] = (1000, 2000, 5000, 10000, 20000, 40000)
    steady: int = 2000
    members: tuple[int, ...] = (10, 100, 1000)
    idle: tuple[int, ...] = (1000, 5000)
    handshake_concurrency: int = 16
    tls_versions: tuple[str, ...] = ("1.3", "1.2")
    settle: float = 2.0
    flooders: int = 8
    ping_every: float = 0.005
    login_every: float = 1.0
    flood_target_ms: float | None = 20.0
    """Another session's PING p99 during the blank-line flood, at most;
    L{None} judges nothing (a smoke run measures nothing)."""
    room_steady_members: int = 100
    room_steady_rate: float = 100.0
    """The steady room: members, and messages a second said to it."""
    known: int = 10_000
    online: int = 8
    """Identities the daemon knows when broadcasting, and how many of them
    are online (each in a session of its own, besides the sender)."""
    stored: int = 1_000_000
    unacknowledged: int = 10_000
    """Messages in the store before the daemon starts, and how many of
    them wait unacknowledged (the rest are history, read)."""
    acks: int = 20_000
    """Messages acknowledged one by one to measure an ACK."""


def identities(settings: Settings) -> tuple[list[str], list[str]]:
    """
    Every client identity the run uses, and those of them that are offline
    recipients (which secmsg's policy must know).
    """
    offline = [f"away{n}" for n in range(settings.pairs)]
    names = [
        *(f"s{n}" for n in range(settings.pairs)),
        *(f"r{n}" for n in range(settings.pairs)),
        "speaker",
        *(f"m{n}" for n in range(_members(settings))),
        *(f"hs{n}" for n in range(HANDSHAKE_IDENTITIES)),
        *(f"flood{n}" for n in range(settings.flooders)),
        PROBE,
        NEWCOMER,
        *offline,
    ]
    return names, offline


def _members(settings: Settings) -> int:
    """
    How many m identities the run needs: the largest room's members, the
    broadcast's online identities, or the idle sessions', whichever most.
    """
    return max(
        *settings.members,
        settings.room_steady_members,
        settings.online,
        IDLE_IDENTITIES,
    )


class Bench:
    """
    One run's shared state: the PKI, a scratch directory per server, and
    the settings.
    """

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        names, offline = identities(settings)
        self.credentials: Credentials = make_pki(directory / "pki", names, offline)
        self._runs = 0

    def start(self, server_class: type[Server], database: Path | None = None) -> Server:
        """
        A server started on a scratch directory of its own; for secmsg,
        on a copy of C{database} if one is given.
        """
        self._runs += 1
        scratch = self.directory / f"run{self._runs}"
        scratch.mkdir()
        if database is None:
            return server_class.start(self.credentials, scratch)
        assert issubclass(server_class, SecmsgServer)  # noqa: S101 - caller's
        return server_class.start(self.credentials, scratch, database=database)

    def target(self, server: Server, tls: str = "1.3") -> Target:
        return Target(server.protocol, server.port, self.credentials, tls)

    def handshakes(self, server_class: type[Server], tls: str) -> dict[str, Any]:
        """
        New sessions a second from C{workers} processes, each keeping
        C{handshake_concurrency} connections in progress.
        """
        settings = self.settings
        names = [f"hs{n}" for n in range(HANDSHAKE_IDENTITIES)]
        with self.start(server_class) as server:
            target = self.target(server, tls)
            plans = [
                HandshakePlan(target, names, settings.handshake_concurrency)
                for _ in range(settings.workers)
            ]
            with Workers(plans) as workers:
                workers.ask("prepare")
                results, cpu = measure(
                    server, workers, settings.warmup, settings.seconds
                )
            completed = sum(r["completed"] for r in results)
            return {
                "per_second": round(completed / settings.seconds, 1),
                "server_cpu_ms_each": per(cpu * 1e3, completed),
                "server_cpu_share": round(cpu / settings.seconds, 3),
                "clients_cpu_share": _clients_share(results, settings.seconds),
                **percentiles([x for r in results for x in r["latencies_us"]]),
                "failures": _merged(r["failures"] for r in results),
                "log_tracebacks": tracebacks(server),
            }

    def direct(self, server_class: type[Server]) -> dict[str, Any]:
        """
        Pairs at each offered load of C{loads} (messages a second in all),
        then at saturation, each on a server of its own: an offered load
        beyond the server's leaves a backlog that would be the next one's.
        """
        settings = self.settings
        figures: dict[str, Any] = {"sweep": [], "log_tracebacks": 0}
        for rate in [*settings.loads, None]:
            with self.start(server_class) as server:
                plans = self.pair_plans(server, rate)
                with Workers(plans) as workers:
                    workers.ask("prepare")
                    figure = self.flow(server, workers)
                figures["log_tracebacks"] += tracebacks(server)
            figure["offered_per_second"] = rate
            if rate is None:
                figures["saturation"] = figure
            else:
                figures["sweep"].append(figure)
        steady = [
            f for f in figures["sweep"] if f["offered_per_second"] == settings.steady
        ]
        if steady:
            figures["steady"] = steady[0]
        return figures

    def pair_plans(self, server: Server, rate: float | None) -> list[FlowPlan]:
        return pair_plans(self.settings, self.target(server), rate)

    def room(
        self, server_class: type[Server], members: int, rate: float | None = None
    ) -> dict[str, Any]:
        """
        One sender saying to a room of C{members} other sessions, each its
        own identity: as fast as the closed loop allows, or C{rate}
        messages a second.
        """
        settings = self.settings
        names = [f"m{n}" for n in range(members)]
        with self.start(server_class) as server:
            plans = [
                FlowPlan(
                    self.target(server),
                    senders=[("speaker", "bench")] if index == 0 else [],
                    receivers=share,
                    room=True,
                    rate=rate,
                    in_flight=settings.room_in_flight,
                )
                for index, share in enumerate(dealt(names, settings.workers))
                if share
            ]
            with Workers(plans) as workers:
                workers.ask("prepare")
                figure = self.flow(server, workers)
            figure["members"] = members
            figure["offered_per_second"] = rate
            figure["log_tracebacks"] = tracebacks(server)
            return figure

    def durable(self, server_class: type[Server]) -> dict[str, Any]:
        """
        Pairs whose recipients are offline: secmsg confirms with 250 once
        the message is committed to disk; Mosquitto confirms QoS 1 with
        PUBACK once it has queued the message.
        """
        settings = self.settings
        with self.start(server_class) as server:
            target = self.target(server)
            shares: list[list[int]] = [[] for _ in range(settings.workers)]
            for n in range(settings.pairs):
                shares[n % settings.workers].append(n)
            plans = [
                FlowPlan(
                    target,
                    senders=[(f"s{n}", f"away{n}") for n in share],
                    receivers=[],
                    offline=[f"away{n}" for n in share],
                    in_flight=settings.in_flight,
                    qos=1,
                )
                for share in shares
                if share
            ]
            with Workers(plans) as workers:
                workers.ask("prepare")
                figure = self.flow(server, workers)
            figure["log_tracebacks"] = tracebacks(server)
            return figure

    def flow(self, server: Server, workers: Workers) -> dict[str, Any]:
        settings = self.settings
        results, cpu = measure(server, workers, settings.warmup, settings.seconds)
        return flow_figures(results, cpu, settings.seconds)

    def idle(self, server_class: type[Server]) -> dict[str, Any]:
        """
        The server's resident memory with no session, then with each count
        of C{idle} sessions held, and what each session costs.
        """
        settings = self.settings
        names = [f"m{n}" for n in range(IDLE_IDENTITIES)]
        figures: dict[str, Any] = {"levels": []}
        with self.start(server_class) as server:
            target = self.target(server)
            plans = [
                IdlePlan(target, names, IDLE_CONCURRENCY)
                for _ in range(settings.workers)
            ]
            with Workers(plans) as workers:
                workers.ask("prepare")
                time.sleep(settings.settle)
                base = server.rss_kib()
                figures["rss_kib_empty"] = base
                held = 0
                for level in settings.idle:
                    share = max(1, (level - held) // settings.workers)
                    workers.ask("open", count=share)
                    held += share * settings.workers
                    time.sleep(settings.settle)
                    rss = server.rss_kib()
                    figures["levels"].append(
                        {
                            "sessions": held,
                            "rss_kib": rss,
                            "kib_each": round((rss - base) / held, 1),
                        }
                    )
                figures["lost_sessions"] = sum(r["lost"] for r in workers.ask("close"))
            figures["log_tracebacks"] = tracebacks(server)
        return figures

    def flood(self, server_class: type[Server]) -> dict[str, Any]:
        """
        The probes at rest, then on the same server beside C{flooders}
        sessions that write blank lines as fast as their sockets take them.
        """
        settings = self.settings
        with self.start(server_class) as server:
            shares: list[list[str]] = [[] for _ in range(settings.workers)]
            for n in range(settings.flooders):
                shares[n % settings.workers].append(f"flood{n}")
            target = self.target(server)
            rest = self._probed(server, [])
            during = self._probed(
                server, [FloodPlan(target, share) for share in shares if share]
            )
            return {
                "flooders": settings.flooders,
                "target_p99_ms": settings.flood_target_ms,
                "rest": rest,
                "flood": during,
                "log_tracebacks": tracebacks(server),
            }

    def _probed(self, server: Server, flooders: list[FloodPlan]) -> dict[str, Any]:
        """
        One window of the probes, beside the flooders if there are any: each
        in a process of its own, so that neither waits on the other's loop.
        """
        settings = self.settings
        target = self.target(server)
        plans = [
            ProbePlan(target, PROBE, settings.ping_every),
            ProbePlan(target, NEWCOMER, settings.login_every, login=True),
            *flooders,
        ]
        with Workers(plans) as workers:
            workers.ask("prepare")
            (ping, login, *floods), cpu = measure(
                server, workers, settings.warmup, settings.seconds
            )
        figure: dict[str, Any] = {
            "ping": {
                "count": len(ping["latencies_us"]),
                **percentiles(ping["latencies_us"]),
            },
            "login": _few(login["latencies_us"]),
            "failures": _merged(r["failures"] for r in (ping, login)),
            "server_cpu_share": round(cpu / settings.seconds, 3),
            "clients_cpu_share": _clients_share(
                [ping, login, *floods], settings.seconds
            ),
        }
        if floods:
            figure |= {
                "blank_lines_per_second": round(
                    sum(r["blank_lines"] for r in floods) / settings.seconds
                ),
                "sessions": sum(r["sessions"] for r in floods),
                "reconnects": sum(r["reconnects"] for r in floods),
                "closed_by_server": _merged(r["closed_by_server"] for r in floods),
                "replies": _merged(r["replies"] for r in floods),
                "logins_refused": _merged(r["logins_refused"] for r in floods),
            }
        return figure


def pair_plans(
    settings: Settings,
    target: Target,
    rate: float | None,
    receiving: Target | None = None,
) -> list[FlowPlan]:
    """
    The direct scenario's pairs dealt round the workers, at C{rate}
    messages a second in all (L{None}: saturation); the receivers at
    C{receiving} if given (another daemon of a cluster).
    """
    shares: list[list[int]] = [[] for _ in range(settings.workers)]
    for n in range(settings.pairs):
        shares[n % settings.workers].append(n)
    per_sender = None if rate is None else rate / settings.pairs
    return [
        FlowPlan(
            target,
            senders=[(f"s{n}", f"r{n}") for n in share],
            receivers=[f"r{n}" for n in share],
            rate=per_sender,
            in_flight=settings.in_flight,
            receiving=receiving,
        )
        for share in shares
        if share
    ]


def flow_figures(
    results: list[dict[str, Any]], cpu: float, seconds: float
) -> dict[str, Any]:
    """
    A flow's figures from what its workers counted and the server's CPU
    time over a window of C{seconds}.
    """
    delivered = sum(r["delivered"] for r in results)
    confirmed = sum(r["confirmed"] for r in results)
    counted = delivered or confirmed
    return {
        "delivered_per_second": round(delivered / seconds, 1),
        "confirmed_per_second": round(confirmed / seconds, 1),
        "sent_per_second": round(sum(r["sent"] for r in results) / seconds, 1),
        "server_cpu_us_each": per(cpu * 1e6, counted),
        "server_cpu_seconds": round(cpu, 3),
        "server_cpu_share": round(cpu / seconds, 3),
        "clients_cpu_share": _clients_share(results, seconds),
        **percentiles([x for r in results for x in r["latencies_us"]]),
        "problems": _merged(r["problems"] for r in results),
        "lost_sessions": sum(r["lost_sessions"] for r in results),
    }


def dealt(names: list[str], workers: int) -> list[list[str]]:
    """
    NAMES dealt round the workers; a worker always has a share, if empty.
    """
    shares: list[list[str]] = [[] for _ in range(workers)]
    for n, name in enumerate(names):
        shares[n % workers].append(name)
    return shares


def _few(latencies_us: list[float]) -> dict[str, Any]:
    """
    A handful of times, in ms: how many, the median and the worst (a p99
    of five is the worst).
    """
    ordered = sorted(latencies_us)
    return {
        "count": len(ordered),
        "p50_ms": percentiles(ordered)["p50_ms"],
        "max_ms": round(ordered[-1] / 1000, 3) if ordered else None,
    }


def per(total: float, count: int) -> float | None:
    return round(total / count, 2) if count else None


def _clients_share(results: list[dict[str, Any]], seconds: float) -> float:
    """
    The client processes' CPU time in the window, in cores: near the cores
    left over from the server, the clients may be what bounds the rate.
    """
    return round(sum(r["cpu_seconds"] for r in results) / seconds, 3)


def _merged(counts: Any) -> dict[str, int]:
    merged: Counter[str] = Counter()
    for count in counts:
        merged.update(count)
    return dict(merged)


def tracebacks(server: Server) -> int:
    return server.log.read_text(errors="replace").count("Traceback")
