"""
The cluster, as the README promises it, with real processes: daemons on
loopback ports sharing a PostgreSQL database and a Redis bus that the tests
start (L{tests.servers}).  Messages, rooms, broadcasts and history cross
daemons; presence and KICK reach every daemon; a daemon killed mid-stream,
a Redis restarted and a PostgreSQL stopped lose nothing confirmed.

Each test bounds its waits with deadlines; none asserts a time.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Callable
from typing import IO

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import temporary_directory
from tests.servers import PostgresServer, RedisServer, shared_postgres
from tests.test_daemon import STARTUP_DEADLINE, Daemon, init_instance, lift_rate
from tests.test_durability import SENT, stream_until_killed

_PUSH = re.compile(r"(?:REDELIVERED )?MSG (\d+) \S+ alice (.*)")


class Session:
    """
    A client's session with one daemon, read line by line.
    """

    def __init__(self, daemon: Daemon, name: str) -> None:
        self.connection: ssl.SSLSocket = daemon.client(name)
        self.lines: IO[bytes] = self.connection.makefile("rb")
        greeting = self.lines.readline()
        if f"you are {name}".encode() not in greeting:
            raise AssertionError(f"no greeting for {name}: {greeting!r}")

    def send(self, line: str) -> None:
        self.connection.sendall(line.encode() + b"\n")

    def until(self, wanted: Callable[[str], bool]) -> str:
        """
        Read lines until one is C{wanted}; fail at the end of the session.
        """
        while True:
            raw = self.lines.readline()
            if not raw:
                raise AssertionError("the session ended before the line came")
            line = raw.decode().rstrip("\n")
            if wanted(line):
                return line

    def ask(self, line: str) -> str:
        """
        Send a command and read its reply, past any push.
        """
        self.send(line)
        return self.until(lambda text: text[:3].isdigit())

    def close(self) -> None:
        self.lines.close()
        self.connection.close()


class ClusterCase(SynchronousTestCase):
    """
    A development instance, a database and a bus, and daemons on them.
    """

    def setUp(self) -> None:
        self.directory = init_instance(self)
        lift_rate(self.directory)
        self.database = shared_postgres().new_database()
        self.redis = RedisServer()
        self.addCleanup(self.redis.stop)
        self.redis.start()
        self.base = temporary_directory(self)

    def node(self, name: str) -> Daemon:
        daemon = Daemon(
            self,
            self.directory,
            "--admin-port",
            "0",
            "--data-dir",
            str(self.base / name),
            "--database",
            self.database,
            "--bus",
            self.redis.url,
            "--node",
            name,
        )
        daemon.wait_for(f"cluster: {name} joined")
        return daemon

    def session(self, daemon: Daemon, name: str) -> Session:
        session = Session(daemon, name)
        self.addCleanup(session.close)
        return session

    def online(self, session: Session) -> set[str]:
        """
        Who WHO lists: a line C{211-NAME} each, then C{211 } and a summary.
        """
        session.send("WHO")
        names: set[str] = set()

        def listed(line: str) -> bool:
            if line.startswith("211-"):
                names.add(line[4:].split()[0])
            return line.startswith("211 ")

        session.until(listed)
        return names


class AcrossNodesTests(ClusterCase):
    def test_messages_rooms_broadcasts_and_history_cross_daemons(self) -> None:
        """
        Three daemons: alice on a, bob on b, the admin on c.  A direct
        message, a room's and a broadcast each reach the daemons of their
        recipients, and HISTORY on b reads what was said on a.
        """
        a, b, c = self.node("a"), self.node("b"), self.node("c")
        alice, bob = self.session(a, "alice"), self.session(b, "bob")
        self.assertTrue(alice.ask("MSG bob from a").startswith("250 "))
        self.assertIn("alice from a", bob.until(lambda line: "MSG" in line))
        self.assertTrue(bob.ask("JOIN #ops").startswith("200"))
        self.assertTrue(alice.ask("JOIN #ops").startswith("200"))
        self.assertTrue(alice.ask("SAY #ops said on a").startswith("250 "))
        self.assertIn("said on a", bob.until(lambda line: line.startswith("SAY")))
        admin = self.session(c, "admin")
        self.assertTrue(admin.ask("BROADCAST to all").startswith("250 "))
        for session in (alice, bob):
            line = session.until(lambda line: line.startswith("BROADCAST"))
            self.assertIn("to all", line)
        bob.send("HISTORY #ops 5")
        listed: list[str] = []
        bob.until(lambda line: listed.append(line) or line.startswith("211"))
        self.assertTrue(any("said on a" in line for line in listed), listed)

    def test_presence_and_kick_reach_every_daemon(self) -> None:
        """
        bob on b comes online for alice on a (her PRESENCE push, then WHO);
        an admin on a kicks him off b; and once b is killed with bob on it
        again, he goes offline for alice and leaves WHO on a.
        """
        a, b = self.node("a"), self.node("b")
        alice = self.session(a, "alice")
        bob = self.session(b, "bob")
        alice.until(lambda line: line == "ONLINE bob")
        self.assertIn("bob", self.online(alice))
        admin = self.session(a, "admin")
        self.assertTrue(admin.ask("KICK bob enough").startswith("200"))
        self.assertIn("enough", bob.until(lambda line: line.startswith("KICKED")))
        alice.until(lambda line: line == "OFFLINE bob")
        self.session(b, "bob")
        alice.until(lambda line: line == "ONLINE bob")
        b.process.kill()
        b.process.wait()
        alice.until(lambda line: line == "OFFLINE bob")
        self.assertNotIn("bob", self.online(alice))


class FailureTests(ClusterCase):
    def test_kill_9_of_a_daemon_loses_no_confirmed_message(self) -> None:
        """
        alice streams to bob through a, which is killed mid-stream; bob,
        on b, gets every message alice saw confirmed, in order.
        """
        a, b = self.node("a"), self.node("b")
        alice = Session(a, "alice")
        stream = b"".join(b"MSG bob message %d\n" % n for n in range(SENT))
        confirmed = stream_until_killed(alice.connection, stream, a.process.kill)
        a.process.wait()
        bob = self.session(b, "bob")
        received: dict[int, str] = {}
        while not confirmed <= set(received):
            match = _PUSH.fullmatch(bob.until(lambda line: "MSG" in line))
            self.assertIsNotNone(match)
            received[int(match.group(1))] = match.group(2)
        self.assertEqual(list(received), sorted(received))

    def test_a_bus_restart_loses_nothing_and_pushes_resume(self) -> None:
        """
        While Redis is down, a message alice sends on a is stored; bob, on
        b, gets it once the bus is back (b reads what it missed), and
        what comes after.
        """
        a, b = self.node("a"), self.node("b")
        alice, bob = self.session(a, "alice"), self.session(b, "bob")
        self.redis.kill()
        self.assertTrue(alice.ask("MSG bob while the bus was down").startswith("250"))
        self.redis.start()
        self.assertIn("bus was down", bob.until(lambda line: "MSG" in line))
        self.assertTrue(alice.ask("MSG bob after").startswith("250"))
        self.assertIn("alice after", bob.until(lambda line: "MSG" in line))


class DatabaseOutageTests(ClusterCase):
    def setUp(self) -> None:
        super().setUp()
        self.postgres = PostgresServer()
        self.addCleanup(self.postgres.stop)
        self.postgres.start()
        self.database = self.postgres.url

    def test_503_while_the_database_is_down_then_service(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob = self.session(a, "alice"), self.session(b, "bob")
        self.assertTrue(alice.ask("MSG bob before").startswith("250"))
        # Each refusal is logged: more than the log's pipe holds unread.
        a.drain_log()
        self.postgres.halt()
        refused = alice.ask("MSG bob during")
        self.assertTrue(refused.startswith("503"), refused)
        self.assertNotIn(str(self.postgres.port), refused)
        self.postgres.start()
        # The daemon tries the database again a moment after it failed:
        # until then it refuses at once.
        deadline = time.monotonic() + STARTUP_DEADLINE
        while not alice.ask("MSG bob after").startswith("250"):
            self.assertLess(time.monotonic(), deadline, "a never stored again")
        self.assertIn("alice before", bob.until(lambda line: "before" in line))
        self.assertIn("alice after", bob.until(lambda line: "after" in line))
