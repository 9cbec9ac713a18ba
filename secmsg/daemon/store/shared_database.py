"""
The PostgreSQL database of the message store: connecting to it, making its
schema, and running the store's SQL and its worker's transactions on it.

The jobs are the SQLite store's own (L{secmsg.daemon.store.streams}):
L{PostgresConnection} runs their statements in PostgreSQL's spelling
(L{postgres_sql}) and runs the worker's transactions, so that one body of
SQL serves both engines and the two cannot drift apart.

Three things differ from SQLite, where one daemon holds the database alone:

 - Ids must commit in the order they are taken.  Another daemon's
   transaction may take id 7, this one id 8 and commit first; a reader
   that then moves its cursor to 8 would pass 7 for good once it commits.
   So every transaction takes the append lock (L{APPEND_LOCK}, a
   transaction-level advisory lock) before anything else: ids are taken,
   and committed, one transaction after another.  A transaction holds
   the whole batch of its worker, so what this costs is one commit at a
   time across the daemons, not one message at a time.  A transaction
   that appends moves the C{head} row too, so that what it appended is a
   L{Segment} that the daemons of a cluster tell each other.
 - The connection can be lost while the daemon runs.  A batch that meets
   a lost connection fails with a L{StoreError} (a 503 to whoever sent),
   and a batch a moment later connects again, so that service resumes
   once the database is back, without a restart.  Keepalives on both ends
   and timeouts on statements bound how long a dead peer goes unnoticed.
 - Other roles may use the same server: the functions the store calls are
   named in C{pg_catalog}, so that no one can plant a function of the same
   name for the daemon to run.

A commit returns once PostgreSQL has made it durable: the connection sets
C{synchronous_commit} on, whatever the server's default.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg.pq import TransactionStatus
from twisted.logger import Logger

from secmsg.daemon.store.database import CURRENT_VERSION, schema
from secmsg.errors import ConfigurationError
from secmsg.messages import Draft, Stored, to_microseconds
from secmsg.wire import escape_controls

log = Logger()

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

RETRY_AFTER = 1.0
"""Seconds after a failed connection attempt during which the store
answers 503 at once rather than try again: a batch a second, not every
batch, waits for a database that is down."""

_SESSION = (
    "SET synchronous_commit = on",
    # A statement, or a transaction left open, that takes longer than
    # this is a database in trouble: better a 503 than a store that hangs.
    "SET statement_timeout = '60s'",
    "SET idle_in_transaction_session_timeout = '60s'",
    # The server's end notices a dead daemon within about 30 seconds and
    # frees its locks, rather than in the kernel's two hours.
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
)

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


def first_line(error: Exception) -> str:
    """
    The first line of a driver's error, safe for a log line: libpq's words
    run over several.
    """
    text = str(error).strip()
    return escape_controls(text.splitlines()[0] if text else type(error).__name__)


_APPEND_ALL = """
INSERT INTO messages (kind, sender, target, body, created)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[])
RETURNING id
"""


@dataclass(frozen=True)
class Segment:
    """
    What one transaction appended: every message with an id above
    C{previous} and up to C{last}, which no other transaction appended
    in between (the append lock), in id order.
    """

    previous: int
    last: int
    messages: tuple[Stored, ...]


Committed = Callable[[Segment], None]
"""Told of each segment once it is committed, on the store's thread."""


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

    @param committed: for one of the daemons of a cluster, which share
        the database (L{OWNER_LOCK}), told of what each transaction
        appended; L{None} for a daemon that holds the database alone.
    @param now: the time in seconds, which L{RETRY_AFTER} counts in.
    """

    error: type[Exception] = psycopg.Error

    def __init__(
        self,
        url: str,
        committed: Committed | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._committed = committed
        self._now = now
        self._sole = committed is None
        self._appended: list[Stored] = []
        self._retry_at = 0.0
        self._connection = _connect(url, self._sole)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self._connection.execute(postgres_sql(sql), parameters or None)

    def append_all(self, drafts: Sequence[Draft]) -> list[Stored]:
        """
        Append C{drafts} to their streams in one statement, for this
        transaction's segment: one round trip to the server for them all.
        Their ids are taken in the order of the rows, one after another,
        since every transaction that takes ids holds the append lock.
        """
        columns = (
            [draft.kind.value for draft in drafts],
            [draft.sender for draft in drafts],
            [draft.target for draft in drafts],
            [draft.text for draft in drafts],
            [to_microseconds(draft.created) for draft in drafts],
        )
        rows = self._connection.execute(_APPEND_ALL, columns).fetchall()
        ids = sorted(message_id for (message_id,) in rows)
        stored = [Stored.of(i, draft) for i, draft in zip(ids, drafts, strict=True)]
        self._appended.extend(stored)
        return stored

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        with self._connection.cursor() as cursor:
            cursor.executemany(postgres_sql(sql), list(parameters))

    def begin(self) -> None:
        self._appended = []
        try:
            self._begin()
        except psycopg.OperationalError:
            if not self._connection.broken:
                raise
            # A connection that died since its last use shows it only now;
            # nothing has run, so one more try is safe.
            self._begin()

    def _begin(self) -> None:
        if self._connection.broken or self._connection.closed:
            self._reconnect()
        self._connection.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        self._connection.execute(
            "SELECT pg_catalog.pg_advisory_xact_lock(%s::bigint)", (APPEND_LOCK,)
        )

    def _reconnect(self) -> None:
        """
        Connect again, or refuse at once for a moment after a try failed;
        the operator hears of the outage once, and of its end.
        """
        if self._now() < self._retry_at:
            raise psycopg.OperationalError("the database is out of reach")
        try:
            self._connection = _connect(self._url, self._sole)
        except psycopg.Error as error:
            if not self._retry_at:
                log.error(
                    "message store: lost the database {where}: {error}",
                    where=describe(self._url),
                    error=first_line(error),
                )
            self._retry_at = self._now() + RETRY_AFTER
            raise
        self._retry_at = 0.0
        log.info(
            "message store: reached the database {where} again",
            where=describe(self._url),
        )

    def appended(self, message: Stored) -> Stored:
        """
        Note that this transaction appended C{message}, for its segment.
        """
        self._appended.append(message)
        return message

    def commit(self) -> None:
        segment = self._segment() if self._appended else None
        ended = self._connection.execute("COMMIT")
        if ended.statusmessage != "COMMIT":
            # PostgreSQL ends a failed transaction with a ROLLBACK, and no
            # error, when asked to commit it.
            raise psycopg.OperationalError("the transaction was rolled back")
        if segment is not None and self._committed is not None:
            self._committed(segment)

    def _segment(self) -> Segment:
        """
        Move the head past what this transaction appended: its segment.
        """
        row = self.execute("SELECT position FROM head").fetchone()
        if row is None:
            raise psycopg.DataError("the store's head row is missing")
        (previous,) = row
        last = max(message.id for message in self._appended)
        self._connection.execute("UPDATE head SET position = %s", (last,))
        return Segment(previous, last, tuple(self._appended))

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

    def refusal(self, error: Exception) -> str:
        # The client hears what happened, not the database's host and
        # port, which libpq's words name; the operator's log has those.
        if isinstance(error, psycopg.OperationalError):
            return "the database is out of reach"
        return "the database refused the transaction"

    def close(self) -> None:
        self._connection.close()


def _connect(url: str, sole: bool) -> psycopg.Connection[Any]:
    """
    Connect, durable commits on, each statement its own transaction until
    L{PostgresConnection.begin} begins one, and take the owner lock.

    @raise DatabaseHeld: another daemon holds the owner lock.
    """
    connection = psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        client_encoding="utf8",
        # The client's end of the keepalives above: a silent network is a
        # lost connection after about 30 seconds.
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        tcp_user_timeout=30000,
    )
    lock = "pg_try_advisory_lock" if sole else "pg_try_advisory_lock_shared"
    try:
        for setting in _SESSION:
            connection.execute(setting)
        locked = connection.execute(
            f"SELECT pg_catalog.{lock}(%s::bigint)", (OWNER_LOCK,)
        ).fetchone()
        if locked is None or not locked[0]:
            raise DatabaseHeld()
    except BaseException:
        connection.close()
        raise
    return connection


def open_shared_database(
    url: str,
    committed: Committed | None = None,
    now: Callable[[], float] = time.monotonic,
) -> PostgresConnection:
    """
    Connect to the database C{url} names, making its schema if it has none.

    @param committed: as for L{PostgresConnection}.
    @param now: as for L{PostgresConnection}.
    @raise ConfigurationError: it cannot be reached, or holds tables that
        are not a secmsg store of this version.
    """
    where = describe(url)
    try:
        connection = PostgresConnection(url, committed, now)
    except DatabaseHeld as held:
        raise ConfigurationError(f"database {where}", str(held)) from None
    except psycopg.Error as error:
        raise ConfigurationError(
            f"database {where}", f"cannot be reached: {first_line(error)}"
        ) from None
    try:
        _prepare(connection, where)
    except psycopg.Error as error:
        connection.close()
        raise ConfigurationError(f"database {where}", first_line(error)) from None
    except BaseException:
        connection.close()
        raise
    return connection


def _prepare(connection: PostgresConnection, where: str) -> None:
    """
    Make the schema in a new database, in one transaction, or check the
    version of an existing one.
    """
    (encoding,) = connection.execute("SHOW server_encoding").fetchone()
    if encoding != "UTF8":
        raise ConfigurationError(
            f"database {where}",
            f"is encoded in {encoding}; secmsg keeps text from anyone, and "
            f"needs a UTF8 database (createdb -E UTF8)",
        )
    connection.execute("BEGIN")
    connection.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock(?::bigint)", (SCHEMA_LOCK,)
    )
    try:
        (has_version,) = connection.execute(
            "SELECT pg_catalog.to_regclass('version') IS NOT NULL"
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
        "SELECT count(*) FROM pg_catalog.pg_tables"
        " WHERE schemaname = pg_catalog.current_schema()"
    ).fetchone()
    if tables:
        raise ConfigurationError(
            f"database {where}",
            f"holds {tables} tables and no secmsg store; give secmsg a "
            f"database of its own",
        )
    connection.execute(schema(f"postgresql-v{CURRENT_VERSION}.sql"))
    connection.execute(
        "INSERT INTO bus_key (secret) VALUES (?)", (secrets.token_bytes(32),)
    )
