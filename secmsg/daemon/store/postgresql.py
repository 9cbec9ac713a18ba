"""
The message store on PostgreSQL: the SQL store (L{secmsg.daemon.store.sql})
on a database that several daemons may share.

The jobs are the SQLite store's own (L{secmsg.daemon.store.streams}):
L{PostgresConnection} runs their statements in PostgreSQL's spelling
(L{postgres_sql}) and runs the worker's transactions, so that one body of
SQL serves both engines and the two cannot drift apart.

Two things differ from SQLite, where one daemon holds the database alone:

 - Ids must commit in the order they are taken.  Another daemon's
   transaction may take id 7, this one id 8 and commit first; a reader
   that then moves its cursor to 8 would pass 7 for good once it commits.
   So every transaction takes the append lock (L{APPEND_LOCK}, a
   transaction-level advisory lock) before anything else: ids are taken,
   and committed, one transaction after another.  A transaction holds
   the whole batch of its worker, so what this costs is one commit at a
   time across the daemons, not one message at a time.
 - The connection can be lost while the daemon runs.  A batch that meets
   a lost connection fails with a L{StoreError} (a 503 to whoever sent),
   and the next batch connects again, so that service resumes once the
   database is back, without a restart.

A commit returns once PostgreSQL has made it durable: the connection sets
C{synchronous_commit} on, whatever the server's default.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from contextlib import suppress
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg.pq import TransactionStatus
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from secmsg.daemon.interfaces import IMessageStore, IStoreWorker
from secmsg.daemon.store.database import CURRENT_VERSION, schema
from secmsg.daemon.store.sql import StreamStore
from secmsg.errors import ConfigurationError

APPEND_LOCK = 0x5EC357
"""The advisory lock each transaction takes first, so that message ids
commit in the order they are taken."""

OWNER_LOCK = 0x5EC359
"""The advisory lock a daemon holds for as long as it is connected: alone
(exclusively), since it keeps in memory who reads what and would miss
what another daemon accepted; or shared, for one of the daemons of a
cluster that tell each other through the bus."""

SCHEMA_LOCK = 0x5EC358
"""The advisory lock under which a daemon makes the schema, so that two
daemons starting at once on a new database do not both make it."""

CONNECT_TIMEOUT = 5
"""Seconds a connection attempt may take before the database counts as
unreachable: at startup, and on each reconnection while serving, when the
store's thread waits that long at most before it answers 503."""

_BLOB_LENGTH = re.compile(r"length\(CAST\(([\w.]+) AS BLOB\)\)")
_GREATEST = re.compile(r"\bmax\(([\w.]+), ")
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@lru_cache(maxsize=256)
def postgres_sql(sql: str) -> str:
    """
    A statement of SQLite's, as PostgreSQL spells it: psycopg's parameters
    (C{%s}, C{%(name)s}) for SQLite's (C{?}, C{:name}), C{octet_length} for
    the length of text as bytes, and C{GREATEST} for the two-argument
    C{max}.
    """
    sql = _BLOB_LENGTH.sub(r"octet_length(\1)", sql)
    sql = _GREATEST.sub(r"GREATEST(\1, ", sql)
    sql = _NAMED.sub(r"%(\1)s", sql)
    return sql.replace("?", "%s")


def describe(url: str) -> str:
    """
    The database C{url} names, for the operator's log and refusals: its
    host, port, database and user, never a password.
    """
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the database (its URL cannot be read)"
    place = f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}"
    name = f"postgresql://{place}/{parts.get('dbname', '')}"
    user = parts.get("user")
    return name if user is None else f"{name} as {user}"


class DatabaseHeld(psycopg.OperationalError):
    """
    Another daemon holds the database's owner lock (L{OWNER_LOCK}).
    """

    def __str__(self) -> str:
        return (
            "another secmsg daemon serves from it; two daemons on one "
            "database would each miss what the other accepts"
        )


class PostgresConnection:
    """
    A connection to the shared database, as the store's jobs and worker
    use it (L{secmsg.daemon.store.worker.Database}); it connects again
    when a transaction begins after the connection was lost.

    @param sole: whether this daemon holds the database alone, or shares
        it with the other daemons of a cluster (L{OWNER_LOCK}).
    """

    error: type[Exception] = psycopg.Error

    def __init__(self, url: str, sole: bool = True) -> None:
        self._url = url
        self._sole = sole
        self._connection = _connect(url, sole)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self._connection.execute(postgres_sql(sql), parameters or None)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        with self._connection.cursor() as cursor:
            cursor.executemany(postgres_sql(sql), list(parameters))

    def begin(self) -> None:
        if self._connection.broken or self._connection.closed:
            self._connection = _connect(self._url, self._sole)
        self._connection.execute("BEGIN")
        self._connection.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))

    def commit(self) -> None:
        self._connection.execute("COMMIT")

    def rollback(self) -> None:
        with suppress(psycopg.Error):
            if self._connection.info.transaction_status != TransactionStatus.IDLE:
                self._connection.execute("ROLLBACK")

    def lost(self) -> bool:
        status = self._connection.info.transaction_status
        return self._connection.broken or status in (
            TransactionStatus.IDLE,
            TransactionStatus.UNKNOWN,
        )

    def close(self) -> None:
        self._connection.close()


def _connect(url: str, sole: bool) -> psycopg.Connection[Any]:
    """
    Connect, durable commits on, each statement its own transaction until
    L{PostgresConnection.begin} begins one, and take the owner lock.

    @raise DatabaseHeld: another daemon holds the owner lock.
    """
    connection = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    lock = "pg_try_advisory_lock" if sole else "pg_try_advisory_lock_shared"
    try:
        connection.execute("SET synchronous_commit = on")
        locked = connection.execute(f"SELECT {lock}(%s)", (OWNER_LOCK,)).fetchone()
        if locked is None or not locked[0]:
            raise DatabaseHeld()
    except BaseException:
        connection.close()
        raise
    return connection


def open_shared_database(url: str) -> PostgresConnection:
    """
    Connect to the database C{url} names, making its schema if it has none.

    @raise ConfigurationError: it cannot be reached, or holds tables that
        are not a secmsg store of this version.
    """
    where = describe(url)
    try:
        connection = PostgresConnection(url)
    except DatabaseHeld as held:
        raise ConfigurationError(f"database {where}", str(held)) from None
    except psycopg.Error as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigurationError(
            f"database {where}", f"cannot be reached: {reason}"
        ) from None
    try:
        _prepare(connection, where)
    except psycopg.Error as error:
        connection.close()
        raise ConfigurationError(f"database {where}", str(error).strip()) from None
    except BaseException:
        connection.close()
        raise
    return connection


def _prepare(connection: PostgresConnection, where: str) -> None:
    """
    Make the schema in a new database, in one transaction, or check the
    version of an existing one.
    """
    connection.execute("BEGIN")
    connection.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
    try:
        (has_version,) = connection.execute(
            "SELECT to_regclass('version') IS NOT NULL"
        ).fetchone()
        if has_version:
            _check_version(connection, where)
        else:
            _make_schema(connection, where)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise


def _check_version(connection: PostgresConnection, where: str) -> None:
    row = connection.execute("SELECT version FROM version").fetchone()
    if row is None or row[0] != CURRENT_VERSION:
        found = "no version" if row is None else f"version {row[0]}"
        raise ConfigurationError(
            f"database {where}",
            f"holds a secmsg store of {found}; this secmsg reads version "
            f"{CURRENT_VERSION}",
        )


def _make_schema(connection: PostgresConnection, where: str) -> None:
    (tables,) = connection.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
    ).fetchone()
    if tables:
        raise ConfigurationError(
            f"database {where}",
            f"holds {tables} tables and no secmsg store; give secmsg a "
            f"database of its own",
        )
    connection.execute(schema(f"postgresql-v{CURRENT_VERSION}.sql"))


@implementer(IMessageStore)
class PostgresStore(StreamStore):
    """
    Messages and cursors in a PostgreSQL database, through one worker.
    """

    def __init__(
        self,
        url: str,
        start_worker: Callable[[PostgresConnection], IStoreWorker],
        clock: IReactorTime,
    ) -> None:
        super().__init__(start_worker, clock)
        self._url = url

    def open_connection(self) -> PostgresConnection:
        return open_shared_database(self._url)
