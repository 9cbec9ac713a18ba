"""
A consistent copy of the open database, made while the daemon serves.

SQLite's online backup copies the database a few pages at a time through
the store's own connection, on the store's thread, so the database stays
held exclusively by the daemon (a second daemon is still refused) and no
other process ever reads it.  Between steps the thread serves what came
meanwhile; SQLite carries the writes made through the same connection into
the copy, which is therefore the database as it stands when the last step
ends: a snapshot that holds every message confirmed before the backup
began.  The copy is written under a temporary name in the destination's
directory, mode 0600 from its first byte, synced, and only then given the
destination's name, so that no half-written backup ever bears it.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from secmsg.daemon.store.database import sync_directory
from secmsg.daemon.store.worker import LongJob, Pause
from secmsg.errors import BackupRefused

STEP_PAGES = 256
"""Pages copied between two pauses: 1 MiB of SQLite's default 4 KiB pages,
a few milliseconds of the store's thread."""

_SQLITE_HEADER = b"SQLite format 3\x00"
"""How a SQLite database file begins: the only kind of file a backup may
replace."""

_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def backup_job(live: Path, destination: Path, replace: bool) -> LongJob:
    """
    The job that backs up the database at C{live} to C{destination}, for
    the store's worker; it fires with the copy's size in bytes.
    """

    def job(connection: sqlite3.Connection, pause: Pause) -> int:
        check_destination(live, destination, replace)
        return _write(connection, pause, destination, replace)

    return job


def check_destination(live: Path, destination: Path, replace: bool) -> None:
    """
    Refuse a destination that a backup must not write: a relative path, a
    place in the data directory, a missing directory, or a file already
    there, unless C{replace} and it is a SQLite database (an older
    backup), never anything else.

    @raise BackupRefused: saying why.
    """
    if not destination.is_absolute():
        raise BackupRefused(f"{destination} is not an absolute path")
    if not destination.parent.is_dir():
        raise BackupRefused(f"there is no directory {destination.parent}")
    if destination.parent.resolve() == live.parent.resolve():
        raise BackupRefused(
            f"{destination} is in the data directory, beside the live store; "
            "write backups elsewhere"
        )
    if not os.path.lexists(destination):
        return
    if not replace:
        raise BackupRefused(
            f"{destination} exists; a backup replaces a file only if asked to"
        )
    if destination.is_symlink() or not _is_database(destination):
        raise BackupRefused(
            f"{destination} is not a SQLite database; a backup replaces only "
            "an older backup"
        )


def _is_database(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError:
        return False


def _write(
    connection: sqlite3.Connection, pause: Pause, destination: Path, replace: bool
) -> int:
    try:
        descriptor, name = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent
        )
    except OSError as error:
        raise BackupRefused(
            f"cannot write in {destination.parent}: {error.strerror}"
        ) from None
    os.close(descriptor)
    staging = Path(name)
    try:
        _copy(connection, pause, staging)
        _put_in_place(staging, destination, replace)
        return destination.stat().st_size
    except OSError as error:
        raise BackupRefused(f"cannot write {destination}: {error.strerror}") from None
    except sqlite3.Error as error:
        raise BackupRefused(f"the copy to {destination} failed: {error}") from None
    finally:
        for suffix in _SIDE_FILES:
            Path(f"{staging}{suffix}").unlink(missing_ok=True)


def _copy(connection: sqlite3.Connection, pause: Pause, staging: Path) -> None:
    """
    Copy the database into C{staging} in steps, pausing between them, and
    make the copy a database of one file, on disk.
    """
    target = sqlite3.connect(staging, isolation_level=None)
    try:
        connection.backup(target, pages=STEP_PAGES, progress=lambda *_: pause())
        # The pages bring the live store's write-ahead mode with them; a
        # backup is a file to be copied and moved, so it keeps no -wal.
        target.execute("PRAGMA journal_mode = DELETE")
    finally:
        target.close()
    descriptor = os.open(staging, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _put_in_place(staging: Path, destination: Path, replace: bool) -> None:
    """
    Give the finished copy its name: replacing what is there only if
    asked, and otherwise by a link, which fails rather than replace a file
    that appeared meanwhile.
    """
    if replace:
        os.replace(staging, destination)
    else:
        try:
            os.link(staging, destination)
        except FileExistsError:
            raise BackupRefused(
                f"{destination} appeared during the backup; it was left as it was"
            ) from None
    sync_directory(destination.parent)
