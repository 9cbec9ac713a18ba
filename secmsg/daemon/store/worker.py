"""
The one thread that talks to SQLite, and the group commit that lets
durability keep up with load.

The reactor hands the worker jobs (functions of a connection) and gets a
Deferred for each.  The worker takes every job waiting, runs them in one
transaction so that one job's failure does not undo the others, commits
once, and only then fires the Deferreds back on the reactor's thread.
Under load, many messages share one commit (one fsync); when idle, a job
is committed alone at once.  In between, under a steady stream too light
to fill batches by itself, a commit may wait a moment for company (the
commit delay, L{Intake}).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from secmsg.daemon.interfaces import IStoreWorker
from secmsg.errors import StoreError

log = Logger()

BATCH_LIMIT = 512
"""Jobs one transaction takes at most, so that a burst still commits often."""

ENOUGH_COMPANY = 32
"""Jobs in a batch past which it waits for no more: a commit costs about
125 microseconds of CPU besides its fsync (measured with SQLite's WAL and
synchronous=FULL), which 32 jobs share at about 4 each, as much as a
message's own work; waiting for more would add latency for little."""


class Connection(Protocol):
    """
    What a job needs of a database connection: SQLite's, or a PostgreSQL
    connection that speaks SQLite's dialect
    (L{secmsg.daemon.store.postgresql}).
    """

    def execute(self, sql: str, parameters: Any = (), /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...


Job = Callable[[Connection], Any]

Pause = Callable[[], None]
"""Runs the jobs waiting now; a long job calls it between its steps."""

LongJob = Callable[[Any, Pause], Any]
"""A job that runs outside any transaction and in steps (a backup), calling
the L{Pause} it is given between them so that other jobs need not wait for
it to end.  Its connection is the database's own (SQLite's, for its online
backup), so it is typed by the job."""


@dataclass
class Submitted:
    """
    A job submitted, and the Deferred its outcome fires.
    """

    job: Job
    done: defer.Deferred[Any] = field(default_factory=defer.Deferred)


@dataclass
class SubmittedLong:
    """
    A long job submitted, and the Deferred its outcome fires.
    """

    job: LongJob
    done: defer.Deferred[Any] = field(default_factory=defer.Deferred)


STOP = object()
"""Submitted last, by L{ThreadWorker.stop}: the thread ends when it comes."""

Take = Callable[[float | None], Any]
"""Takes the next thing submitted, waiting for it at most the seconds
given (L{None}: as long as it takes; 0: not at all); raises
L{queue.Empty} when nothing came in time."""


class Intake:
    """
    What the store's thread takes from what was submitted, in order: the
    jobs of its next transaction, a long job, or the stop.

    With a commit delay, a batch may wait for company, as PostgreSQL's
    C{commit_delay} lets a commit wait: up to the delay, or until it holds
    L{ENOUGH_COMPANY} jobs, since each commit's fsync and fixed cost are
    shared by every job in it.  It waits only while jobs stream in: when
    the last batch had company (as PostgreSQL's C{commit_siblings} asks
    for other transactions in progress) and this batch's first job came
    within the delay of the thread's asking.  So a job after a pause is
    committed at once, and so is each of a lone client's, which sends its
    next message only once it has the 250 of the last: a wait would gain
    it nothing.

    @param take: takes from the queue of what was submitted.
    @param now: a monotonic clock, in seconds.
    @param commit_delay: the longest a batch waits for company, in
        seconds; 0 for none.
    """

    def __init__(
        self,
        take: Take,
        now: Callable[[], float],
        batch_limit: int,
        commit_delay: float,
    ) -> None:
        self._take = take
        self._now = now
        self._batch_limit = batch_limit
        self._commit_delay = commit_delay
        self._held: SubmittedLong | object | None = None
        self._had_company = False

    def next(self) -> list[Submitted] | SubmittedLong | object:
        """
        Wait for what comes next: the jobs of a transaction, in order, or
        the long job or stop that comes before any other job.
        """
        item, self._held = self._held, None
        idle = 0.0
        if item is None:
            asked = self._now()
            item = self._take(None)
            idle = self._now() - asked
        if not isinstance(item, Submitted):
            return item
        batch = [item, *self.waiting(self._batch_limit - 1)]
        if self._had_company and idle < self._commit_delay:
            self._wait_for_company(batch)
        self._had_company = len(batch) > 1
        return batch

    def _wait_for_company(self, batch: list[Submitted]) -> None:
        """
        Add to C{batch} the jobs that come within the commit delay, until
        it holds enough; a long job or the stop ends the wait.
        """
        enough = min(ENOUGH_COMPANY, self._batch_limit)
        deadline = self._now() + self._commit_delay
        while len(batch) < enough and self._held is None:
            left = deadline - self._now()
            if left <= 0:
                return
            try:
                item = self._take(left)
            except queue.Empty:
                return
            if isinstance(item, Submitted):
                batch.append(item)
            else:
                self._held = item

    def waiting(self, limit: int) -> list[Submitted]:
        """
        Up to C{limit} plain jobs waiting now, in order; a long job or the
        stop that comes next is held for L{next}, behind them.
        """
        taken: list[Submitted] = []
        while self._held is None and len(taken) < limit:
            try:
                item = self._take(0)
            except queue.Empty:
                break
            if isinstance(item, Submitted):
                taken.append(item)
            else:
                self._held = item
        return taken

    def left(self) -> list[Any]:
        """
        Everything submitted and not taken, the held item first: what a
        thread that died leaves undone.
        """
        left = [] if self._held is None else [self._held]
        self._held = None
        while True:
            try:
                left.append(self._take(0))
            except queue.Empty:
                return left


class _TransactionLost(Exception):
    """
    A job failed and took its whole transaction with it.
    """

    def __init__(self, cause: Exception) -> None:
        super().__init__(cause)
        self.cause = cause


class Transactions(Protocol):
    """
    How a worker begins, commits and undoes a transaction on its database:
    SQLite's way (L{SQLiteTransactions}) or PostgreSQL's.
    """

    error: type[Exception]
    """What the database's driver raises."""

    def begin(self) -> None:
        """
        Begin a transaction.
        """

    def commit(self) -> None:
        """
        Commit the transaction, durably.
        """

    def rollback(self) -> None:
        """
        Undo the transaction, if there is one; never raise.
        """

    def lost(self) -> bool:
        """
        Whether the database undid the transaction on its own, with every
        job's work in it, rather than just the failed statement's.
        """

    def refusal(self, error: Exception) -> str:
        """
        What a client is told of C{error}, the driver's, in one line.
        """

    def close(self) -> None:
        """
        Close the connection.
        """


class SQLiteTransactions:
    """
    Transactions on a SQLite connection, each taking the write lock at
    once.
    """

    error: type[Exception] = sqlite3.Error

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def begin(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._connection.execute("COMMIT")

    def rollback(self) -> None:
        with suppress(sqlite3.Error):
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")

    def lost(self) -> bool:
        # SQLite undoes the whole transaction on some errors (a full disk).
        return not self._connection.in_transaction

    def refusal(self, error: Exception) -> str:
        # SQLite's words are one line, and say what the operator must fix
        # (a full disk) without naming anything of the host's.
        return str(error)

    def close(self) -> None:
        self._connection.close()


class Database(Connection, Transactions, Protocol):
    """
    A connection that says itself how to run its transactions: what the
    PostgreSQL store gives its worker.
    """


def transactions_of(connection: sqlite3.Connection | Database) -> Transactions:
    """
    How to run transactions on C{connection}.
    """
    if isinstance(connection, sqlite3.Connection):
        return SQLiteTransactions(connection)
    return connection


def run_batch(
    connection: sqlite3.Connection | Database, jobs: list[Job]
) -> list[tuple[Any, Exception | None]]:
    """
    Run jobs in one transaction and commit it.

    The jobs run side by side first: a savepoint around each costs two
    statements a job, as much as a message's own, and jobs seldom fail
    (none fails for anything a client sends).  Only if one fails is the
    transaction rolled back and the batch run again with a savepoint
    around each job, so that its failure stays its own.

    @return: each job's result or the error it raised; if the commit fails
        (a full disk, say) every job gets a L{StoreError}, since nothing of
        theirs was kept.
    """
    transactions = transactions_of(connection)
    try:
        transactions.begin()
        try:
            results = [job(connection) for job in jobs]
        except Exception:  # noqa: BLE001 -- the run apart says which job, and why
            transactions.rollback()
            return _run_apart(connection, jobs, transactions)
        transactions.commit()
    except transactions.error as error:
        transactions.rollback()
        return [(None, StoreError(transactions.refusal(error)))] * len(jobs)
    return [(result, None) for result in results]


def _run_apart(
    connection: Connection, jobs: list[Job], transactions: Transactions
) -> list[tuple[Any, Exception | None]]:
    """
    Run jobs in one transaction, each in a savepoint of its own, and
    commit it: what L{run_batch} does once a job of the batch has failed.
    """
    outcomes: list[tuple[Any, Exception | None]] = []
    try:
        transactions.begin()
        for job in jobs:
            outcomes.append(_run_one(connection, job, transactions))
        transactions.commit()
    except transactions.error as error:
        transactions.rollback()
        return [(None, StoreError(transactions.refusal(error)))] * len(jobs)
    except _TransactionLost as lost:
        transactions.rollback()
        failure = StoreError(transactions.refusal(lost.cause))
        return [(None, failure)] * len(jobs)
    return outcomes


def _run_one(
    connection: Connection, job: Job, transactions: Transactions
) -> tuple[Any, Exception | None]:
    connection.execute("SAVEPOINT job")
    try:
        result = job(connection)
    except Exception as error:  # one job's fault stays its own
        if transactions.lost():
            # The database undid the whole transaction, so the jobs before
            # this one were lost with it.
            raise _TransactionLost(error) from error
        connection.execute("ROLLBACK TO job")
        connection.execute("RELEASE job")
        if isinstance(error, transactions.error):
            error = StoreError(transactions.refusal(error))
        return None, error
    connection.execute("RELEASE job")
    return result, None


@implementer(IStoreWorker)
class ThreadWorker:
    """
    Runs jobs on a dedicated thread that owns the connection.

    @param call_from_thread: the reactor's C{callFromThread}, to fire the
        Deferreds on the reactor's thread.
    @param commit_delay: the longest a commit waits for company under a
        steady stream, in seconds (L{Intake}); 0 commits at once.
    """

    def __init__(
        self,
        connection: sqlite3.Connection | Database,
        call_from_thread: Callable[..., None],
        batch_limit: int = BATCH_LIMIT,
        commit_delay: float = 0.0,
    ) -> None:
        self._connection = connection
        self._call_from_thread = call_from_thread
        self._batch_limit = batch_limit
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._intake = Intake(
            partial(self._jobs.get, True), time.monotonic, batch_limit, commit_delay
        )
        self._stopped: defer.Deferred[None] = defer.Deferred()
        self._accepting = True
        self._thread = threading.Thread(
            target=self._serve, name="secmsg-store", daemon=True
        )
        self._thread.start()

    def submit(self, job: Job) -> defer.Deferred[Any]:
        return self._queued(Submitted(job))

    def submit_long(self, job: LongJob) -> defer.Deferred[Any]:
        return self._queued(SubmittedLong(job))

    def _queued(self, submitted: Submitted | SubmittedLong) -> defer.Deferred[Any]:
        if not self._accepting:
            return defer.fail(StoreError("the message store is closed"))
        self._jobs.put(submitted)
        return submitted.done

    def stop(self) -> defer.Deferred[None]:
        if self._accepting:
            self._accepting = False
            self._jobs.put(STOP)
        return self._stopped

    def _serve(self) -> None:
        try:
            self._serve_batches()
        except BaseException as error:
            # Nothing more will run: say so to every job still waiting, and
            # refuse new ones, rather than leave their sessions hanging.
            self._call_from_thread(self._died, error)
            raise
        finally:
            transactions_of(self._connection).close()
            self._call_from_thread(self._stopped.callback, None)

    def _serve_batches(self) -> None:
        while True:
            item = self._intake.next()
            if item is STOP:
                return
            if isinstance(item, SubmittedLong):
                self._run_long(item)
            elif isinstance(item, list):
                self._run_batch(item)

    def _run_batch(self, batch: list[Submitted]) -> None:
        outcomes = run_batch(self._connection, [s.job for s in batch])
        # One hand-back for the whole batch: each call from a thread wakes
        # the reactor with a write to its waker pipe, and under load a batch
        # holds hundreds of jobs.
        self._call_from_thread(_fire_batch, [s.done for s in batch], outcomes)

    def _pause(self) -> None:
        """
        Between a long job's steps, serve what came meanwhile.
        """
        batch = self._intake.waiting(self._batch_limit)
        if batch:
            self._run_batch(batch)

    def _run_long(self, submitted: SubmittedLong) -> None:
        outcome: tuple[Any, Exception | None]
        try:
            outcome = (submitted.job(self._connection, self._pause), None)
        except Exception as error:  # noqa: BLE001 -- handed to whoever asked
            outcome = (None, error)
        self._call_from_thread(_fire_batch, [submitted.done], [outcome])

    def _died(self, error: BaseException) -> None:
        self._accepting = False
        log.critical("the message store's thread died: {error!r}", error=error)
        for waiting in self._intake.left():
            if isinstance(waiting, Submitted | SubmittedLong):
                waiting.done.errback(StoreError("the message store stopped"))


@implementer(IStoreWorker)
class ImmediateWorker:
    """
    Runs each job at once on the caller's thread, in a transaction of its
    own: a store without a thread, for tests.
    """

    def __init__(self, connection: sqlite3.Connection | Database) -> None:
        self._connection = connection

    def submit(self, job: Job) -> defer.Deferred[Any]:
        done: defer.Deferred[Any] = defer.Deferred()
        ((result, error),) = run_batch(self._connection, [job])
        _fire(done, result, error)
        return done

    def submit_long(self, job: LongJob) -> defer.Deferred[Any]:
        # Nothing else runs while it does: there is nothing to pause for.
        return defer.maybeDeferred(job, self._connection, lambda: None)

    def stop(self) -> defer.Deferred[None]:
        transactions_of(self._connection).close()
        return defer.succeed(None)


def _fire_batch(
    waiting: list[defer.Deferred[Any]], outcomes: list[tuple[Any, Exception | None]]
) -> None:
    """
    Fire the Deferreds of a committed batch, in the order of their jobs.
    """
    for done, (result, error) in zip(waiting, outcomes, strict=True):
        _fire(done, result, error)


def _fire(done: defer.Deferred[Any], result: Any, error: Exception | None) -> None:
    if error is None:
        done.callback(result)
    else:
        done.errback(error)
