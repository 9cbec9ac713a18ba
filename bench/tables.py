"""
The pieces every table of the generated part is made of: how a figure is
written, a ratio, a Markdown table, and a table of figures with a column
per server and secmsg's ratio to each other one.
"""

from __future__ import annotations

from typing import Any


def peers(by_server: dict[str, Any]) -> tuple[str, ...]:
    """
    The servers of one table, in the order the run measured them: another
    checkout's secmsg first when there is one, then this one's, then
    Mosquitto.
    """
    return tuple(by_server)


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def ratio(ours: float | None, theirs: float | None) -> str:
    """
    OURS / THEIRS to two places, or to two significant digits below 0.1,
    where two places would read as nothing.
    """
    if not ours or not theirs:
        return "-"
    value = ours / theirs
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def figures(
    results: dict[str, dict[str, Any]],
    rows: list[tuple[str, str]],
    names: tuple[str, ...],
) -> list[str]:
    """
    A table with a row per figure: each server's value, then secmsg's
    ratio to each other server's.
    """
    others = [p for p in names if p != "secmsg"]
    columns = ["", *names, *(f"secmsg / {p}" for p in others)]
    lines = []
    for label, key in rows:
        values = [results[p].get(key) for p in names]
        ratios = [
            ratio(results["secmsg"].get(key), results[p].get(key)) for p in others
        ]
        lines.append([label, *map(number, values), *ratios])
    return table(columns, lines)


LATENCY_ROWS = [
    ("latency p50 (ms)", "p50_ms"),
    ("latency p99 (ms)", "p99_ms"),
    ("latency p99.9 (ms)", "p999_ms"),
]

SHARE_ROWS = [
    ("server CPU (cores)", "server_cpu_share"),
    ("client processes' CPU (cores)", "clients_cpu_share"),
]
