"""
Which message store a daemon keeps its messages in: SQLite in its data
directory, or a PostgreSQL database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from secmsg.daemon.store.database import DATABASE_NAME, check_database
from secmsg.daemon.store.sql import StreamStore
from secmsg.daemon.store.sqlite import SQLiteStore
from secmsg.daemon.store.worker import Database, ThreadWorker


def message_store(
    database: str | None, data_dir: Path, commit_delay: float, reactor: Any
) -> StreamStore:
    """
    The store, not yet open: SQLite in C{data_dir} (checked here,
    read-only, if it is there already), or the PostgreSQL database
    C{database} names, which is reached when the store opens.

    @param commit_delay: the longest, in seconds, a commit may wait for
        company (L{secmsg.daemon.store.worker.Intake}).
    @param reactor: what the store's thread hands its results to, and
        what times its writes.
    """

    def start_worker(connection: sqlite3.Connection | Database) -> ThreadWorker:
        return ThreadWorker(
            connection, reactor.callFromThread, commit_delay=commit_delay
        )

    if database is not None:
        # Imported only here: psycopg is the cluster's dependency, not
        # every daemon's.
        from secmsg.daemon.store.postgresql import PostgresStore

        return PostgresStore(database, start_worker, reactor)
    path = data_dir / DATABASE_NAME
    if path.exists():
        check_database(path)
    return SQLiteStore(path, start_worker, reactor)
