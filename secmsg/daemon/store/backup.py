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

The directory is held open while the copy is made, and every name in it is
looked up through that descriptor: a directory that others may write, a
symbolic link, or anything but a regular file where a backup is to be
replaced is refused, so that a backup lands in the directory that was
checked and replaces nothing but an older backup.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
from contextlib import suppress
from pathlib import Path

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
        directory = open_directory(live, destination)
        try:
            check_destination(directory, destination, replace)
            return _write(connection, pause, directory, destination, replace)
        finally:
            os.close(directory)

    return job


def open_directory(live: Path, destination: Path) -> int:
    """
    Open the directory a backup is to be written in, which must be the
    daemon's own: absolute, not the data directory, not a symbolic link,
    owned by the daemon's user or root and written by no one else.

    @return: its descriptor, for the caller to close.
    @raise BackupRefused: saying why.
    """
    if not destination.is_absolute():
        raise BackupRefused(f"{destination} is not an absolute path")
    parent = destination.parent
    try:
        directory = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise BackupRefused(f"there is no directory {parent}") from None
    except OSError as error:
        raise BackupRefused(
            f"cannot use the directory {parent}: {error.strerror}"
        ) from None
    status = os.fstat(directory)
    problem = _directory_problem(status, live, parent)
    if problem is not None:
        os.close(directory)
        raise BackupRefused(problem)
    return directory


def _directory_problem(status: os.stat_result, live: Path, parent: Path) -> str | None:
    if os.path.samestat(status, os.stat(live.parent)):
        return (
            f"a backup may not go in the data directory {parent}, beside the "
            "live store; write it elsewhere"
        )
    if status.st_uid not in (os.geteuid(), 0):
        return f"{parent} belongs to another user; backups go in the daemon's own"
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"{parent} may be written by others, who could swap what a backup "
            "writes; make it 0700 or 0750"
        )
    return None


def check_destination(directory: int, destination: Path, replace: bool) -> None:
    """
    Refuse a destination that a backup must not write: a file already
    there, unless C{replace} and it is a regular file holding a SQLite
    database (an older backup), never anything else.

    @param directory: the descriptor of the destination's directory.
    @raise BackupRefused: saying why.
    """
    try:
        status = os.stat(destination.name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not replace:
        raise BackupRefused(
            f"{destination} exists; a backup replaces a file only if asked to"
        )
    if not stat.S_ISREG(status.st_mode) or not _is_database(
        directory, destination.name
    ):
        raise BackupRefused(
            f"{destination} is not a SQLite database; a backup replaces only "
            "an older backup"
        )


def _is_database(directory: int, name: str) -> bool:
    try:
        # Not following a link, and never waiting on a FIFO put there.
        file = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory
        )
    except OSError:
        return False
    try:
        return (
            stat.S_ISREG(os.fstat(file).st_mode)
            and os.read(file, len(_SQLITE_HEADER)) == _SQLITE_HEADER
        )
    finally:
        os.close(file)


def _write(
    connection: sqlite3.Connection,
    pause: Pause,
    directory: int,
    destination: Path,
    replace: bool,
) -> int:
    staging = f".{destination.name}.{secrets.token_hex(8)}.partial"
    try:
        os.close(
            os.open(
                staging,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                0o600,
                dir_fd=directory,
            )
        )
    except OSError as error:
        raise BackupRefused(
            f"cannot write in {destination.parent}: {error.strerror}"
        ) from None
    try:
        _copy(connection, pause, f"/proc/self/fd/{directory}/{staging}")
        _put_in_place(directory, staging, destination, replace)
        return os.stat(destination.name, dir_fd=directory).st_size
    except OSError as error:
        raise BackupRefused(f"cannot write {destination}: {error.strerror}") from None
    except sqlite3.Error as error:
        raise BackupRefused(f"the copy to {destination} failed: {error}") from None
    finally:
        for suffix in _SIDE_FILES:
            with suppress(FileNotFoundError):
                os.unlink(staging + suffix, dir_fd=directory)


def _copy(connection: sqlite3.Connection, pause: Pause, staging: str) -> None:
    """
    Copy the database into C{staging} in steps, pausing between them, and
    make the copy a database of one file, on disk.

    @param staging: the copy's path through the held directory's
        descriptor, so that SQLite opens it, and its journal, there.
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


def _put_in_place(
    directory: int, staging: str, destination: Path, replace: bool
) -> None:
    """
    Give the finished copy its name: replacing what is there only if
    asked, and otherwise by a link, which fails rather than replace a file
    that appeared meanwhile.
    """
    name = destination.name
    if replace:
        os.replace(staging, name, src_dir_fd=directory, dst_dir_fd=directory)
    else:
        try:
            os.link(staging, name, src_dir_fd=directory, dst_dir_fd=directory)
        except FileExistsError:
            raise BackupRefused(
                f"{destination} appeared during the backup; it was left as it was"
            ) from None
    os.fsync(directory)
