"""
The one thread that talks to SQLite, and the group commit that lets
durability keep up with load.

The reactor hands the worker jobs (functions of a connection) and gets a
Deferred for each.  The worker takes every job waiting, runs them in one
transaction so that one job's failure does not undo the others, commits
once, and only then fires the Deferreds back on the reactor's thread.
Under load, many messages share one commit (one fsync); when idle, a job
is committed alone at once.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from secmsg.daemon.interfaces import IStoreWorker
from secmsg.errors import StoreError

log = Logger()

BATCH_LIMIT = 512
"""Jobs one transaction takes at most, so that a burst still commits often."""

Job = Callable[[sqlite3.Connection], Any]

Pause = Callable[[], None]
"""Runs the jobs waiting now; a long job calls it between its steps."""

LongJob = Callable[[sqlite3.Connection, Pause], Any]
"""A job that runs outside any transaction and in steps (a backup), calling
the L{Pause} it is given between them so that other jobs need not wait for
it to end."""


@dataclass
class _Submitted:
    job: Job
    done: defer.Deferred[Any] = field(default_factory=defer.Deferred)


@dataclass
class _SubmittedLong:
    job: LongJob
    done: defer.Deferred[Any] = field(default_factory=defer.Deferred)


_STOP = object()


class _TransactionLost(Exception):
    """
    A job failed and took its whole transaction with it.
    """

    def __str__(self) -> str:
        return str(self.__cause__)


def run_batch(
    connection: sqlite3.Connection, jobs: list[Job]
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
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            results = [job(connection) for job in jobs]
        except Exception:  # noqa: BLE001 -- the run apart says which job, and why
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            return _run_apart(connection, jobs)
        connection.execute("COMMIT")
    except sqlite3.Error as error:
        with suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        return [(None, StoreError(str(error)))] * len(jobs)
    return [(result, None) for result in results]


def _run_apart(
    connection: sqlite3.Connection, jobs: list[Job]
) -> list[tuple[Any, Exception | None]]:
    """
    Run jobs in one transaction, each in a savepoint of its own, and
    commit it: what L{run_batch} does once a job of the batch has failed.
    """
    outcomes: list[tuple[Any, Exception | None]] = []
    try:
        connection.execute("BEGIN IMMEDIATE")
        for job in jobs:
            outcomes.append(_run_one(connection, job))
        connection.execute("COMMIT")
    except (sqlite3.Error, _TransactionLost) as error:
        with suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        failure = StoreError(str(error))
        return [(None, failure)] * len(jobs)
    return outcomes


def _run_one(connection: sqlite3.Connection, job: Job) -> tuple[Any, Exception | None]:
    connection.execute("SAVEPOINT job")
    try:
        result = job(connection)
    except Exception as error:  # one job's fault stays its own
        if not connection.in_transaction:
            # SQLite undid the whole transaction (a full disk does that), so
            # the jobs before this one were lost with it.
            raise _TransactionLost(error) from error
        connection.execute("ROLLBACK TO job")
        connection.execute("RELEASE job")
        if isinstance(error, sqlite3.Error):
            error = StoreError(str(error))
        return None, error
    connection.execute("RELEASE job")
    return result, None


@implementer(IStoreWorker)
class ThreadWorker:
    """
    Runs jobs on a dedicated thread that owns the connection.

    @param call_from_thread: the reactor's C{callFromThread}, to fire the
        Deferreds on the reactor's thread.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        call_from_thread: Callable[..., None],
        batch_limit: int = BATCH_LIMIT,
    ) -> None:
        self._connection = connection
        self._call_from_thread = call_from_thread
        self._batch_limit = batch_limit
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopped: defer.Deferred[None] = defer.Deferred()
        self._accepting = True
        self._held: _SubmittedLong | object | None = None
        self._thread = threading.Thread(
            target=self._serve, name="secmsg-store", daemon=True
        )
        self._thread.start()

    def submit(self, job: Job) -> defer.Deferred[Any]:
        return self._queued(_Submitted(job))

    def submit_long(self, job: LongJob) -> defer.Deferred[Any]:
        return self._queued(_SubmittedLong(job))

    def _queued(self, submitted: _Submitted | _SubmittedLong) -> defer.Deferred[Any]:
        if not self._accepting:
            return defer.fail(StoreError("the message store is closed"))
        self._jobs.put(submitted)
        return submitted.done

    def stop(self) -> defer.Deferred[None]:
        if self._accepting:
            self._accepting = False
            self._jobs.put(_STOP)
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
            self._connection.close()
            self._call_from_thread(self._stopped.callback, None)

    def _serve_batches(self) -> None:
        while True:
            item = self._held or self._jobs.get()
            self._held = None
            if item is _STOP:
                return
            if isinstance(item, _SubmittedLong):
                self._run_long(item)
            elif isinstance(item, _Submitted):
                self._run_batch([item, *self._waiting(self._batch_limit - 1)])

    def _waiting(self, limit: int) -> list[_Submitted]:
        """
        Up to C{limit} plain jobs waiting now, in order; a long job or the
        stop that comes next is held for the loop, behind them.
        """
        taken: list[_Submitted] = []
        while self._held is None and len(taken) < limit and not self._jobs.empty():
            item = self._jobs.get()
            if isinstance(item, _Submitted):
                taken.append(item)
            else:
                self._held = item
        return taken

    def _run_batch(self, batch: list[_Submitted]) -> None:
        outcomes = run_batch(self._connection, [s.job for s in batch])
        # One hand-back for the whole batch: each call from a thread wakes
        # the reactor with a write to its waker pipe, and under load a batch
        # holds hundreds of jobs.
        self._call_from_thread(_fire_batch, [s.done for s in batch], outcomes)

    def _pause(self) -> None:
        """
        Between a long job's steps, serve what came meanwhile.
        """
        batch = self._waiting(self._batch_limit)
        if batch:
            self._run_batch(batch)

    def _run_long(self, submitted: _SubmittedLong) -> None:
        outcome: tuple[Any, Exception | None]
        try:
            outcome = (submitted.job(self._connection, self._pause), None)
        except Exception as error:  # noqa: BLE001 -- handed to whoever asked
            outcome = (None, error)
        self._call_from_thread(_fire_batch, [submitted.done], [outcome])

    def _died(self, error: BaseException) -> None:
        self._accepting = False
        log.critical("the message store's thread died: {error!r}", error=error)
        left = [] if self._held is None else [self._held]
        self._held = None
        while not self._jobs.empty():
            left.append(self._jobs.get())
        for waiting in left:
            if isinstance(waiting, _Submitted | _SubmittedLong):
                waiting.done.errback(StoreError("the message store stopped"))


@implementer(IStoreWorker)
class ImmediateWorker:
    """
    Runs each job at once on the caller's thread, in a transaction of its
    own: the SQLite store without a thread, for tests.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
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
        self._connection.close()
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
