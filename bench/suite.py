"""
The scenarios as the parent runs them: start a server, hand each
client worker its share of the load, measure, stop the server, and turn
what the workers counted into figures.

1. handshakes: new mutual-TLS sessions a second, each to the greeting.
2. direct: N sender/receiver pairs, at fixed offered loads and at
   saturation.
3. rooms: one sender, M members, at saturation.
4. idle: the server's resident memory per held session.
5. durable: messages to offline identities, confirmed a second.
6. flood: another session's PING and a fresh login, at rest and while
   sessions write blank lines as fast as they can (secmsg only).
7. room-steady: one sender, a room of 100, at a steady 100 a second.
8. broadcast: one sender, while secmsg knows 10,000 identities.
9. history: direct messages and ACK on a store filled with a million
   messages before the daemon starts, beside a fresh one (secmsg only).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.acks import AckPlan
from bench.clients import EVERYONE
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
from secmsg.daemon.store.database import DATABASE_NAME

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
        *(f"m{n}" for n in range(max(max(settings.members), IDLE_IDENTITIES))),
        *(f"hs{n}" for n in range(HANDSHAKE_IDENTITIES)),
        *(f"flood{n}" for n in range(settings.flooders)),
        PROBE,
        NEWCOMER,
        *offline,
    ]
    return names, offline


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
        self._stores: dict[tuple[Any, ...], Path] = {}

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

    def prefilled(
        self,
        server_class: type[SecmsgServer],
        messages: int = 0,
        unacknowledged: int = 0,
        identities: int = 0,
    ) -> Path:
        """
        A store filled before its daemon starts, by that daemon's own code
        (L{bench.prefill}), made once a run and copied for each server
        that starts on it.
        """
        key = (server_class.code, messages, unacknowledged, identities)
        if key not in self._stores:
            directory = self.directory / f"store{len(self._stores)}"
            directory.mkdir()
            database = directory / DATABASE_NAME
            subprocess.run(
                [
                    sys.executable,
                    Path(__file__).parent / "prefill.py",
                    database,
                    f"--messages={messages}",
                    f"--unacknowledged={unacknowledged}",
                    f"--identities={identities}",
                ],
                check=True,
                **server_class.running(),
            )
            self._stores[key] = database
        return self._stores[key]

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
                "server_cpu_ms_each": _per(cpu * 1e3, completed),
                "server_cpu_share": round(cpu / settings.seconds, 3),
                "clients_cpu_share": _clients_share(results, settings.seconds),
                **percentiles([x for r in results for x in r["latencies_us"]]),
                "failures": _merged(r["failures"] for r in results),
                "log_tracebacks": _tracebacks(server),
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
                plans = self._pair_plans(server, rate)
                with Workers(plans) as workers:
                    workers.ask("prepare")
                    figure = self._flow(server, workers)
                figures["log_tracebacks"] += _tracebacks(server)
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

    def _pair_plans(self, server: Server, rate: float | None) -> list[FlowPlan]:
        settings = self.settings
        target = self.target(server)
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
            )
            for share in shares
            if share
        ]

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
                for index, share in enumerate(_shares(names, settings.workers))
                if share
            ]
            with Workers(plans) as workers:
                workers.ask("prepare")
                figure = self._flow(server, workers)
            figure["members"] = members
            figure["offered_per_second"] = rate
            figure["log_tracebacks"] = _tracebacks(server)
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
                figure = self._flow(server, workers)
            figure["log_tracebacks"] = _tracebacks(server)
            return figure

    def broadcast(self, server_class: type[Server]) -> dict[str, Any]:
        """
        One sender broadcasting, C{room_in_flight} unconfirmed at a time,
        while secmsg knows C{known} identities (remembered in its store
        before it starts, as identities that logged in once), C{online} of
        them in sessions that are sent every broadcast. Mosquitto's
        counterpart is a QoS 1 publish to a topic every session reads; it
        keeps nothing for identities that are away.
        """
        settings = self.settings
        online = [f"m{n}" for n in range(settings.online)]
        database = None
        if issubclass(server_class, SecmsgServer):
            known = settings.known - len(online)
            database = self.prefilled(server_class, identities=known)
        with self.start(server_class, database) as server:
            plans = [
                FlowPlan(
                    self.target(server),
                    senders=[("speaker", EVERYONE)] if index == 0 else [],
                    receivers=share,
                    broadcast=True,
                    in_flight=settings.room_in_flight,
                    qos=1,
                )
                for index, share in enumerate(_shares(online, settings.workers))
            ]
            with Workers(plans) as workers:
                workers.ask("prepare")
                figure = self._flow(server, workers)
            figure["known"] = settings.known if database else None
            figure["online"] = len(online)
            figure["server_cpu_us_per_broadcast"] = _per(
                figure["server_cpu_seconds"] * 1e6,
                round(figure["confirmed_per_second"] * settings.seconds),
            )
            figure["log_tracebacks"] = _tracebacks(server)
            return figure

    def history(self, server_class: type[SecmsgServer]) -> dict[str, Any]:
        """
        Direct messages at saturation, then an ACK per message, on a fresh
        store and on one that holds C{stored} messages before the daemon
        starts (C{unacknowledged} of them waiting for identities that stay
        away, the rest read), each on a server of its own; and the
        second's figures as ratios to the first's.
        """
        settings = self.settings
        fresh = self._direct_and_acks(server_class, None)
        database = self.prefilled(
            server_class, settings.stored, settings.unacknowledged
        )
        stored = self._direct_and_acks(server_class, database)
        ratios = {
            name: _ratio(stored[part][key], fresh[part][key])
            for name, part, key in HISTORY_RATIOS
        }
        return {
            "messages_stored": settings.stored,
            "unacknowledged": settings.unacknowledged,
            "fresh": fresh,
            "stored": stored,
            "ratio_to_fresh": ratios,
            "log_tracebacks": fresh["log_tracebacks"] + stored["log_tracebacks"],
        }

    def _direct_and_acks(
        self, server_class: type[SecmsgServer], database: Path | None
    ) -> dict[str, Any]:
        with self.start(server_class, database) as server:
            settled = server.quiet()
            with Workers(self._pair_plans(server, None)) as workers:
                workers.ask("prepare")
                saturation = self._flow(server, workers)
            acks = self._acks(server)
            return {
                "settled_seconds": settled,
                "saturation": saturation,
                "acks": acks,
                "log_tracebacks": _tracebacks(server),
            }

    def _acks(self, server: Server) -> dict[str, Any]:
        """
        C{acks} messages sent to one identity, all pushed to it, then
        acknowledged one by one: the server's CPU time for the ACKs alone.
        """
        count = self.settings.acks
        plan = AckPlan(self.target(server), "s0", "r0", count)
        with Workers([plan]) as workers:
            workers.ask("prepare")
            workers.ask("deliver")
            # What the pushes left to do (noting them delivered) is not
            # the ACKs' to pay for.
            server.quiet()
            before = server.cpu_seconds()
            (answer,) = workers.ask("acknowledge")
            cpu = server.cpu_seconds() - before
        return {
            "count": count,
            "per_second": round(count / answer["seconds"], 1),
            "server_cpu_us_each": _per(cpu * 1e6, count),
            "problems": answer["problems"],
            "lost_sessions": answer["lost_sessions"],
        }

    def _flow(self, server: Server, workers: Workers) -> dict[str, Any]:
        settings = self.settings
        results, cpu = measure(server, workers, settings.warmup, settings.seconds)
        delivered = sum(r["delivered"] for r in results)
        confirmed = sum(r["confirmed"] for r in results)
        counted = delivered or confirmed
        return {
            "delivered_per_second": round(delivered / settings.seconds, 1),
            "confirmed_per_second": round(confirmed / settings.seconds, 1),
            "sent_per_second": round(
                sum(r["sent"] for r in results) / settings.seconds, 1
            ),
            "server_cpu_us_each": _per(cpu * 1e6, counted),
            "server_cpu_seconds": round(cpu, 3),
            "server_cpu_share": round(cpu / settings.seconds, 3),
            "clients_cpu_share": _clients_share(results, settings.seconds),
            **percentiles([x for r in results for x in r["latencies_us"]]),
            "problems": _merged(r["problems"] for r in results),
            "lost_sessions": sum(r["lost_sessions"] for r in results),
        }

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
            figures["log_tracebacks"] = _tracebacks(server)
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
                "log_tracebacks": _tracebacks(server),
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


HISTORY_RATIOS = [
    ("delivered_per_second", "saturation", "delivered_per_second"),
    ("server_cpu_us_per_message", "saturation", "server_cpu_us_each"),
    ("p99_ms", "saturation", "p99_ms"),
    ("acks_per_second", "acks", "per_second"),
    ("server_cpu_us_per_ack", "acks", "server_cpu_us_each"),
]
"""The figures of a full store given as ratios to a fresh one's: what
each is called, and where it is in a run's figures."""


def _ratio(ours: float | None, base: float | None) -> float | None:
    return round(ours / base, 3) if ours and base else None


def _shares(names: list[str], workers: int) -> list[list[str]]:
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


def _per(total: float, count: int) -> float | None:
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


def _tracebacks(server: Server) -> int:
    return server.log.read_text(errors="replace").count("Traceback")
