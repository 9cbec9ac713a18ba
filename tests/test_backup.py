"""
Backing up the message store while the daemon serves: the copy is a
snapshot that holds what was confirmed, is whole or absent at its name,
0600, refused where it must not go, asked for at the admin interface with
BACKUP and recorded; and, with the real daemon, restored by copying it in
place and delivered by the daemon started on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import socket
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path

from jsonschema import Draft202012Validator
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from secmsg.cli.backup import admin_address
from secmsg.daemon.interfaces import IStoreWorker
from secmsg.daemon.store import backup as backup_module
from secmsg.daemon.store.memory import MemoryStore
from secmsg.daemon.store.sqlite import SQLiteStore
from secmsg.daemon.store.worker import ImmediateWorker, ThreadWorker
from secmsg.errors import BackupRefused, ConfigurationError
from secmsg.tap import build_daemon
from tests.harness import Instance, next_but_presence, temporary_directory
from tests.test_admin import OPENAPI, AdminClient
from tests.test_audit import record_events, records
from tests.test_daemon import BIN, STARTUP_DEADLINE, Daemon, init_instance
from tests.test_store import direct


def stored_texts(path: Path) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        return [body for (body,) in connection.execute("SELECT body FROM messages")]
    finally:
        connection.close()


class StoreBackupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        (self.directory / "data").mkdir()
        self.path = self.directory / "data" / "secmsg.db"
        self.store = SQLiteStore(self.path, ImmediateWorker, Clock())
        self.store.open()
        self.addCleanup(self.store.close)

    def test_copy_holds_what_was_confirmed_and_is_owner_only(self) -> None:
        """
        The copy holds every message accepted before it, is a database of
        one file (no -wal beside it), mode 0600, and nothing else is left
        in its directory.
        """
        for n in range(3):
            self.successResultOf(
                self.store.accept(direct("alice", "bob", f"m{n}"), ["bob"])
            )
        destination = self.directory / "backups" / "copy.db"
        destination.parent.mkdir()
        size = self.successResultOf(self.store.backup(destination, False))
        self.assertEqual(size, destination.stat().st_size)
        self.assertEqual(stored_texts(destination), ["m0", "m1", "m2"])
        self.assertEqual(stat.S_IMODE(destination.stat().st_mode), 0o600)
        self.assertEqual(os.listdir(destination.parent), ["copy.db"])

    def test_refusals_say_why_and_leave_the_destination_alone(self) -> None:
        """
        A relative path, a missing directory, the data directory, a file
        already there (without replace), and anything but an older backup
        (with replace) are refused in words, and nothing is written.
        """
        elsewhere = self.directory / "elsewhere"
        elsewhere.mkdir()
        notes = elsewhere / "notes.txt"
        notes.write_text("keep me")
        cases = [
            (Path("relative.db"), False, "not an absolute path"),
            (self.directory / "missing" / "x.db", False, "there is no directory"),
            (self.directory / "data" / "copy.db", False, "in the data directory"),
            (self.path, True, "in the data directory"),
            (notes, False, "exists; a backup replaces a file only if asked"),
            (notes, True, "is not a SQLite database"),
        ]
        for destination, replace, words in cases:
            failure = self.failureResultOf(
                self.store.backup(destination, replace), BackupRefused
            )
            self.assertIn(words, str(failure.value), destination)
        self.assertEqual(notes.read_text(), "keep me")
        self.assertEqual(os.listdir(elsewhere), ["notes.txt"])
        self.assertEqual(sorted(os.listdir(self.directory / "data"))[0], "secmsg.db")

    def test_a_place_others_could_swap_is_refused(self) -> None:
        """
        A backup goes only in a directory that no one but the daemon's user
        (or root) may write, reached without a symbolic link at its end;
        and replaces only a regular file: a symbolic link or a FIFO put
        where an older backup was is refused, the FIFO without waiting.
        """
        shared = self.directory / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        private = self.directory / "private"
        private.mkdir(mode=0o700)
        older = private / "older.db"
        self.successResultOf(self.store.backup(older, False))
        (private / "link.db").symlink_to(older)
        os.mkfifo(private / "fifo.db")
        (self.directory / "via").symlink_to(private)
        cases = [
            (shared / "x.db", False, "may be written by others"),
            (self.directory / "via" / "x.db", False, "cannot use the directory"),
            (private / "link.db", True, "is not a SQLite database"),
            (private / "fifo.db", True, "is not a SQLite database"),
        ]
        for destination, replace, words in cases:
            failure = self.failureResultOf(
                self.store.backup(destination, replace), BackupRefused
            )
            self.assertIn(words, str(failure.value), destination)
        self.assertEqual(os.listdir(shared), [])
        self.assertTrue((private / "link.db").is_symlink())

    def test_replace_takes_the_place_of_an_older_backup(self) -> None:
        """
        With replace, a backup takes the place of an older one, whole.
        """
        destination = self.directory / "copy.db"
        self.successResultOf(self.store.backup(destination, False))
        self.successResultOf(self.store.accept(direct("alice", "bob", "new"), ["bob"]))
        self.successResultOf(self.store.backup(destination, True))
        self.assertEqual(stored_texts(destination), ["new"])

    def test_the_memory_store_has_nothing_to_copy(self) -> None:
        """
        A daemon on the in-memory store refuses a backup, saying why.
        """
        failure = self.failureResultOf(
            MemoryStore().backup(self.directory / "x.db", False), BackupRefused
        )
        self.assertIn("in memory", str(failure.value))


class ThreadedBackupTests(SynchronousTestCase):
    """
    The backup on the worker's real thread, whose results come back
    through a queue that the test empties, standing in for the reactor.
    """

    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        (self.directory / "data").mkdir()
        self.calls: queue.Queue = queue.Queue()
        workers: list[ThreadWorker] = []

        def start(connection: sqlite3.Connection) -> ThreadWorker:
            workers.append(ThreadWorker(connection, lambda *c: self.calls.put(c)))
            return workers[0]

        self.store = SQLiteStore(self.directory / "data" / "secmsg.db", start, Clock())
        self.store.open()
        self.worker = workers[0]
        self.addCleanup(lambda: self.run_until(self.store.close()))
        # One page a step: even a small database takes several.
        self.patch(backup_module, "STEP_PAGES", 1)

    def run_until(self, done: defer.Deferred) -> None:
        """
        Run what the worker thread hands back until C{done} has fired; a
        generous bound, not a timing.
        """
        while not done.called:
            function, *arguments = self.calls.get(timeout=30)
            function(*arguments)

    def hold_the_thread(self) -> threading.Event:
        """
        Keep the worker busy until the returned event is set, so that what
        the test submits meanwhile waits in its queue.
        """
        entered, gate = threading.Event(), threading.Event()

        def hold(connection: sqlite3.Connection) -> None:
            entered.set()
            gate.wait(30)

        self.worker.submit(hold)
        entered.wait(30)
        return gate

    def test_jobs_behind_a_backup_are_served_between_its_steps(self) -> None:
        """
        A message submitted after the backup is committed while the backup
        runs, before it ends, and so is in the copy too.
        """
        self.assertTrue(verifyObject(IStoreWorker, self.worker))
        gate = self.hold_the_thread()
        destination = self.directory / "copy.db"
        made = self.store.backup(destination, False)
        accepted = self.store.accept(direct("alice", "bob", "meanwhile"), ["bob"])
        order: list[str] = []
        accepted.addCallback(lambda _: order.append("accepted"))
        made.addCallback(lambda _: order.append("backed up"))
        gate.set()
        self.run_until(made)
        self.assertEqual(order, ["accepted", "backed up"])
        self.assertEqual(stored_texts(destination), ["meanwhile"])

    def test_one_backup_at_a_time(self) -> None:
        """
        A second backup asked for while one is under way is refused at
        once, since it would hold back every job behind it.
        """
        gate = self.hold_the_thread()
        first = self.store.backup(self.directory / "one.db", False)
        second = self.store.backup(self.directory / "two.db", False)
        failure = self.failureResultOf(second, BackupRefused)
        self.assertIn("already under way", str(failure.value))
        gate.set()
        self.run_until(first)
        self.assertFalse((self.directory / "two.db").exists())
        again = self.store.backup(self.directory / "two.db", False)
        self.run_until(again)
        self.successResultOf(again)


class AdminBackupTests(SynchronousTestCase):
    """
    POST /v1/backup on an in-memory daemon whose store is SQLite.
    """

    def setUp(self) -> None:
        self.instance = Instance(self)
        data = self.instance.directory / "data"
        data.mkdir()
        store = SQLiteStore(data / "secmsg.db", ImmediateWorker, Clock())
        store.open()
        self.addCleanup(store.close)
        self.instance.store = store
        self.backups = temporary_directory(self)
        self.instance.daemon = build_daemon(
            dataclasses.replace(self.instance.settings(), backup_dir=self.backups),
            self.instance.clock,
            store,
        )
        self.web = AdminClient(self.instance)
        self.audit = record_events(self)

    def test_backup_is_made_answered_and_recorded(self) -> None:
        """
        An admin's backup is written under the name given in the backup
        directory, answered with its path and size (as docs/openapi.json
        says), and recorded: who, from where, where to.
        """
        admin = self.instance.ca.issue("admin")
        destination = self.backups / "copy.db"
        response = self.web.request(admin, "POST", "/v1/backup", {"name": "copy.db"})
        self.assertEqual(response.status, 200, response.body)
        answer = response.json()
        self.assertEqual(
            answer, {"path": str(destination), "bytes": destination.stat().st_size}
        )
        document = json.loads(OPENAPI.read_text())
        schema = document["paths"]["/v1/backup"]["post"]["responses"]["200"]
        Draft202012Validator(
            {
                **schema["content"]["application/json"]["schema"],
                "components": document["components"],
            }
        ).validate(answer)
        (record,) = [r for r in records(self.audit) if r["event"] == "backup"]
        self.assertEqual(record["by"], "admin")
        self.assertEqual(record["path"], str(destination))
        self.assertEqual(record["outcome"], "ok")
        self.assertIn("peer", record)

    def test_refused_backups_are_answered_in_words_and_recorded(self) -> None:
        """
        Without BACKUP: 403; a path instead of a name, a hidden or
        controlling name, or a bad flag: 400; a file in the way: 409,
        recorded as refused with the reason.
        """
        admin, alice = self.instance.ca.issue("admin"), self.instance.ca.issue("alice")
        taken = self.backups / "taken"
        taken.write_text("x")
        asked = [
            (alice, {"name": "a.db"}, 403, "BACKUP"),
            (admin, {"name": "/etc/cron.d/x"}, 400, "must be a file name"),
            (admin, {"name": "../x.db"}, 400, "must be a file name"),
            (admin, {"name": ".hidden"}, 400, "must be a file name"),
            (admin, {"name": "x\u009b.db"}, 400, "must be a file name"),
            (admin, {"path": "/tmp/x.db"}, 400, "must be a file name"),
            (admin, {"name": "taken", "replace": "yes"}, 400, "true or false"),
            (admin, {"name": "taken"}, 409, "exists"),
        ]
        for pair, body, status, words in asked:
            response = self.web.request(pair, "POST", "/v1/backup", body)
            self.assertEqual(response.status, status, body)
            self.assertIn(words, response.json()["detail"])
        (record,) = [r for r in records(self.audit) if r["event"] == "backup"]
        self.assertEqual(record["outcome"], "refused")
        self.assertIn("exists", record["error"])
        self.assertEqual(taken.read_text(), "x")


def free_port() -> int:
    """
    A loopback port nothing listens on now, for a configuration file that
    must name the admin interface's port.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RestoreTests(SynchronousTestCase):
    def test_a_restored_backup_delivers_what_was_confirmed_before_it(self) -> None:
        """
        alice sends bob, offline, messages confirmed with 250; secmsg backup
        copies the store of the running daemon; alice sends more.  The
        daemon is stopped, the backup copied in place as secmsg.db, and a
        new daemon delivers bob exactly the messages sent before the backup.
        """
        directory = init_instance(self)
        config = directory / "secmsg.toml"
        config.write_text(config.read_text() + f"admin-port = {free_port()}\n")
        daemon = Daemon(self, directory)
        with daemon.client("bob") as bob, bob.makefile("rb") as lines:
            self.assertIn(b"you are bob", lines.readline())
        self.send_to_bob(daemon, ["before 1", "before 2"])
        destination = directory / "backups" / "secmsg-backup.db"
        result = self.backup(directory, destination.name)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"backed up the message store to {destination}", result.stdout)
        self.assertEqual(stat.S_IMODE(destination.stat().st_mode), 0o600)
        refused = self.backup(directory, destination.name)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("exists", refused.stderr)
        self.send_to_bob(daemon, ["after"])
        daemon.stop()

        # As docs/operations.md says: the old database's side files
        # go with it, and the backup takes its place.
        data = directory / "data"
        for side in ("secmsg.db-wal", "secmsg.db-shm"):
            (data / side).unlink(missing_ok=True)
        shutil.copyfile(destination, data / "secmsg.db")
        restored = Daemon(self, directory)
        with restored.client("bob") as bob, bob.makefile("rb") as lines:
            self.assertIn(b"you are bob", lines.readline())
            bob.sendall(b"PING\n")
            received = []
            line = lines.readline()
            while line.startswith(b"MSG "):
                received.append(line.decode().rstrip("\n").split(" ", 3)[3])
                line = lines.readline()
        self.assertEqual(received, ["alice before 1", "alice before 2"])

    def send_to_bob(self, daemon: Daemon, texts: list[str]) -> None:
        with daemon.client("alice") as alice, alice.makefile("rb") as lines:
            self.assertIn(b"you are alice", lines.readline())
            for text in texts:
                alice.sendall(f"MSG bob {text}\n".encode())
                # bob's session may end only now: alice may hear him go.
                self.assertTrue(next_but_presence(lines).startswith(b"250 "))

    def backup(self, directory: Path, name: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                BIN / "secmsg",
                "backup",
                "--config",
                str(directory / "secmsg.toml"),
                name,
                "--instance",
                str(directory),
                "--as",
                "admin",
            ],
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE,
            check=False,
        )


class CommandTests(SynchronousTestCase):
    def test_a_daemon_without_an_admin_interface_is_named(self) -> None:
        """
        secmsg backup on a configuration with no admin-port, or one picked
        at start, says so before it tries to connect.
        """
        directory = temporary_directory(self)
        config = directory / "secmsg.toml"
        base = 'cert = "s.pem"\nkey = "s.key"\nca = "ca.pem"\npolicy = "p.toml"\n'
        base += 'data-dir = "data"\n'
        for extra, words in (("", "sets no admin-port"), ("admin-port = 0\n", "is 0")):
            config.write_text(base + extra)
            with self.assertRaises(ConfigurationError) as raised:
                admin_address(str(config))
            self.assertIn(words, str(raised.exception))
        config.write_text(base + 'admin-port = 7445\nadmin-interface = "::"\n')
        self.assertEqual(admin_address(str(config)), ("::1", 7445))
