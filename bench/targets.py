"""
The targets the message-path work is measured against, and how a run's
figures meet them: each names the figure it judges, where in the results
it is, and its bound, absolute or as a multiple of Mosquitto's figure in
the same run.

A target holds for the parameters it was set for (4 pairs, a room of 100,
a million stored messages): a run with others (a smoke run) has no figure
for it, and judges nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MOSQUITTO = "mosquitto"

Figure = Callable[[dict[str, Any], dict[str, Any], str], Any]
"""The figure of one server in a run's results, given its parameters, or
L{None} if the run did not measure it as the target asks."""


@dataclass(frozen=True)
class Goal:
    """
    One target: C{figure} at least (or at most) C{bound}, or, when
    C{of_mosquitto}, C{bound} times Mosquitto's figure.
    """

    what: str
    figure: Figure
    bound: float
    at_least: bool
    of_mosquitto: bool = False

    def stated(self) -> str:
        sign = "≥" if self.at_least else "≤"
        if self.of_mosquitto:
            times = "" if self.bound == 1 else f"{self.bound:g} times "
            return f"{sign} {times}Mosquitto's"
        return f"{sign} {self.bound:,g}"

    def verdict(self, ours: float | None, theirs: float | None) -> str | None:
        """
        "met" or "missed", or L{None} if there is nothing to judge.
        """
        bound = self.bound
        if self.of_mosquitto:
            if theirs is None:
                return None
            bound *= theirs
        if ours is None:
            return None
        met = ours >= bound if self.at_least else ours <= bound
        return "met" if met else "missed"


def dig(tree: Any, *keys: Any) -> Any:
    """
    The value at C{keys} in nested dicts and lists, or L{None} if any is
    missing.
    """
    for key in keys:
        try:
            tree = tree[key]
        except (KeyError, IndexError, TypeError):
            return None
    return tree


def _direct(part: str, key: str) -> Figure:
    def figure(results: dict[str, Any], parameters: dict[str, Any], server: str) -> Any:
        if parameters.get("pairs") != 4 or (
            part == "steady" and parameters.get("steady") != 2000
        ):
            return None
        return dig(results, "direct", server, part, key)

    return figure


def _room(key: str) -> Figure:
    def figure(
        results: dict[str, Any], _parameters: dict[str, Any], server: str
    ) -> Any:
        return dig(results, "rooms", "100", server, key)

    return figure


def _room_steady(key: str) -> Figure:
    def figure(results: dict[str, Any], parameters: dict[str, Any], server: str) -> Any:
        room = (
            parameters.get("room_steady_members"),
            parameters.get("room_steady_rate"),
        )
        if room != (100, 100):
            return None
        return dig(results, "room-steady", server, key)

    return figure


def _history(key: str) -> Figure:
    def figure(results: dict[str, Any], parameters: dict[str, Any], server: str) -> Any:
        if parameters.get("stored") != 1_000_000:
            return None
        return dig(results, "history", server, "ratio_to_fresh", key)

    return figure


def _handshakes(key: str) -> Figure:
    def figure(
        results: dict[str, Any], _parameters: dict[str, Any], server: str
    ) -> Any:
        return dig(results, "handshakes", "1.3", server, key)

    return figure


def _idle_kb(results: dict[str, Any], _parameters: dict[str, Any], server: str) -> Any:
    """
    Memory per idle session at the most sessions held, in KB (1,000
    bytes, as the target is set; the tables give KiB).
    """
    kib = dig(results, "idle", server, "levels", -1, "kib_each")
    return None if kib is None else round(kib * 1.024, 1)


GOALS = [
    Goal(
        "direct, 4 pairs, saturation: messages a second",
        _direct("saturation", "delivered_per_second"),
        30_000,
        at_least=True,
    ),
    Goal(
        "direct, 4 pairs, saturation: server CPU per message (µs)",
        _direct("saturation", "server_cpu_us_each"),
        35,
        at_least=False,
    ),
    Goal(
        "direct at a steady 2,000 a second: server CPU per message (µs)",
        _direct("steady", "server_cpu_us_each"),
        150,
        at_least=False,
    ),
    Goal(
        "direct at a steady 2,000 a second: latency p99 (ms)",
        _direct("steady", "p99_ms"),
        5,
        at_least=False,
    ),
    Goal(
        "room of 100, saturation: deliveries a second",
        _room("delivered_per_second"),
        1,
        at_least=True,
        of_mosquitto=True,
    ),
    Goal(
        "room of 100, saturation: server CPU per delivery (µs)",
        _room("server_cpu_us_each"),
        6,
        at_least=False,
    ),
    Goal(
        "room of 100 at 100 messages a second: latency p99 (ms)",
        _room_steady("p99_ms"),
        15,
        at_least=False,
    ),
    Goal(
        "room of 100 at 100 messages a second: server CPU per delivery (µs)",
        _room_steady("server_cpu_us_each"),
        25,
        at_least=False,
    ),
    Goal(
        "after 1,000,000 stored: direct messages a second, to fresh",
        _history("delivered_per_second"),
        0.9,
        at_least=True,
    ),
    Goal(
        "after 1,000,000 stored: server CPU per direct message, to fresh",
        _history("server_cpu_us_per_message"),
        1.1,
        at_least=False,
    ),
    Goal(
        "after 1,000,000 stored: ACKs a second, to fresh",
        _history("acks_per_second"),
        0.9,
        at_least=True,
    ),
    Goal(
        "after 1,000,000 stored: server CPU per ACK, to fresh",
        _history("server_cpu_us_per_ack"),
        1.1,
        at_least=False,
    ),
    Goal(
        "handshakes, TLS 1.3: server CPU per login (ms)",
        _handshakes("server_cpu_ms_each"),
        1.7,
        at_least=False,
    ),
    Goal(
        "handshakes, TLS 1.3: logins a second",
        _handshakes("per_second"),
        1,
        at_least=True,
        of_mosquitto=True,
    ),
    Goal("idle sessions: KB per session", _idle_kb, 36, at_least=False),
]
