"""
What the daemon counts, for Prometheus: sessions, handshakes, commands,
messages accepted and their deliveries, rate-limit hits, how long the
store takes to accept, what waits in the mailboxes, the last reload's
outcome and the build; with prometheus-client's own process and platform
metrics beside them.

Counting is on every command's path, so it is plain arithmetic on dicts
held here; prometheus-client turns them into its text format only when
/metrics is scraped, through a collector of the daemon's own registry (not
the global one, so that tests, and one day several daemons in a process,
do not share counters).  Nothing here holds a message's text or an
identity: labels are verbs, reply codes, refusal reasons and message
kinds, so that their number stays small whatever clients do.  Label
values are counted in the words the daemon logs ("login refused") and
turned into snake_case ("login_refused") at the scrape, so that a query
never needs quoting of spaces and the hot path never converts a thing.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from secmsg import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of L{Metrics.exposition}."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
"""Upper bounds, in seconds, of the store latency histogram's buckets."""


class Metrics:
    """
    The daemon's counters, and their text for a scrape.
    """

    def __init__(self, node: str = "") -> None:
        """
        @param node: the daemon's name in its cluster, which every scrape
            gives (C{secmsg_node_info}), so that the figures of several
            daemons behind one name can be told apart.
        """
        self._node = node
        self._sessions: Callable[[], int] = lambda: 0
        self._waiting: Callable[[], int] = lambda: 0
        self._handshakes: Counter[str] = Counter()
        self._commands: Counter[tuple[str, str]] = Counter()
        self._admin_requests: Counter[tuple[str, str]] = Counter()
        self._accepted = 0
        self._deliveries: Counter[str] = Counter()
        self._rate_limited: Counter[str] = Counter()
        self._latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._reload_successful = True
        self._reload_success_at = 0.0
        self.registry = CollectorRegistry()
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def count_sessions(self, count: Callable[[], int]) -> None:
        """
        Read the number of open sessions from C{count} at each scrape.
        """
        self._sessions = count

    def count_waiting(self, count: Callable[[], int]) -> None:
        """
        Read the number of deliveries waiting in mailboxes from C{count} at
        each scrape: the store keeps it in memory already.
        """
        self._waiting = count

    def configuration_loaded(self, successful: bool, at: float) -> None:
        """
        Note a load of the reloadable configuration, at start or by a
        reload, and whether it went through: a failed one leaves the
        previous configuration in force, and the time of the last success.

        @param at: seconds since the epoch.
        """
        self._reload_successful = successful
        if successful:
            self._reload_success_at = at

    def handshake(self, outcome: str) -> None:
        """
        Count a connection greeted (C{"accepted"}) or refused (the refusal's
        reason word).
        """
        self._handshakes[outcome] += 1

    def command(self, command: str, code: str) -> None:
        self._commands[command, code] += 1

    def admin_request(self, command: str, status: int) -> None:
        self._admin_requests[command, str(status)] += 1

    def rate_limited(self, command: str) -> None:
        self._rate_limited[command] += 1

    def message(self, delivered: int, queued: int) -> None:
        """
        Count a stored message and what became of it for its recipients:
        pushed to an online session, or kept for an offline identity.
        """
        self._accepted += 1
        self._deliveries["delivered"] += delivered
        self._deliveries["queued"] += queued

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
        yield _gauge(
            "secmsg_sessions_open", "Sessions logged in now.", self._sessions()
        )
        yield _gauge(
            "secmsg_deliveries_waiting",
            "Deliveries kept in mailboxes, unacknowledged: one for each "
            "recipient of each message.",
            self._waiting(),
        )
        yield _counter(
            "secmsg_handshakes",
            "Connections that were greeted (accepted) or refused, by reason.",
            ["outcome"],
            {(snake_case(outcome),): n for outcome, n in self._handshakes.items()},
        )
        yield _counter(
            "secmsg_commands",
            "Commands answered, by command and reply code.",
            ["command", "code"],
            self._commands,
        )
        yield _counter(
            "secmsg_admin_requests",
            "Requests to the admin interface, by the command they need and "
            "their HTTP status code.",
            ["command", "code"],
            self._admin_requests,
        )
        accepted = CounterMetricFamily(
            "secmsg_messages_accepted", "Messages stored for their recipients."
        )
        accepted.add_metric([], self._accepted)
        yield accepted
        yield _counter(
            "secmsg_deliveries",
            "Deliveries of accepted messages, one per recipient: pushed to "
            "an online session (delivered) or kept for an offline identity "
            "(queued).",
            ["outcome"],
            {(outcome,): n for outcome, n in self._deliveries.items()},
        )
        yield _counter(
            "secmsg_rate_limited",
            "Commands refused with 429, by command.",
            ["command"],
            {(command,): n for command, n in self._rate_limited.items()},
        )
        yield self._latency()
        yield from self._state()

    def _latency(self) -> HistogramMetricFamily:
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
        return latency

    def _state(self) -> Iterator[Metric]:
        """
        What is not counted: the build, and the configuration's last load.
        """
        build = GaugeMetricFamily(
            "secmsg_build_info", "The secmsg version running.", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build
        node = GaugeMetricFamily(
            "secmsg_node_info", "The daemon's name in its cluster.", labels=["node"]
        )
        node.add_metric([self._node], 1)
        yield node
        yield _gauge(
            "secmsg_config_last_reload_successful",
            "Whether the last reload went through (1) or failed and left the "
            "previous configuration in force (0).",
            int(self._reload_successful),
        )
        yield _gauge(
            "secmsg_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded, at start or by a "
            "reload, in seconds since the epoch.",
            self._reload_success_at,
        )


def snake_case(words: str) -> str:
    """
    A label value from the daemon's words: "unknown CA" becomes
    "unknown_ca", so that the values follow Prometheus's naming.
    """
    return re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


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
