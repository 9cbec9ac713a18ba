"""
The daemon's state belongs to the user it runs as.

Under C{twistd --uid/--gid} the daemon starts as root, makes its data
directory, opens its database and audit trail and listens, and only then
drops to the unprivileged user.  What root created would stay root's: the
daemon could no longer rotate its audit trail (L{LogFile} checks that it
may write the file before it renames it), and the next start under the
same user could not open the database.  So, once everything is open and
before the drop, the data directory and what root made in it are given to
that user; files SQLite makes later (C{-wal}, C{-shm}) follow the
database's owner, and files made after the drop are the user's anyway.
Only the names the daemon makes there are handed over, each through a
descriptor opened without following links, so that the user, who may own
the directory since the last run, cannot steer the change to a file of
root's.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from twisted.application.service import Service
from twisted.logger import Logger

from secmsg.daemon.audit import AUDIT_NAME
from secmsg.daemon.chain import KEY_NAME
from secmsg.daemon.store.database import DATABASE_NAME
from secmsg.errors import ConfigurationError

log = Logger()

_DAEMONS = frozenset(
    {DATABASE_NAME + side for side in ("", "-wal", "-shm", "-journal")}
    | {AUDIT_NAME, KEY_NAME}
)
"""The database and SQLite's side files, the audit trail and its key."""

_ROTATED = re.compile(re.escape(AUDIT_NAME) + r"\.[1-9][0-9]*")
"""The audit trail's rotated files: C{audit.log.1}, and so on."""


@dataclass(frozen=True)
class Owner:
    """
    The user and group the daemon runs as after twistd drops privileges.
    """

    uid: int
    gid: int


def hand_over(directory: Path, owner: Owner) -> None:
    """
    Give C{directory} and the daemon's own files in it, those the current
    user owns, to C{owner}.

    Only the names the daemon makes are looked at, and every one through
    a descriptor: the directory is opened without following a link and
    listed through its descriptor, each file opened through that
    descriptor without following a link, checked on what was opened, and
    given away through the same descriptor.  The directory may already
    belong to the unprivileged user, who could swap a name for a link to
    a file of root's between a check and a change by path.  A data
    directory that is a symbolic link is refused; a symbolic link in it
    is left alone, with a warning; a file with more than one hard link,
    since changing it would change the file it shares, or that is not a
    regular file, is refused before anything is changed.

    @raise ConfigurationError: the directory or a file cannot be handed
        over.
    """
    with ExitStack() as opened:
        descriptor = _open_directory(directory)
        opened.callback(os.close, descriptor)
        given = [(directory, descriptor)]
        for name in sorted(filter(_made_by_daemon, os.listdir(descriptor))):
            file = _open_own(directory / name, descriptor)
            if file is not None:
                opened.callback(os.close, file)
                given.append((directory / name, file))
        for path, file in given:
            _give(path, file, owner)


def _made_by_daemon(name: str) -> bool:
    """
    Whether C{name} is one the daemon gives a file it makes in the data
    directory; nothing an operator put beside them is touched.
    """
    return name in _DAEMONS or _ROTATED.fullmatch(name) is not None


def _open_directory(directory: Path) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(directory, flags)
    except OSError as error:
        # Linux says ENOTDIR for a link under O_DIRECTORY, ELOOP without it.
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and directory.is_symlink():
            raise ConfigurationError(
                str(directory),
                "is a symbolic link; the daemon hands over only the data "
                "directory itself, never where a link points",
            ) from None
        raise ConfigurationError(
            str(directory), f"cannot open: {error.strerror}"
        ) from None


def _open_own(path: Path, directory: int) -> int | None:
    """
    Open C{path}, named in the open C{directory}, if it is the current
    user's to give; L{None} if it is not, or is gone or a symbolic link.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(path.name, flags, dir_fd=directory)
    except OSError as error:
        if error.errno == errno.ENOENT:
            return None
        if error.errno == errno.ELOOP:
            log.warn(
                "{path} is a symbolic link: not followed, not handed over",
                path=str(path),
            )
            return None
        raise ConfigurationError(str(path), f"cannot open: {error.strerror}") from None
    try:
        mine = _check(path, os.fstat(descriptor))
    except ConfigurationError:
        os.close(descriptor)
        raise
    if not mine:
        os.close(descriptor)
        return None
    return descriptor


def _check(path: Path, status: os.stat_result) -> bool:
    """
    Whether the file opened at C{path}, of C{status}, is the current
    user's to give.

    @raise ConfigurationError: it is, but is no plain file of its own.
    """
    if status.st_uid != os.geteuid():
        return False
    if not stat.S_ISREG(status.st_mode):
        raise ConfigurationError(
            str(path),
            "is not a regular file; the daemon hands over only the files it makes",
        )
    if status.st_nlink > 1:
        raise ConfigurationError(
            str(path),
            "has other hard links; the daemon gives its own files to the "
            "user it runs as and will not change a file it shares",
        )
    return True


def _give(path: Path, descriptor: int, owner: Owner) -> None:
    try:
        os.fchown(descriptor, owner.uid, owner.gid)
    except OSError as error:
        raise ConfigurationError(
            str(path),
            f"cannot give to uid {owner.uid}, gid {owner.gid}: {error.strerror}",
        ) from None


class HandOverService(Service):
    """
    Hands the data directory over to the daemon's user last of all the
    privileged start, after the store and the audit trail are open and
    before twistd drops to that user.
    """

    def __init__(self, directory: Path, owner: Owner) -> None:
        self._directory = directory
        self._owner = owner

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            hand_over(self._directory, self._owner)
        except ConfigurationError as error:
            raise SystemExit(f"secmsg: cannot start: {error}") from None
        log.info(
            "data directory {directory} handed to uid {uid}, gid {gid}",
            directory=str(self._directory),
            uid=self._owner.uid,
            gid=self._owner.gid,
        )
