"""
Opening the SQLite database: create it whole, upgrade it after a backup,
or refuse to start with one line saying why.

The schema is versioned: C{schema/vN.sql} makes a new database of version
N, and C{schema/upgrade-to-vN.sql} takes one from N-1 to N.  A new database
is built under a temporary name and renamed into place, so that a daemon
stopped half-way never leaves a half-made one.  Before an upgrade the
database is copied (SQLite's online backup) to C{NAME.vOLD.backup}.
"""

from __future__ import annotations

import os
import sqlite3
from importlib import resources
from pathlib import Path

from twisted.logger import Logger

from secmsg.errors import ConfigurationError

log = Logger()

CURRENT_VERSION = 2
DATABASE_NAME = "secmsg.db"


def schema(name: str) -> str:
    """
    The text of a schema file shipped with secmsg.
    """
    return resources.files("secmsg.store").joinpath("schema", name).read_text()


def open_database(path: Path) -> sqlite3.Connection:
    """
    Open (creating or upgrading) the database at C{path}, held exclusively
    by this process.

    @raise ConfigurationError: it is corrupt, locked by another process,
        not writable, or newer than this daemon.
    """
    try:
        if not path.exists():
            _create(path)
        connection = _connect(path)
        version = _version(connection, path)
        if version > CURRENT_VERSION:
            connection.close()
            raise ConfigurationError(
                str(path),
                f"database version {version} is newer than this daemon's "
                f"({CURRENT_VERSION}); run a newer secmsg",
            )
        if version < CURRENT_VERSION:
            _upgrade(connection, path, version)
        return connection
    except sqlite3.Error as error:
        raise ConfigurationError(str(path), _explain(error)) from None
    except OSError as error:
        raise ConfigurationError(
            str(path), f"cannot create or open: {error.strerror}"
        ) from None


def _connect(path: Path) -> sqlite3.Connection:
    # No busy timeout: the daemon is the database's only user, so a lock
    # held by anyone else is a second daemon, to be refused at once.
    connection = sqlite3.connect(
        path, timeout=0, isolation_level=None, check_same_thread=False
    )
    # Exclusive locking: a second daemon on the same data directory is
    # refused at startup instead of interleaving with this one.
    connection.execute("PRAGMA locking_mode = EXCLUSIVE")
    connection.execute("PRAGMA journal_mode = WAL")
    # FULL: a commit is on disk before the 250 that confirms it, even if the
    # machine loses power, not only if the daemon is killed.
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")
    # Take the lock now, so that "locked" is found at startup.
    connection.execute("BEGIN EXCLUSIVE")
    connection.execute("COMMIT")
    return connection


def _create(path: Path) -> None:
    staging = path.with_name(f".{path.name}.new")
    staging.unlink(missing_ok=True)
    connection = sqlite3.connect(staging, isolation_level=None)
    try:
        connection.executescript(f"BEGIN; {schema(f'v{CURRENT_VERSION}.sql')} COMMIT;")
    finally:
        connection.close()
    os.chmod(staging, 0o600)
    os.replace(staging, path)
    log.info("created the message store {path}", path=str(path))


def _version(connection: sqlite3.Connection, path: Path) -> int:
    try:
        (version,) = connection.execute("SELECT version FROM version").fetchone()
    except (sqlite3.Error, TypeError):
        connection.close()
        raise ConfigurationError(
            str(path), "not a secmsg database (it has no schema version)"
        ) from None
    return int(version)


def _upgrade(connection: sqlite3.Connection, path: Path, version: int) -> None:
    backup = path.with_name(f"{path.name}.v{version}.backup")
    if backup.exists():
        connection.close()
        raise ConfigurationError(
            str(backup), "a backup from an earlier upgrade is in the way; move it"
        )
    target = sqlite3.connect(backup)
    try:
        connection.backup(target)
    finally:
        target.close()
    os.chmod(backup, 0o600)
    script = "".join(
        schema(f"upgrade-to-v{step}.sql")
        for step in range(version + 1, CURRENT_VERSION + 1)
    )
    connection.executescript(f"BEGIN; {script} COMMIT;")
    log.info(
        "upgraded the message store {path} from version {old} to {new}; "
        "the old one is kept as {backup}",
        path=str(path),
        old=version,
        new=CURRENT_VERSION,
        backup=str(backup),
    )


def _explain(error: sqlite3.Error) -> str:
    text = str(error)
    if "locked" in text:
        return "database is locked: is another secmsg daemon using this data directory?"
    if "not a database" in text or "malformed" in text:
        return f"not a usable database ({text}); restore a backup or move it away"
    if "readonly" in text or "unable to open" in text:
        return f"cannot write the database ({text})"
    return text
