"""
The scenarios on a store filled before the daemon starts, by the
daemon's own store code (L{bench.prefill}):

7. broadcast: one sender, while secmsg knows 10,000 identities, a few of
   them online.
8. history: direct messages and an ACK per message on a store that holds
   a million messages, beside a fresh one (secmsg only).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.acks import AckPlan
from bench.clients import EVERYONE
from bench.scenarios import FlowPlan, Workers
from bench.servers import SecmsgServer, Server
from bench.suite import Bench, Settings, dealt, per, tracebacks
from secmsg.daemon.store.database import DATABASE_NAME

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


class FilledBench(Bench):
    """
    The run's shared state and scenarios, with the stores filled for it:
    each made once a run (per checkout and contents), then copied for
    every daemon that starts on it.
    """

    def __init__(self, directory: Path, settings: Settings) -> None:
        super().__init__(directory, settings)
        self._stores: dict[tuple[Any, ...], Path] = {}

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
                for index, share in enumerate(dealt(online, settings.workers))
            ]
            with Workers(plans) as workers:
                workers.ask("prepare")
                figure = self.flow(server, workers)
            figure["known"] = settings.known if database else None
            figure["online"] = len(online)
            figure["server_cpu_us_per_broadcast"] = per(
                figure["server_cpu_seconds"] * 1e6,
                round(figure["confirmed_per_second"] * settings.seconds),
            )
            figure["log_tracebacks"] = tracebacks(server)
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
            with Workers(self.pair_plans(server, None)) as workers:
                workers.ask("prepare")
                saturation = self.flow(server, workers)
            acks = self._acks(server)
            return {
                "settled_seconds": settled,
                "saturation": saturation,
                "acks": acks,
                "log_tracebacks": tracebacks(server),
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
            "server_cpu_us_each": per(cpu * 1e6, count),
            "problems": answer["problems"],
            "lost_sessions": answer["lost_sessions"],
        }
