"""
What the daemon counts, for Prometheus: sessions, handshakes, commands,
messages, rate-limit hits and how long the store takes to accept.

Counting is on every command's path, so it is plain arithmetic on dicts
held here; prometheus-client turns them into its text format only when
/metrics is scraped, through a collector of the daemon's own registry (not
the global one, so that tests, and one day several daemons in a process,
do not share counters).  Nothing here holds a message's text or an
identity: labels are verbs, reply codes, refusal reasons and message
kinds, so that their number stays small whatever clients do.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of L{Metrics.exposition}."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
"""Upper bounds, in seconds, of the store latency histogram's buckets."""


class Metrics:
    """
    The daemon's counters, and their text for a scrape.
    """

    def __init__(self) -> None:
        self._sessions: Callable[[], int] = lambda: 0
        self._handshakes: Counter[str] = Counter()
        self._commands: Counter[tuple[str, str]] = Counter()
        self._admin_requests: Counter[tuple[str, str]] = Counter()
        self._messages: Counter[str] = Counter()
        self._rate_limited: Counter[str] = Counter()
        self._latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def count_sessions(self, count: Callable[[], int]) -> None:
        """
        Read the number of open sessions from C{count} at each scrape.
        """
        self._sessions = count

    def handshake(self, outcome: str) -> None:
        """
        Count a connection greeted (C{"accepted"}) or refused (the refusal's
        reason word).
        """
        self._handshakes[outcome] += 1

    def command(self, verb: str, code: str) -> None:
        self._commands[verb, code] += 1

    def admin_request(self, command: str, status: int) -> None:
        self._admin_requests[command, str(status)] += 1

    def rate_limited(self, verb: str) -> None:
        self._rate_limited[verb] += 1

    def message(self, accepted: int, delivered: int, queued: int) -> None:
        """
        Count a stored message and what became of it for its recipients.
        """
        self._messages["accepted"] += accepted
        self._messages["delivered"] += delivered
        self._messages["queued"] += queued

    def store_latency(self, seconds: float) -> None:
        self._latency_buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def exposition(self) -> bytes:
        """
        The Prometheus text format of every metric.
        """
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """
        The metrics as prometheus-client's families, for the registry.
        """
        sessions = GaugeMetricFamily("secmsg_sessions_open", "Sessions logged in now.")
        sessions.add_metric([], self._sessions())
        yield sessions
        yield _counter(
            "secmsg_handshakes",
            "Connections that were greeted (accepted) or refused, by reason.",
            ["outcome"],
            {(outcome,): n for outcome, n in self._handshakes.items()},
        )
        yield _counter(
            "secmsg_commands",
            "Commands answered, by verb and reply code.",
            ["verb", "code"],
            self._commands,
        )
        yield _counter(
            "secmsg_admin_requests",
            "Requests to the admin interface, by command and HTTP status.",
            ["command", "status"],
            self._admin_requests,
        )
        yield _counter(
            "secmsg_messages",
            "Messages accepted (stored), and deliveries pushed to an online "
            "identity (delivered) or kept for one offline (queued).",
            ["event"],
            {(event,): n for event, n in self._messages.items()},
        )
        yield _counter(
            "secmsg_rate_limited",
            "Commands refused with 429, by verb.",
            ["verb"],
            {(verb,): n for verb, n in self._rate_limited.items()},
        )
        latency = HistogramMetricFamily(
            "secmsg_store_accept_seconds",
            "Seconds from handing a message to the store to its commit.",
        )
        cumulative, buckets = 0, []
        for bound, count in zip(
            [*map(str, LATENCY_BUCKETS), "+Inf"], self._latency_buckets, strict=True
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        latency.add_metric([], buckets, self._latency_sum)
        yield latency


def _counter(
    name: str,
    documentation: str,
    labels: list[str],
    values: dict[tuple[str, ...], int] | Counter[tuple[str, str]],
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for label_values, count in sorted(values.items()):
        family.add_metric(list(label_values), count)
    return family
