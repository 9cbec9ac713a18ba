"""
The store thread's commit delay: under a steady stream a batch waits a
bounded moment for company; a lone job after a pause never waits.

The intake is driven here by a queue on a clock of its own, whose jobs
arrive at set moments: taking one moves that clock to its arrival, and a
take that times out moves it by the timeout, so what would be waited is
read off the clock, and no test sleeps.
"""

from __future__ import annotations

import queue
import sqlite3
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon.store.worker import (
    ENOUGH_COMPANY,
    STOP,
    Intake,
    Submitted,
    SubmittedLong,
    ThreadWorker,
)

DELAY = 0.001


class Arrivals:
    """
    A queue whose items arrive at given moments of its own clock.
    """

    def __init__(self, *arrivals: tuple[float, Any]) -> None:
        self.time = 0.0
        self._arrivals = list(arrivals)

    def now(self) -> float:
        return self.time

    def take(self, timeout: float | None) -> Any:
        """
        The next item, once it has arrived; or, if it would not arrive
        within C{timeout}, L{queue.Empty} once the timeout is spent; a
        negative timeout refused, as L{queue.SimpleQueue} refuses it.
        """
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if self._arrivals:
            arrival, item = self._arrivals[0]
            if timeout is None or arrival <= self.time + timeout:
                del self._arrivals[0]
                self.time = max(self.time, arrival)
                return item
        if timeout is None:
            raise LookupError("the thread would wait for ever")
        self.time += timeout
        raise queue.Empty


def job(name: str) -> Submitted:
    return Submitted(lambda connection: name)


def intake(arrivals: Arrivals, delay: float = DELAY, limit: int = 512) -> Intake:
    return Intake(arrivals.take, arrivals.now, limit, delay)


def names(batch: Any) -> list[str]:
    assert isinstance(batch, list)
    return [submitted.job(sqlite3.connect(":memory:")) for submitted in batch]


class CommitDelayTests(SynchronousTestCase):
    def test_a_lone_job_after_a_pause_is_taken_at_once(self) -> None:
        """
        The first job, and one after a pause longer than the delay even
        behind a batch that had company, is taken without waiting: a
        message after a quiet spell is committed as soon as it comes.
        """
        arrivals = Arrivals(
            (0.5, job("first")),
            (1.0, job("a")),
            (1.0, job("b")),
            (2.0, job("after a pause")),
            (2.0 + DELAY / 2, job("what a wait would have taken")),
        )
        taking = intake(arrivals)
        self.assertEqual(names(taking.next()), ["first"])
        self.assertEqual(arrivals.time, 0.5)
        self.assertEqual(names(taking.next()), ["a", "b"])
        self.assertEqual(names(taking.next()), ["after a pause"])
        self.assertEqual(arrivals.time, 2.0)

    def test_a_steady_stream_shares_commits(self) -> None:
        """
        Once batches have company, jobs that come close together, within
        the delay, are taken into one batch rather than one commit each.
        """
        gap = DELAY / 4
        arrivals = Arrivals(
            (0.0, job("a")),
            (0.0, job("b")),
            *[(n * gap, job(f"m{n}")) for n in range(1, 4)],
        )
        taking = intake(arrivals)
        self.assertEqual(names(taking.next()), ["a", "b"])
        self.assertEqual(names(taking.next()), ["m1", "m2", "m3"])
        self.assertAlmostEqual(arrivals.time, gap + DELAY)

    def test_the_wait_is_bounded_by_the_delay(self) -> None:
        """
        A batch waits no longer than the delay, however many jobs follow
        later: the delay bounds what a message's 250 may be held up.
        """
        arrivals = Arrivals(
            (0.0, job("a")),
            (0.0, job("b")),
            (DELAY / 2, job("c")),
            (DELAY * 0.9, job("d")),
            (DELAY * 2, job("e")),
        )
        taking = intake(arrivals)
        taking.next()
        self.assertEqual(names(taking.next()), ["c", "d"])
        # Given up at the delay after c was taken, not at e's coming.
        self.assertAlmostEqual(arrivals.time, DELAY / 2 + DELAY)
        self.assertEqual(names(taking.next()), ["e"])

    def test_a_batch_with_enough_company_does_not_wait(self) -> None:
        """
        A batch waits no more once it holds enough jobs to share its
        commit's cost.
        """
        arrivals = Arrivals(
            (0.0, job("a")),
            (0.0, job("b")),
            (DELAY / 10, job("m0")),
            *[(DELAY / 5, job(f"m{n}")) for n in range(1, ENOUGH_COMPANY + 1)],
        )
        taking = intake(arrivals)
        taking.next()
        batch = names(taking.next())
        self.assertEqual(batch, [f"m{n}" for n in range(ENOUGH_COMPANY)])
        self.assertEqual(arrivals.time, DELAY / 5)
        self.assertEqual(names(taking.next()), [f"m{ENOUGH_COMPANY}"])

    def test_no_wait_without_company_or_without_a_delay(self) -> None:
        """
        A lone client's messages, each after the reply to the last, are
        never held back; and a delay of 0 turns waiting off.
        """
        for delay, first in ((DELAY, [job("alone")]), (0.0, [job("a"), job("b")])):
            arrivals = Arrivals(
                *[(0.0, submitted) for submitted in first],
                (DELAY / 10, job("next")),
                (DELAY / 5, job("after")),
            )
            taking = intake(arrivals, delay)
            taking.next()
            self.assertEqual(names(taking.next()), ["next"])
            self.assertEqual(arrivals.time, DELAY / 10)

    def test_a_long_job_or_the_stop_ends_the_wait(self) -> None:
        """
        A backup or the stop that comes during a wait ends it; the batch
        is committed before it, in the order they were submitted.
        """
        for last in (SubmittedLong(lambda connection, pause: None), STOP):
            arrivals = Arrivals(
                (0.0, job("a")),
                (0.0, job("b")),
                (DELAY / 4, job("c")),
                (DELAY / 2, last),
                (DELAY / 2, job("d")),
            )
            taking = intake(arrivals)
            taking.next()
            self.assertEqual(names(taking.next()), ["c"])
            self.assertEqual(arrivals.time, DELAY / 2)
            self.assertIs(taking.next(), last)
            self.assertEqual(names(taking.next()), ["d"])

    def test_no_batch_passes_its_limit(self) -> None:
        """
        A batch limit below enough company ends the wait too.
        """
        arrivals = Arrivals(
            (0.0, job("a")),
            (0.0, job("b")),
            (DELAY / 4, job("c")),
            (DELAY / 2, job("d")),
            (DELAY * 0.75, job("e")),
        )
        taking = intake(arrivals, limit=2)
        self.assertEqual(names(taking.next()), ["a", "b"])
        self.assertEqual(names(taking.next()), ["c", "d"])
        self.assertEqual(arrivals.time, DELAY / 2)
        self.assertEqual(names(taking.next()), ["e"])

    def test_the_thread_worker_commits_a_lone_job_at_once(self) -> None:
        """
        On the worker's own thread too, a first job does not wait for the
        delay: a delay of an hour would hold this test up.
        """
        handed_back: queue.SimpleQueue[Any] = queue.SimpleQueue()
        worker = ThreadWorker(
            sqlite3.connect(":memory:", check_same_thread=False),
            lambda *call: handed_back.put(call),
            commit_delay=3600.0,
        )
        done = worker.submit(lambda connection: "stored")
        function, *arguments = handed_back.get(timeout=30)
        function(*arguments)
        self.assertEqual(self.successResultOf(done), "stored")
        stopped = worker.stop()
        function, *arguments = handed_back.get(timeout=30)
        function(*arguments)
        self.assertIsNone(self.successResultOf(stopped))
