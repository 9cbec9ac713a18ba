"""
The daemon's service: the order it starts in, the line a port it cannot
have stops it with, SIGHUP's reload, and the retention it runs.
"""

from __future__ import annotations

import errno
import io
import os
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import cast

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from secmsg.clock import clock_time
from secmsg.daemon.reload import ReloadReport
from secmsg.daemon.service import (
    LINE_PORT_FIX,
    PURGE_INTERVAL,
    AuditService,
    ListenFirstService,
    ReportedStart,
    RetentionService,
    SecmsgService,
    StoreService,
    listen_or_exit,
)
from secmsg.daemon.settings import prepare_data_dir
from secmsg.daemon.store.database import DATABASE_NAME, open_database
from secmsg.daemon.store.memory import MemoryStore
from secmsg.errors import ConfigurationError
from secmsg.messages import Draft, Kind, Retention
from secmsg.tap import assemble
from tests.harness import Instance, capture_log, temporary_directory
from tests.test_store import contents, make_version_1


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
        # As ListenFirstService does once the ports are bound.
        prepare_data_dir(settings.data_dir)
        store_service = next(s for s in service if isinstance(s, StoreService))
        store_service.privilegedStartService()
        (thread,) = [t for t in threading.enumerate() if t.name == "secmsg-store"]
        self.addCleanup(thread.join, 30)
        self.addCleanup(store_service.store.close)
        with self.assertRaises(ConfigurationError) as caught:
            open_database(path)
        self.assertIn("database is locked", str(caught.exception))

    def test_older_database_is_upgraded_when_the_store_starts_not_before(
        self,
    ) -> None:
        """
        Making the service only checks an older version's database, byte
        for byte leaving it as it was: it is backed up and upgraded when
        the store starts, once the ports are bound.
        """
        settings = Instance(self).settings()
        prepare_data_dir(settings.data_dir)
        path = settings.data_dir / DATABASE_NAME
        make_version_1(path, wal=True)
        before = contents(settings.data_dir)
        service = assemble(settings, _ThreadsReactor())
        self.assertEqual(contents(settings.data_dir), before)
        store_service = next(s for s in service if isinstance(s, StoreService))
        store_service.privilegedStartService()
        (thread,) = [t for t in threading.enumerate() if t.name == "secmsg-store"]
        self.addCleanup(thread.join, 30)
        self.addCleanup(store_service.store.close)
        self.assertTrue((settings.data_dir / f"{DATABASE_NAME}.v1.backup").exists())

    def test_assembling_writes_nothing_and_listening_starts_first(self) -> None:
        """
        Making the service leaves a fresh data directory unmade, and the
        service that binds the ports starts before the audit trail and
        the store, which would write in it.
        """
        settings = Instance(self).settings()
        service = assemble(settings, _ThreadsReactor())
        self.assertFalse(settings.data_dir.exists())
        kinds = [type(child) for child in service]
        self.assertEqual(kinds[0], ListenFirstService)
        self.assertEqual(kinds[1:3], [AuditService, StoreService])


class _Listener:
    """
    A listener that records whether the data directory was there when it
    was told to listen, or refuses as a taken port does.
    """

    def __init__(self, data_dir: Path, refusal: str | None = None) -> None:
        self.data_dir = data_dir
        self.refusal = refusal
        self.saw_data_dir: bool | None = None

    def listen(self) -> None:
        self.saw_data_dir = self.data_dir.exists()
        if self.refusal is not None:
            raise SystemExit(self.refusal)


class ListenFirstTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = temporary_directory(self) / "data"

    def test_ports_are_bound_before_the_data_directory_is_made(self) -> None:
        """
        Every listener listens while the data directory is still unmade;
        it is made once all of them have.
        """
        listeners = [_Listener(self.data_dir), _Listener(self.data_dir)]
        ListenFirstService(listeners, self.data_dir).privilegedStartService()
        self.assertEqual([lst.saw_data_dir for lst in listeners], [False, False])
        self.assertTrue(self.data_dir.is_dir())

    def test_a_port_refused_stops_before_the_data_directory_is_made(self) -> None:
        """
        A listener's refusal stops the start as it is, and nothing is made.
        """
        first = _Listener(self.data_dir, "secmsg: cannot start: taken")
        second = _Listener(self.data_dir)
        service = ListenFirstService([first, second], self.data_dir)
        with self.assertRaises(SystemExit) as raised:
            service.privilegedStartService()
        self.assertEqual(str(raised.exception), "secmsg: cannot start: taken")
        self.assertIsNone(second.saw_data_dir)
        self.assertFalse(self.data_dir.exists())


class _Refusing(Service):
    """
    A service that refuses to start, as a taken port makes the daemon.
    """

    def privilegedStartService(self) -> None:
        raise SystemExit("secmsg: cannot start: cannot listen on 127.0.0.1:7443")


class ReportedStartTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_refusal_reaches_twistds_status_pipe(self) -> None:
        """
        A refusal is written to the status pipe as twistd writes an
        error, for the process waiting on it, and still stops the start.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        service = ReportedStart(_Refusing(), {"statusPipe": write})
        with self.assertRaises(SystemExit):
            service.privilegedStartService()
        self.assertEqual(os.read(read, 100), b"1 cannot listen on 127.0.0.1:7443")

    def test_refusal_removes_the_pidfile_naming_this_process_only(self) -> None:
        """
        A refused start leaves no pidfile of its own behind, as twistd
        leaves none after an error; another process's pidfile stays.
        """
        directory = temporary_directory(self)
        for content, stays in ((f"{os.getpid()}\n", False), ("1\n", True)):
            with self.subTest(content=content):
                pidfile = directory / "secmsg.pid"
                pidfile.write_text(content)
                service = ReportedStart(_Refusing(), {"pidfile": str(pidfile)})
                with self.assertRaises(SystemExit):
                    service.privilegedStartService()
                self.assertEqual(pidfile.exists(), stays)

    def test_refusal_is_written_once_and_exits_1(self) -> None:
        """
        The refusal goes to stderr, which twistd logs, before the pidfile
        and the pipe are seen to; the exit carries the status alone, so
        that the line is not written a second time.
        """
        service = ReportedStart(_Refusing(), {})
        with self.assertRaises(SystemExit) as raised:
            service.privilegedStartService()
        self.assertEqual(raised.exception.code, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            "secmsg: cannot start: cannot listen on 127.0.0.1:7443\n",
        )


class _RefusingEndpoint:
    """
    An endpoint that fails to listen as Twisted's do, at once.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error

    def listen(self, factory: Factory) -> defer.Deferred[None]:
        return defer.fail(self.error)


class ListenRefusalTests(SynchronousTestCase):
    def refusal(self, error: Exception) -> str:
        endpoint = cast(IStreamServerEndpoint, _RefusingEndpoint(error))
        with self.assertRaises(SystemExit) as raised:
            listen_or_exit(endpoint, Factory(), LINE_PORT_FIX)
        return str(raised.exception)

    def test_refusal_names_the_address_the_reason_and_the_fix(self) -> None:
        """
        One line: the address as an operator writes it, the reason without
        Twisted's exception name or errno, and what to change.
        """
        in_use = OSError(errno.EADDRINUSE, "Address already in use")
        cases = [
            (CannotListenError("127.0.0.1", 7443, in_use), "127.0.0.1:7443"),
            (CannotListenError("::1", 7443, in_use), "[::1]:7443"),
            (CannotListenError("", 7443, in_use), "*:7443"),
            (CannotListenError(None, "/run/s.sock", in_use), "unix:/run/s.sock"),
        ]
        for error, address in cases:
            with self.subTest(address=address):
                self.assertEqual(
                    self.refusal(error),
                    f"secmsg: cannot start: cannot listen on {address}: address "
                    f"already in use; {LINE_PORT_FIX}",
                )

    def test_other_failures_keep_their_message(self) -> None:
        """
        A failure other than a socket's still says what it was.
        """
        self.assertEqual(
            self.refusal(ValueError("no such interface")),
            f"secmsg: cannot start: cannot listen: no such interface; {LINE_PORT_FIX}",
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
        store.remember("bob", clock_time(clock))
        store.accept(old, {"bob"})
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            len(self.successResultOf(store.pending("bob", 0, 100, frozenset()))), 1
        )
        clock.advance(PURGE_INTERVAL)
        self.assertEqual(
            self.successResultOf(store.pending("bob", 0, 100, frozenset())), []
        )
