"""
The PostgreSQL and Redis that the cluster's tests run against are real
servers that behave as the cluster will find them: PostgreSQL keeps what
it committed across a shutdown and a kill, each test's database is its own,
Redis carries a PUBLISH to a SUBSCRIBE, and both go away without a trace.
"""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
from twisted.trial.unittest import SynchronousTestCase

from tests import servers
from tests.servers import (
    PostgresServer,
    RedisServer,
    ServerDidNotStart,
    ServerNotInstalled,
    live_processes,
    shared_postgres,
)


def public_tables(url: str) -> list[str]:
    """The tables of a database's public schema."""
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' ORDER BY table_name"
        ).fetchall()
    return [name for (name,) in rows]


def store_note(url: str, text: str) -> None:
    """Commit a row in a table of its own, as the store commits a message."""
    with psycopg.connect(url) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")
        connection.execute("INSERT INTO notes VALUES (%s)", (text,))


def notes(url: str) -> list[str]:
    """The rows store_note committed."""
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT text FROM notes").fetchall()
    return [text for (text,) in rows]


def redis_command(*words: bytes) -> bytes:
    """A command in Redis's protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(words)]
    parts += [b"$%d\r\n%s\r\n" % (len(word), word) for word in words]
    return b"".join(parts)


def redis_connection(server: RedisServer) -> socket.socket:
    """A connection to the server whose every read is bounded in time."""
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_until(connection: socket.socket, expected: bytes) -> bytes:
    """What the server sends, up to and including C{expected} (or the end of
    the connection); a server that sends nothing fails the read's timeout."""
    received = b""
    while expected not in received:
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def redis_reply(server: RedisServer, *words: bytes) -> bytes:
    """The first reply to one command on a new connection."""
    with redis_connection(server) as connection:
        connection.sendall(redis_command(*words))
        return read_until(connection, b"\r\n")


class PostgresTests(SynchronousTestCase):
    """The PostgreSQL of the cluster's store."""

    def own_server(self) -> PostgresServer:
        """A started server of this test's own, stopped after it."""
        server = PostgresServer()
        self.addCleanup(server.stop)
        server.start()
        return server

    def test_accepts_psycopg_on_loopback_with_fsync_on(self) -> None:
        """The shared server lets psycopg in on loopback and commits to disk,
        as the cluster's guarantee of a stored message needs."""
        with psycopg.connect(shared_postgres().url) as connection:
            fsync = connection.execute("SHOW fsync").fetchone()
            address = connection.execute("SELECT host(inet_server_addr())").fetchone()
        self.assertEqual((fsync, address), (("on",), ("127.0.0.1",)))

    def test_new_databases_are_empty_and_apart(self) -> None:
        """A test's database starts empty and shows nothing of another's."""
        first = shared_postgres().new_database()
        second = shared_postgres().new_database()
        self.assertEqual(public_tables(first), [])
        store_note(first, "only in the first")
        self.assertEqual((public_tables(first), public_tables(second)), (["notes"], []))

    def test_commit_survives_halt_and_start_on_the_same_port(self) -> None:
        """What was committed is there when the server starts again where its
        clients expect it, after a shutdown in which it refused them."""
        server = self.own_server()
        port = server.port
        store_note(server.url, "kept")
        server.halt()
        with self.assertRaises(psycopg.OperationalError):
            psycopg.connect(server.url, connect_timeout=2)
        server.start()
        self.assertEqual((server.port, notes(server.url)), (port, ["kept"]))

    def test_commit_survives_a_kill(self) -> None:
        """A SIGKILL of every process loses nothing committed: the server
        recovers it from its write-ahead log when it starts again."""
        server = self.own_server()
        store_note(server.url, "committed before the kill")
        server.kill()
        self.assertEqual(server.processes(), [])
        server.start()
        self.assertEqual(notes(server.url), ["committed before the kill"])

    def test_stop_leaves_no_process_and_no_directory(self) -> None:
        """stop() ends the postmaster and its children and removes the data."""
        server = self.own_server()
        running = server.processes()
        self.assertGreater(len(running), 1)
        server.stop()
        self.assertEqual(live_processes(running), [])
        self.assertFalse(server.directory.exists())

    def test_missing_server_fails_naming_make_test(self) -> None:
        """Without Debian's PostgreSQL the test fails, saying how to get it,
        rather than being skipped unseen."""
        self.patch(servers, "POSTGRES_ROOT", Path(self.mktemp()))
        with self.assertRaises(ServerNotInstalled) as caught:
            PostgresServer()
        self.assertIn("make test", str(caught.exception))


class RedisTests(SynchronousTestCase):
    """The Redis of the cluster's bus."""

    def setUp(self) -> None:
        self.server = RedisServer()
        self.addCleanup(self.server.stop)
        self.server.start()

    def test_answers_ping(self) -> None:
        """The server answers PING on its loopback port."""
        self.assertEqual(redis_reply(self.server, b"PING"), b"+PONG\r\n")

    def test_publish_reaches_a_subscriber(self) -> None:
        """A message published on a channel reaches the connection that
        subscribed to it, as a daemon's news reaches the others."""
        with redis_connection(self.server) as subscriber:
            subscriber.sendall(redis_command(b"SUBSCRIBE", b"secmsg"))
            read_until(subscriber, b":1\r\n")
            published = redis_reply(self.server, b"PUBLISH", b"secmsg", b"news")
            pushed = read_until(subscriber, b"news\r\n")
        self.assertEqual(published, b":1\r\n")
        self.assertEqual(pushed, redis_command(b"message", b"secmsg", b"news"))

    def test_kill_and_start_on_the_same_port_forgets(self) -> None:
        """A killed server refuses connections, then starts again on its
        port with nothing kept, since the bus has no persistence."""
        self.assertEqual(redis_reply(self.server, b"SET", b"k", b"v"), b"+OK\r\n")
        self.server.kill()
        with self.assertRaises(ConnectionRefusedError):
            redis_connection(self.server)
        self.server.start()
        self.assertEqual(redis_reply(self.server, b"GET", b"k"), b"$-1\r\n")

    def test_stop_leaves_no_process_and_no_directory(self) -> None:
        """stop() ends the server and removes its directory."""
        running = self.server.processes()
        self.assertEqual(len(running), 1)
        self.server.stop()
        self.assertEqual(live_processes(running), [])
        self.assertFalse(self.server.directory.exists())

    def test_taken_port_fails_with_the_servers_log(self) -> None:
        """A server that cannot start says why, in the words of its log."""
        server = RedisServer()
        self.addCleanup(server.stop)
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", server.port))
            with self.assertRaises(ServerDidNotStart) as caught:
                server.start()
        self.assertIn("Address already in use", str(caught.exception))

    def test_missing_server_fails_naming_make_test(self) -> None:
        """Without Debian's redis-server the test fails, saying how to get
        it, rather than being skipped unseen."""
        self.patch(servers, "REDIS_SERVER", Path(self.mktemp()))
        with self.assertRaises(ServerNotInstalled) as caught:
            RedisServer()
        self.assertIn("make test", str(caught.exception))
