"""
The generated part's tables for the message path's scenarios (a room at a
steady rate, a broadcast while thousands of identities are known, a store
that already holds a million messages) and the section that sets the run's
figures against the targets of L{bench.targets}.
"""

from __future__ import annotations

from typing import Any

from bench.tables import (
    LATENCY_ROWS,
    SHARE_ROWS,
    figures,
    number,
    peers,
    ratio,
    table,
)
from bench.targets import GOALS, MOSQUITTO

HISTORY_ROWS = [
    ("direct, delivered a second", "saturation", "delivered_per_second"),
    ("direct, server CPU per message (µs)", "saturation", "server_cpu_us_each"),
    ("direct, latency p99 (ms)", "saturation", "p99_ms"),
    ("ACKs a second", "acks", "per_second"),
    ("server CPU per ACK (µs)", "acks", "server_cpu_us_each"),
    ("seconds to settle after start", None, "settled_seconds"),
]


def sections(results: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """
    The tables of the scenarios that ran, of those this module knows.
    """
    lines: list[str] = []
    if "broadcast" in results:
        lines += _broadcast(results["broadcast"], parameters)
    if "history" in results:
        lines += _history(results["history"], parameters)
    return lines


def room_steady(by_server: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """
    The room at a steady rate, for the room fan-out's section.
    """
    return [
        f"M = {parameters['room_steady_members']:,} at a steady "
        f"{parameters['room_steady_rate']:g} messages a second, paced as the "
        "direct sweep is:",
        "",
        *figures(
            by_server,
            [
                ("deliveries a second", "delivered_per_second"),
                ("server CPU per delivery (µs)", "server_cpu_us_each"),
                *LATENCY_ROWS,
                *SHARE_ROWS,
            ],
            peers(by_server),
        ),
    ]


def _broadcast(by_server: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    return [
        f"### 7. Broadcast, {parameters['known']:,} known identities",
        "",
        f"secmsg knows {parameters['known']:,} identities (all but the "
        "online ones remembered in its store before it starts, as identities "
        f"that logged in once); {parameters['online']} of them are online, "
        "each in a session of its own, with the sender's besides. One "
        f"sender broadcasts with {parameters['room_in_flight']} broadcasts "
        "unconfirmed at most; secmsg confirms (250) once a broadcast is "
        "committed with an entry for every known identity, and pushes it to "
        "every session (the sender's own copy included). Mosquitto's "
        "counterpart is a QoS 1 publish to a topic every online session, "
        "the sender's included, reads, confirmed by PUBACK: it keeps "
        "nothing for identities that are away (that would take a "
        "persistent session each). Deliveries and latency are those to the "
        "online sessions.",
        "",
        *figures(
            by_server,
            [
                ("broadcasts confirmed a second", "confirmed_per_second"),
                ("server CPU per broadcast (µs)", "server_cpu_us_per_broadcast"),
                ("deliveries a second, online", "delivered_per_second"),
                *LATENCY_ROWS,
                *SHARE_ROWS,
            ],
            peers(by_server),
        ),
    ]


def _history(by_server: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """
    Each secmsg's figures on a fresh store, on the full one, and the
    ratio of the two.
    """
    names = peers(by_server)
    rows = []
    for label, part, key in HISTORY_ROWS:
        row = [label]
        for name in names:
            fresh, full = (
                _pick(by_server[name][state], part, key)
                for state in ("fresh", "stored")
            )
            row += [number(fresh), number(full), ratio(full, fresh)]
        rows.append(row)
    stored = f"{parameters['stored']:,}"
    read = f"{parameters['stored'] - parameters['unacknowledged']:,}"
    return [
        f"### 8. Direct messages and ACK after {stored} stored messages",
        "",
        f"The store is filled before the daemon starts with {stored} direct "
        f"messages, through the store's own interface: {read} "
        "pushed and acknowledged (history, the benchmark's pairs among "
        f"their recipients) and {parameters['unacknowledged']:,} waiting "
        "for identities that stay away. Once the daemon is quiet, the "
        f"{parameters['pairs']} pairs run at saturation, then "
        f"{parameters['acks']:,} messages to one identity are acknowledged "
        "each with its own `ACK <id>`, pipelined. The same on a fresh store "
        "in the same run; the ratio is full / fresh.",
        "",
        *table(
            [
                "",
                *(
                    column
                    for name in names
                    for column in (
                        f"{name} fresh",
                        f"after {stored}",
                        "full / fresh",
                    )
                ),
            ],
            rows,
        ),
    ]


def _pick(figures: dict[str, Any], part: str | None, key: str) -> Any:
    return (figures if part is None else figures[part])[key]


def against_targets(results: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """
    Every target with this run's figures: secmsg's (and another
    checkout's, when compared), Mosquitto's, their ratio, and whether
    secmsg met it; a target the run did not measure as it asks shows "-".
    """
    others = _compared(results)
    rows = []
    for goal in GOALS:
        ours = goal.figure(results, parameters, "secmsg")
        theirs = goal.figure(results, parameters, MOSQUITTO)
        rows.append(
            [
                goal.what,
                goal.stated(),
                *(number(goal.figure(results, parameters, o)) for o in others),
                number(ours),
                number(theirs),
                ratio(ours, theirs),
                goal.verdict(ours, theirs) or "-",
            ]
        )
    return [
        "### Against the targets",
        "",
        "From the figures above; a target set as a multiple of Mosquitto's "
        "is judged against Mosquitto's figure of the same run, and one "
        "after a million stored messages against the fresh store's.",
        "",
        *table(
            [
                "target",
                "bound",
                *others,
                "secmsg",
                "Mosquitto",
                "secmsg / Mosquitto",
                "met",
            ],
            rows,
        ),
    ]


def _compared(results: dict[str, Any]) -> list[str]:
    """
    The names of other checkouts' secmsg in the run, if any (--compare).
    """
    names: list[str] = []
    for scenario in results.values():
        # A scenario's figures by server, or by TLS version or room size
        # and then by server.
        for key, inner in scenario.items():
            for name in [key, *(inner if isinstance(inner, dict) else [])]:
                if name.startswith("secmsg (") and name not in names:
                    names.append(name)
    return names
