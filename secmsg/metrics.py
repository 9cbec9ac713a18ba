"""
What the daemon counts, for Prometheus: sessions, handshakes, commands,
messages, rate-limit hits and how long the store takes to accept.

Each daemon has its own registry, not prometheus-client's global one, so
that tests (and, one day, several daemons in a process) do not share
counters.  Nothing here holds a message's text or an identity: labels are
verbs, reply codes, refusal reasons and message kinds, so that their
number stays small whatever clients do.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of L{Metrics.exposition}."""


class Metrics:
    """
    The daemon's counters, and their text for a scrape.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._sessions = Gauge(
            "secmsg_sessions_open", "Sessions logged in now.", registry=registry
        )
        self._handshakes = Counter(
            "secmsg_handshakes",
            "Connections that were greeted (accepted) or refused, by reason.",
            ["outcome"],
            registry=registry,
        )
        self._commands = Counter(
            "secmsg_commands",
            "Commands answered, by verb and reply code.",
            ["verb", "code"],
            registry=registry,
        )
        self._messages = Counter(
            "secmsg_messages",
            "Messages accepted (stored), and deliveries pushed to an online "
            "identity (delivered) or kept for one offline (queued).",
            ["event"],
            registry=registry,
        )
        self._admin_requests = Counter(
            "secmsg_admin_requests",
            "Requests to the admin interface, by command and HTTP status.",
            ["command", "status"],
            registry=registry,
        )
        self._rate_limited = Counter(
            "secmsg_rate_limited",
            "Commands refused with 429, by verb.",
            ["verb"],
            registry=registry,
        )
        self._store_latency = Histogram(
            "secmsg_store_accept_seconds",
            "Seconds from handing a message to the store to its commit.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
            registry=registry,
        )

    def count_sessions(self, count: Callable[[], int]) -> None:
        """
        Read the number of open sessions from C{count} at each scrape.
        """
        self._sessions.set_function(count)

    def handshake(self, outcome: str) -> None:
        """
        Count a connection greeted (C{"accepted"}) or refused (the refusal's
        reason word).
        """
        self._handshakes.labels(outcome).inc()

    def command(self, verb: str, code: str) -> None:
        self._commands.labels(verb, code).inc()

    def admin_request(self, command: str, status: int) -> None:
        self._admin_requests.labels(command, str(status)).inc()

    def rate_limited(self, verb: str) -> None:
        self._rate_limited.labels(verb).inc()

    def message(self, accepted: int, delivered: int, queued: int) -> None:
        """
        Count a stored message and what became of it for its recipients.
        """
        self._messages.labels("accepted").inc(accepted)
        self._messages.labels("delivered").inc(delivered)
        self._messages.labels("queued").inc(queued)

    def store_latency(self, seconds: float) -> None:
        self._store_latency.observe(seconds)

    def exposition(self) -> bytes:
        """
        The Prometheus text format of every metric.
        """
        return generate_latest(self.registry)
