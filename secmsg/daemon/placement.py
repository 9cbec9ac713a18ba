"""
Where a daemon keeps its messages and how it reaches its sessions: SQLite
in its data directory, or a PostgreSQL database it holds alone, each with
the in-process hub; or, as one of a cluster, the shared database and the
bus (L{secmsg.daemon.cluster}).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secmsg.daemon.hub import InProcessHub
from secmsg.daemon.interfaces import IHub
from secmsg.daemon.store.database import DATABASE_NAME, check_database
from secmsg.daemon.store.sql import StreamStore
from secmsg.daemon.store.sqlite import SQLiteStore
from secmsg.daemon.store.worker import Database, ThreadWorker


@dataclass(frozen=True)
class Placement:
    """
    The store and hub a daemon is built with, and for one of a cluster
    what joins it (a L{secmsg.daemon.cluster.joined.ClusterService}).
    """

    store: StreamStore
    hub: IHub
    cluster: Any = None


@dataclass(frozen=True)
class Places:
    """
    What the settings say of where: the PostgreSQL database, the bus, this
    daemon's name in the cluster, the data directory.
    """

    database: str | None
    bus: str | None
    node: str
    data_dir: Path


def placement(places: Places, commit_delay: float, reactor: Any) -> Placement:
    """
    The store and hub, not yet open: nothing is reached here.  A SQLite
    database already in the data directory is checked, read-only.

    @param commit_delay: the longest, in seconds, a commit may wait for
        company (L{secmsg.daemon.store.worker.Intake}).
    @param reactor: what the store's thread hands its results to, and
        what times its writes.
    """
    if places.database is not None and places.bus is not None:
        # Imported only here, as below: psycopg and txredisapi are the
        # cluster's dependencies, not every daemon's.
        from secmsg.daemon.cluster.joined import ClusterService, join_cluster

        cluster = join_cluster(
            places.node, places.database, places.bus, commit_delay, reactor
        )
        return Placement(cluster.store, cluster.hub, ClusterService(cluster))

    def start_worker(connection: sqlite3.Connection | Database) -> ThreadWorker:
        return ThreadWorker(
            connection, reactor.callFromThread, commit_delay=commit_delay
        )

    if places.database is not None:
        from secmsg.daemon.store.postgresql import PostgresStore

        return Placement(
            PostgresStore(places.database, start_worker, reactor), InProcessHub()
        )
    path = places.data_dir / DATABASE_NAME
    if path.exists():
        check_database(path)
    return Placement(SQLiteStore(path, start_worker, reactor), InProcessHub())
