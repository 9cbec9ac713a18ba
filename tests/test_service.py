"""
The daemon's service: SIGHUP's reload, and the retention it runs.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from secmsg.clock import clock_time
from secmsg.daemon.reload import ReloadReport
from secmsg.daemon.service import (
    PURGE_INTERVAL,
    RetentionService,
    SecmsgService,
    StoreService,
)
from secmsg.daemon.store.database import DATABASE_NAME, open_database
from secmsg.daemon.store.memory import MemoryStore
from secmsg.errors import ConfigurationError
from secmsg.messages import Draft, Kind, Retention
from secmsg.tap import assemble
from tests.harness import Instance, capture_log


class HangupTests(SynchronousTestCase):
    def test_failed_reload_on_sighup_is_logged_and_changes_nothing(self) -> None:
        """
        A reload that SIGHUP starts and that fails says why in the log.
        """
        log = capture_log(self)

        def reload() -> ReloadReport:
            raise ConfigurationError("policy.toml", "not valid TOML")

        service = SecmsgService(None, None, None, Clock(), reload, MemoryStore())
        service.reload_on_signal()
        self.assertIn(
            "reload on SIGHUP failed, configuration unchanged: "
            "policy.toml: not valid TOML",
            log,
        )


class _ThreadsReactor(MemoryReactorClock):
    """
    A memory reactor that also takes calls from other threads, to run when
    the test says.
    """

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[tuple] = []

    def callFromThread(self, function, *arguments) -> None:  # type: ignore[no-untyped-def]
        self.from_threads.append((function, *arguments))


class AssemblyTests(SynchronousTestCase):
    def test_store_is_opened_when_the_daemon_starts_not_before(self) -> None:
        """
        twistd forks into the background after making the service: the
        store's thread and lock must belong to the process that serves, so
        the service made holds neither until it starts.
        """
        settings = Instance(self).settings()
        path = settings.data_dir / DATABASE_NAME
        service = assemble(settings, _ThreadsReactor())
        self.assertNotIn("secmsg-store", [t.name for t in threading.enumerate()])
        open_database(path).close()
        store_service = next(s for s in service if isinstance(s, StoreService))
        store_service.privilegedStartService()
        (thread,) = [t for t in threading.enumerate() if t.name == "secmsg-store"]
        self.addCleanup(thread.join, 30)
        self.addCleanup(store_service.store.close)
        with self.assertRaises(ConfigurationError) as caught:
            open_database(path)
        self.assertIn("database is locked", str(caught.exception))


class RetentionServiceTests(SynchronousTestCase):
    def test_purges_at_start_and_every_interval(self) -> None:
        """
        The store is trimmed when the daemon starts and once an interval
        after, by the clock it is given.
        """
        clock = Clock()
        clock.advance(1_800_000_000)
        store = MemoryStore()
        retention = Retention(max_age=timedelta(minutes=30))
        service = RetentionService(store, clock, retention)
        old = Draft(Kind.DIRECT, "alice", "bob", "old", clock_time(clock))
        store.accept(old, ["bob"])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(self.successResultOf(store.pending("bob", 0, 100))), 1)
        clock.advance(PURGE_INTERVAL)
        self.assertEqual(self.successResultOf(store.pending("bob", 0, 100)), [])
