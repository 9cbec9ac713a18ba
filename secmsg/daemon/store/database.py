"""
Opening the SQLite database: create it whole, upgrade it after a backup,
or refuse to start with one line saying why; and checking, read-only, that
an existing one will open.

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

CURRENT_VERSION = 3
DATABASE_NAME = "secmsg.db"


def schema(name: str) -> str:
    """
    The text of a schema file shipped with secmsg.
    """
    return resources.files("secmsg.daemon.store").joinpath("schema", name).read_text()


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
        try:
            version = _checked_version(connection, path)
            _configure(connection)
            if version < CURRENT_VERSION:
                _upgrade(connection, path, version)
        except BaseException:
            connection.close()
            raise
        return connection
    except sqlite3.Error as error:
        raise ConfigurationError(str(path), _explain(error)) from None
    except OSError as error:
        raise ConfigurationError(
            str(path), f"cannot create or open: {error.strerror}"
        ) from None


def check_database(path: Path) -> None:
    """
    Check, changing nothing, that L{open_database} will open the existing
    database at C{path}: that it is a secmsg database, whole, not held by
    another daemon, and of a version this daemon reads or upgrades.

    This is what the daemon asks before it binds its ports; the database
    is made WAL and upgraded (after its backup) only once they are bound,
    so that a daemon that cannot listen leaves an older one as it was,
    for the version it was made by to go on with.

    @raise ConfigurationError: with the words L{open_database} refuses it
        with.
    """
    try:
        connection = sqlite3.connect(
            _read_only_uri(path), uri=True, timeout=0, isolation_level=None
        )
        try:
            # The first read takes the lock, so a database another daemon
            # holds, or a file that is none, is refused here as at open.
            connection.execute("SELECT count(*) FROM sqlite_master")
            _checked_version(connection, path)
        finally:
            connection.close()
    except sqlite3.Error as error:
        text = str(error)
        if "unable to open" in text or "disk I/O" in text:
            raise ConfigurationError(
                str(path), f"cannot read the database ({text})"
            ) from None
        raise ConfigurationError(str(path), _explain(error)) from None


def _read_only_uri(path: Path) -> str:
    """
    The URI that opens C{path} read-only without writing beside it.

    A WAL database opened read-only makes its C{-wal} and C{-shm} files
    where there are none.  With no C{-wal} file, its pages are all in the
    database and no daemon holds it (L{open_database} opens the C{-wal}
    before it returns): it is read as immutable, which writes nothing.  A
    C{-wal} file is that of a daemon running, whose lock refuses the read,
    or of one killed before it closed the database, which is read through,
    and for which SQLite leaves an index (C{-shm}) beside it.
    """
    uri = f"{path.absolute().as_uri()}?mode=ro"
    if path.with_name(f"{path.name}-wal").exists():
        return uri
    return f"{uri}&immutable=1"


def _connect(path: Path) -> sqlite3.Connection:
    """
    Connect and take the database's lock, before anything is changed.
    """
    # No busy timeout: the daemon is the database's only user, so a lock
    # held by anyone else is a second daemon, to be refused at once.
    connection = sqlite3.connect(
        path, timeout=0, isolation_level=None, check_same_thread=False
    )
    try:
        # Exclusive locking: a second daemon on the same data directory is
        # refused at startup instead of interleaving with this one.
        connection.execute("PRAGMA locking_mode = EXCLUSIVE")
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("COMMIT")
    except sqlite3.Error:
        connection.close()
        raise
    return connection


def _checked_version(connection: sqlite3.Connection, path: Path) -> int:
    """
    The database's schema version, once it has shown itself whole and not
    newer than this daemon.
    """
    try:
        (version,) = connection.execute("SELECT version FROM version").fetchone()
    except (sqlite3.Error, TypeError):
        raise ConfigurationError(
            str(path), "not a secmsg database (it has no schema version)"
        ) from None
    (verdict,) = connection.execute("PRAGMA quick_check").fetchone()
    if verdict != "ok":
        raise ConfigurationError(
            str(path),
            f"not a usable database (quick_check: {verdict}); restore a backup "
            "or move it away",
        )
    if not isinstance(version, int) or version < 1:
        raise ConfigurationError(
            str(path),
            f"not a secmsg database (its schema version {version!r} is not a "
            "version number)",
        )
    if version > CURRENT_VERSION:
        raise ConfigurationError(
            str(path),
            f"database version {version} is newer than this daemon's "
            f"({CURRENT_VERSION}); run a newer secmsg",
        )
    return version


def _configure(connection: sqlite3.Connection) -> None:
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise sqlite3.OperationalError(f"cannot use write-ahead logging ({mode})")
    # FULL: a commit is on disk before the 250 that confirms it, even if the
    # machine loses power, not only if the daemon is killed.
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")
    # A read opens the -wal file now, not at the first write: check_database
    # takes a database without one for a database no daemon holds.
    connection.execute("SELECT count(*) FROM version")


def _create(path: Path) -> None:
    """
    Make a new database under a temporary name, readable by its owner only
    from its first byte, and rename it into place.
    """
    staging = _private_file(path.with_name(f".{path.name}.new"))
    connection = sqlite3.connect(staging, isolation_level=None)
    try:
        connection.executescript(f"BEGIN; {schema(f'v{CURRENT_VERSION}.sql')} COMMIT;")
    finally:
        connection.close()
    os.replace(staging, path)
    sync_directory(path.parent)
    log.info("created the message store {path}", path=str(path))


def _upgrade(connection: sqlite3.Connection, path: Path, version: int) -> None:
    """
    Copy the database aside, then upgrade it in one transaction.
    """
    staging = _private_file(path.with_name(f".{path.name}.backup.new"))
    target = sqlite3.connect(staging)
    try:
        connection.backup(target)
    finally:
        target.close()
    backup = _free_name(path.with_name(f"{path.name}.v{version}.backup"))
    os.replace(staging, backup)
    sync_directory(path.parent)
    script = "".join(
        schema(f"upgrade-to-v{step}.sql")
        for step in range(version + 1, CURRENT_VERSION + 1)
    )
    try:
        connection.executescript(f"BEGIN; {script} COMMIT;")
    except sqlite3.Error:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    log.info(
        "upgraded the message store {path} from version {old} to {new}; "
        "the old one is kept as {backup}",
        path=str(path),
        old=version,
        new=CURRENT_VERSION,
        backup=str(backup),
    )


def _private_file(path: Path) -> Path:
    """
    An empty file at C{path}, mode 0600, replacing a leftover of a run that
    stopped half-way.
    """
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


def _free_name(path: Path) -> Path:
    """
    C{path}, or C{path.2}, C{path.3}...: an earlier backup is never replaced.
    """
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.{number}")
    return candidate


def sync_directory(directory: Path) -> None:
    """
    Make a rename in C{directory} durable.
    """
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _explain(error: sqlite3.Error) -> str:
    text = str(error)
    if "locked" in text:
        return "database is locked: is another secmsg daemon using this data directory?"
    if "not a database" in text or "malformed" in text:
        return f"not a usable database ({text}); restore a backup or move it away"
    if "readonly" in text or "unable to open" in text:
        return f"cannot write the database ({text})"
    return text
