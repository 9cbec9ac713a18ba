"""
Fill a secmsg store before its daemon starts, through the store's own
interface (L{IMessageStore} on SQLiteStore and its worker thread), never
its SQL, so that whatever the store's schema is, the history is the one
its daemon would have written.

    python bench/prefill.py DATABASE --messages N --unacknowledged U
        --identities K

N direct messages go round a hundred identities; all but the last U are
pushed and acknowledged (history), the last U wait unacknowledged for
identities that stay offline. K more identities are remembered as having
logged in. Run as a script with the secmsg to fill for first on the path
(another checkout's, for bench/run.py's --compare), so it imports nothing
of the benchmark.
"""

from __future__ import annotations

import argparse
import queue
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from secmsg.daemon.store.sqlite import SQLiteStore
from secmsg.daemon.store.worker import ThreadWorker
from secmsg.messages import Draft, Kind, Stored

ROUND = 20_000
"""Messages in flight at once: enough that the worker's batches are full,
few enough that their Deferreds stay small in memory."""

RECIPIENTS = 100
PAIRS = 4
"""The benchmark's own pairs, s0 to r0 and so on, have their share of the
acknowledged history; the other recipients are h4 to h99."""

STREAMS = hasattr(SQLiteStore, "sent")
"""Whether the secmsg filled keeps streams and cursors (store version 3 on),
whose store takes a clock and notes pushes with sent(); an older one keeps
a mailbox row per recipient and notes them with delivered()."""

TEXT = "history " + "x" * 56
"""A stored message's text: 64 bytes, which no benchmark client reads."""


def reader(n: int) -> str:
    """
    The recipient of history message C{n}: the pairs' receivers among
    the others.
    """
    index = n % RECIPIENTS
    return f"r{index}" if index < PAIRS else f"h{index}"


def away(n: int) -> str:
    """
    The recipient of waiting message C{n}: never one of the benchmark's
    pairs, whose sessions would be sent it at login.
    """
    return f"h{PAIRS + n % (RECIPIENTS - PAIRS)}"


def sender(n: int) -> str:
    """
    The sender of message C{n}: a pair's sender to its receiver, one of a
    few other identities to the rest.
    """
    return f"s{n % PAIRS}" if n % RECIPIENTS < PAIRS else f"h{n % 7}"


class Filler:
    """
    A store whose worker hands its results to this thread: the prefill
    runs no reactor, so what the worker's thread would call on the
    reactor's is queued and called here, until what was asked has fired.
    """

    def __init__(self, path: Path) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]]
        self._calls = queue.SimpleQueue()
        clock = (Clock(),) if STREAMS else ()
        self.store = SQLiteStore(path, self._worker, *clock)
        self.store.open()

    def _worker(self, connection: Any) -> ThreadWorker:
        return ThreadWorker(connection, lambda f, *a: self._calls.put((f, a)), ROUND)

    def wait(self, asked: Iterable[defer.Deferred[Any]]) -> list[Any]:
        """
        Run the worker's hand-backs until every one of C{asked} has fired;
        their results, in order (a failure stops the prefill).
        """
        results: list[Any] = []
        for deferred in asked:
            while not deferred.called:
                call, arguments = self._calls.get()
                call(*arguments)
            results.append(deferred.result)
            if isinstance(deferred.result, Failure):
                deferred.result.raiseException()
        return results

    def close(self) -> None:
        self.wait([self.store.close()])


def accept(
    filler: Filler, first: int, count: int, to: Callable[[int], str]
) -> list[defer.Deferred[Stored]]:
    """
    Hand the store messages C{first} to C{first + count - 1}, each to
    C{to(n)}, without waiting for them.
    """
    store = filler.store
    now = datetime.now(UTC)
    drafts = [
        Draft(Kind.DIRECT, sender(n), to(n), TEXT, now)
        for n in range(first, first + count)
    ]
    return [store.accept(draft, [draft.target]) for draft in drafts]


def read(filler: Filler, accepted: list[defer.Deferred[Stored]]) -> None:
    """
    Once the messages are stored, note them pushed and acknowledge them
    with one C{ACK UPTO} per recipient, as a client reading its mailbox
    does.
    """
    if not accepted:
        return
    store = filler.store
    stored = filler.wait(accepted)
    highest: dict[str, int] = {}
    for message in stored:
        highest[message.target] = max(highest.get(message.target, 0), message.id)
    if STREAMS:
        store.sent([(m.target, m) for m in stored])
        acknowledged = [
            store.acknowledge(who, upto, True, frozenset())
            for who, upto in sorted(highest.items())
        ]
    else:
        filler.wait([store.delivered([(m.target, m.id) for m in stored])])
        acknowledged = [
            store.acknowledge(who, upto, True) for who, upto in sorted(highest.items())
        ]
    filler.wait(acknowledged)


def prefill(path: Path, messages: int, unacknowledged: int, identities: int) -> None:
    """
    The whole prefill: the identities, the history, then what waits. A
    round is handed to the store before the one before it is read, so
    that this thread makes messages while the store's thread writes them.
    """
    filler = Filler(path)
    now = datetime.now(UTC)
    # The recipients are known first, as identities that have logged in:
    # a store of streams acknowledges only for those it knows.
    names = {reader(n) for n in range(RECIPIENTS)} | {
        away(n) for n in range(RECIPIENTS)
    }
    names |= {f"known{n}" for n in range(identities)}
    filler.wait(filler.store.remember(name, now) for name in sorted(names))
    history = messages - unacknowledged
    previous: list[defer.Deferred[Stored]] = []
    for first in range(0, history, ROUND):
        current = accept(filler, first, min(ROUND, history - first), reader)
        read(filler, previous)
        previous = current
    read(filler, previous)
    # Waiting for identities that stay offline: never the benchmark's pairs.
    filler.wait(
        deferred
        for first in range(history, messages, ROUND)
        for deferred in accept(filler, first, min(ROUND, messages - first), away)
    )
    filler.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database", type=Path)
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument("--unacknowledged", type=int, default=0)
    parser.add_argument("--identities", type=int, default=0)
    options = parser.parse_args()
    started = time.monotonic()
    prefill(
        options.database, options.messages, options.unacknowledged, options.identities
    )
    print(f"prefilled in {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
