"""
The message store on PostgreSQL, against a real server the tests start
(L{tests.servers}): the store's contract, as SQLite's store keeps it; the
schema made once, and what it refuses; ids that commit in the order they
are taken, whichever daemon takes them; a database lost and back while
the daemon serves; and the README's promise of kill -9 on the real daemon.
"""

from __future__ import annotations

import psycopg
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon.store import streams
from secmsg.daemon.store.postgresql import PostgresStore
from secmsg.daemon.store.shared_database import (
    RETRY_AFTER,
    PostgresConnection,
    describe,
    open_shared_database,
    postgres_sql,
)
from secmsg.daemon.store.worker import ImmediateWorker
from secmsg.errors import ConfigurationError, StoreError
from tests import test_durability
from tests.servers import PostgresServer, free_port, shared_postgres
from tests.test_store import StoreBehaviour, _HeldWorker, direct


def opened_store(url: str, clock: Clock | None = None) -> PostgresStore:
    store = PostgresStore(url, ImmediateWorker, clock or Clock())
    store.open()
    return store


class PostgresStoreTests(StoreBehaviour, SynchronousTestCase):
    def setUp(self) -> None:
        self.url = shared_postgres().new_database()
        self.store = opened_store(self.url)
        self.addCleanup(lambda: self.store.close())

    def test_what_the_store_knows_survives_a_restart(self) -> None:
        """
        What was accepted, joined and acknowledged is read back by the next
        daemon to open the database.
        """
        self.know("alice", "bob")
        self.join("#ops", "alice", "bob")
        first = self.accept(direct("alice", "bob", "one"))
        second = self.accept(direct("alice", "bob", "two"))
        self.ack("bob", first.id)
        self.store.close()
        self.store = opened_store(self.url)
        self.assertTrue(self.store.knows("alice"))
        self.assertEqual(self.store.members("#ops"), {"alice", "bob"})
        self.assertEqual(self.pending("bob"), [second.id])
        self.assertEqual(self.store.waiting("bob"), (1, 3))


class BatchTests(SynchronousTestCase):
    def test_messages_accepted_together_are_appended_by_one_job(self) -> None:
        """
        Every message accepted before the store's thread comes to the job
        appending them is in that one job, one statement, with ids in the
        order accepted; one that comes after goes to the next job.
        """
        url = shared_postgres().new_database()
        workers: list[_HeldWorker] = []

        def held(connection: PostgresConnection) -> _HeldWorker:
            workers.append(_HeldWorker(connection))  # type: ignore[arg-type]
            return workers[0]

        store = PostgresStore(url, held, Clock())
        store.open()
        self.addCleanup(store.close)
        accepted = [
            store.accept(direct("alice", "bob", f"text {n}"), {"bob"}) for n in range(3)
        ]
        self.assertEqual(len(workers[0]._held), 1)
        workers[0].run()
        ids = [self.successResultOf(d).id for d in accepted]
        self.assertEqual(ids, [ids[0], ids[0] + 1, ids[0] + 2])
        later = store.accept(direct("alice", "bob", "later"), {"bob"})
        self.assertEqual(len(workers[0]._held), 1)
        workers[0].run()
        self.assertEqual(self.successResultOf(later).id, ids[2] + 1)

    def test_a_read_of_the_data_never_undoes_a_change_in_flight(self) -> None:
        """
        What another daemon changed is read again from the database; a
        JOIN made here after that read began, and not yet committed, is
        not undone in memory by it: the read is made again.
        """
        url = shared_postgres().new_database()
        workers: list[_HeldWorker] = []

        def held(connection: PostgresConnection) -> _HeldWorker:
            workers.append(_HeldWorker(connection))  # type: ignore[arg-type]
            return workers[0]

        store = PostgresStore(url, held, Clock(), shared=True)
        store.open()
        self.addCleanup(store.close)
        renewed = store.renew_all()
        joined = store.join("bob", "#ops", True)
        while workers[0]._held:
            workers[0].run()
        self.successResultOf(renewed)
        self.assertTrue(self.successResultOf(joined))
        self.assertEqual(store.members("#ops"), {"bob"})


class SchemaTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.url = shared_postgres().new_database()

    def refusal(self) -> str:
        with self.assertRaises(ConfigurationError) as caught:
            open_shared_database(self.url)
        return str(caught.exception)

    def test_a_new_database_is_made_once(self) -> None:
        """
        The first open makes the schema, of the current version; the next
        finds it and makes nothing.
        """
        open_shared_database(self.url).close()
        open_shared_database(self.url).close()
        with psycopg.connect(self.url) as connection:
            versions = connection.execute("SELECT version FROM version").fetchall()
        self.assertEqual(versions, [(3,)])

    def test_a_database_of_other_tables_is_refused(self) -> None:
        with psycopg.connect(self.url) as connection:
            connection.execute("CREATE TABLE accounts (id integer)")
        self.assertIn("holds 1 tables and no secmsg store", self.refusal())

    def test_a_newer_store_is_refused(self) -> None:
        open_shared_database(self.url).close()
        with psycopg.connect(self.url) as connection:
            connection.execute("UPDATE version SET version = 4")
        self.assertIn("store of version 4; this secmsg reads version 3", self.refusal())

    def test_a_second_daemon_is_refused(self) -> None:
        """
        Each daemon keeps in memory who reads what: a second one on the
        same database is refused while the first is connected.
        """
        first = open_shared_database(self.url)
        self.addCleanup(first.close)
        self.assertIn("another secmsg daemon serves from it", self.refusal())
        first.close()
        open_shared_database(self.url).close()

    def test_a_database_not_in_utf8_is_refused(self) -> None:
        server = shared_postgres()
        with psycopg.connect(server.database_url("postgres"), autocommit=True) as admin:
            admin.execute(
                "CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C'"
                " LC_CTYPE 'C' TEMPLATE template0"
            )
        self.url = server.database_url("latin")
        self.assertIn("is encoded in LATIN1", self.refusal())

    def test_an_unreachable_database_is_named_in_one_line(self) -> None:
        self.url = f"postgresql://secmsg@127.0.0.1:{free_port()}/secmsg"
        refusal = self.refusal()
        self.assertIn("cannot be reached", refusal)
        self.assertIn(f"database {describe(self.url)}", refusal)
        self.assertNotIn("\n", refusal)


class DialectTests(SynchronousTestCase):
    def test_parameters_and_functions_in_postgresql_spelling(self) -> None:
        self.assertEqual(
            postgres_sql(
                "SELECT length(CAST(m.body AS BLOB)) FROM m"
                " WHERE a = ? AND b = :name AND sent = max(sent, ?)"
            ),
            "SELECT octet_length(m.body) FROM m"
            " WHERE a = %s AND b = %(name)s AND sent = GREATEST(sent, %s)",
        )

    def test_an_aggregate_max_is_left_alone(self) -> None:
        self.assertEqual(
            postgres_sql("SELECT coalesce(max(id), 0) FROM messages"),
            "SELECT coalesce(max(id), 0) FROM messages",
        )

    def test_a_description_never_holds_the_password(self) -> None:
        description = describe("postgresql://secmsg:hunter2@db.example:6543/chat")
        self.assertEqual(description, "postgresql://db.example:6543/chat as secmsg")


class OrderTests(SynchronousTestCase):
    def test_ids_commit_in_the_order_they_are_taken(self) -> None:
        """
        Two daemons of a cluster append at once: the second's transaction
        cannot begin until the first's has committed, so that it takes a
        higher id and no reader moves past an id still to commit.
        """
        url = shared_postgres().new_database()
        open_shared_database(url).close()
        first = PostgresConnection(url, lambda _: None)
        second = PostgresConnection(url, lambda _: None)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        # The wait for the append lock ends at once, as a refusal to see.
        second.execute("SET lock_timeout = '20ms'")
        first.begin()
        earlier = streams.append(first, direct("alice", "bob", "first"))
        self.assertRaises(psycopg.errors.LockNotAvailable, second.begin)
        second.rollback()
        first.commit()
        second.begin()
        later = streams.append(second, direct("carol", "bob", "second"))
        second.commit()
        self.assertGreater(later.id, earlier.id)


class OutageTests(SynchronousTestCase):
    def test_service_resumes_once_the_database_is_back(self) -> None:
        """
        While PostgreSQL is down the store refuses (the daemon's 503);
        once it is back the store connects again, and nothing it had
        confirmed was lost.
        """
        server = PostgresServer()
        self.addCleanup(server.stop)
        server.start()
        clock = Clock()
        store = opened_store(server.url, clock)
        self.addCleanup(store.close)
        store.remember("bob", direct("x", "y", "z").created)
        kept = self.successResultOf(
            store.accept(direct("alice", "bob", "kept"), {"bob"})
        )
        server.halt()
        refused = self.failureResultOf(
            store.accept(direct("alice", "bob", "refused"), {"bob"}), StoreError
        )
        # The client hears what happened, not where the database is.
        self.assertEqual(str(refused.value), "the database is out of reach")
        server.start()
        # For a moment after a failed try, the store refuses at once.
        self.failureResultOf(
            store.accept(direct("alice", "bob", "too soon"), {"bob"}), StoreError
        )
        clock.advance(RETRY_AFTER)
        after = self.successResultOf(
            store.accept(direct("alice", "bob", "after"), {"bob"})
        )
        pending = self.successResultOf(store.pending("bob", 0, 10, frozenset()))
        self.assertEqual([p.message.id for p in pending], [kept.id, after.id])


class PostgresCrashTests(test_durability.CrashTests):
    """
    The kill -9 test of the README's promise, on a daemon whose store is
    PostgreSQL.
    """

    def setUp(self) -> None:
        self.daemon_flags = ("--database", shared_postgres().new_database())


class PostgresMembershipTests(test_durability.MembershipTests):
    """
    Membership and what was missed outlive a kill, on PostgreSQL.
    """

    def setUp(self) -> None:
        self.daemon_flags = ("--database", shared_postgres().new_database())
