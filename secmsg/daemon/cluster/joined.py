"""
A daemon made one of a cluster: its store on the shared database, its hub
over the bus, and the service that joins and leaves the cluster.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from secmsg.daemon.cluster.bus import RedisBus, check_reachable
from secmsg.daemon.cluster.hub import ClusterHub
from secmsg.daemon.cluster.node import ClusterNode
from secmsg.daemon.cluster.presence import Elsewhere
from secmsg.daemon.hub import InProcessHub
from secmsg.daemon.store.postgresql import PostgresStore
from secmsg.daemon.store.worker import Database, ThreadWorker
from secmsg.errors import ConfigurationError

log = Logger()


@dataclass(frozen=True)
class Cluster:
    """
    What a daemon of a cluster is built with.
    """

    store: PostgresStore
    hub: ClusterHub
    node: ClusterNode
    bus: RedisBus
    url: str


def join_cluster(
    name: str, database: str, bus: str, commit_delay: float, reactor: Any
) -> Cluster:
    """
    The pieces of daemon C{name} of the cluster on C{database} and C{bus}.

    @param commit_delay: as for the store alone.
    """

    def start_worker(connection: sqlite3.Connection | Database) -> ThreadWorker:
        return ThreadWorker(
            connection, reactor.callFromThread, commit_delay=commit_delay
        )

    store = PostgresStore(database, start_worker, reactor, shared=True)
    elsewhere = Elsewhere(reactor)
    local = InProcessHub(elsewhere.is_online)
    redis = RedisBus(reactor, bus)
    node = ClusterNode(
        name, redis, store, local, elsewhere, reactor, reactor.callFromThread
    )
    return Cluster(store, ClusterHub(local, node), node, redis, bus)


class ClusterService(Service):
    """
    Joins the cluster once the store is open, and leaves it at shutdown.
    A bus that cannot be reached at startup stops the daemon with one
    line, as a database that cannot does.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            check_reachable(self.cluster.url)
        except ConfigurationError as error:
            raise SystemExit(f"secmsg: cannot start: {error}") from None

    def startService(self) -> None:
        super().startService()
        self.cluster.node.start()
        log.info(
            "cluster: {node} joined through the bus {url}",
            node=self.cluster.node.name,
            url=self.cluster.url,
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.cluster.node.stop()
        return self.cluster.bus.stop()
