"""
The message store in SQLite, in the daemon's data directory: the SQL store
(L{secmsg.daemon.store.sql}) on a database that L{open_database} makes,
upgrades and holds for this daemon alone, and that an operator may back up
while it serves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from secmsg.daemon.interfaces import IMessageStore, IStoreWorker
from secmsg.daemon.store.backup import backup_job
from secmsg.daemon.store.database import open_database
from secmsg.daemon.store.sql import StreamStore
from secmsg.errors import BackupRefused, StoreError


@implementer(IMessageStore)
class SQLiteStore(StreamStore):
    """
    Messages and cursors in one SQLite database, through one worker.
    """

    def __init__(
        self,
        path: Path,
        start_worker: Callable[[sqlite3.Connection], IStoreWorker],
        clock: IReactorTime,
    ) -> None:
        super().__init__(start_worker, clock)
        self._path = path
        self._backing_up = False

    def open_connection(self) -> sqlite3.Connection:
        return open_database(self._path)

    def backup(self, destination: Path, replace: bool) -> defer.Deferred[int]:
        if self._worker is None:
            return defer.fail(StoreError("the message store is not open"))
        if self._backing_up:
            # One at a time: a second would wait behind the first, holding
            # back every job that comes after it.
            return defer.fail(BackupRefused("a backup is already under way"))
        self._backing_up = True
        made = self._worker.submit_long(backup_job(self._path, destination, replace))

        def ended(result: object) -> object:
            self._backing_up = False
            return result

        return made.addBoth(ended)
