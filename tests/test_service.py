"""
The daemon's service: SIGHUP's reload, and the retention it runs.
"""

from __future__ import annotations

from datetime import timedelta

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from secmsg.errors import ConfigurationError
from secmsg.messages import Draft, Kind, Retention
from secmsg.reload import ReloadReport
from secmsg.service import PURGE_INTERVAL, RetentionService, SecmsgService
from secmsg.store.memory import MemoryStore
from secmsg.tls import clock_time
from tests.harness import capture_log


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
