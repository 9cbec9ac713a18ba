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
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from twisted.application.service import Service
from twisted.logger import Logger

from secmsg.errors import ConfigurationError

log = Logger()


@dataclass(frozen=True)
class Owner:
    """
    The user and group the daemon runs as after twistd drops privileges.
    """

    uid: int
    gid: int


def hand_over(directory: Path, owner: Owner) -> None:
    """
    Give C{directory} and what the current user owns directly in it to
    C{owner}.

    Links are never followed: the directory may already belong to the
    unprivileged user, who could have planted a link to a file of root's.
    A symbolic link is left alone; a file with more than one hard link is
    refused, before anything is changed, since changing it would change
    the file it shares.

    @raise ConfigurationError: a file cannot be handed over.
    """
    me = os.geteuid()
    entries = []
    for entry in sorted(directory.iterdir()):
        status = entry.lstat()
        if status.st_uid != me or stat.S_ISLNK(status.st_mode):
            continue
        if not stat.S_ISDIR(status.st_mode) and status.st_nlink > 1:
            raise ConfigurationError(
                str(entry),
                "has other hard links; the daemon gives its own files to the "
                "user it runs as and will not change a file it shares",
            )
        entries.append(entry)
    for path in (directory, *entries):
        _give(path, owner)


def _give(path: Path, owner: Owner) -> None:
    try:
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
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
