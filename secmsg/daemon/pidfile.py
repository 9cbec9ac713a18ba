"""
Whether another daemon already runs with the pidfile twistd was given.

twistd checks its pidfile itself, but before our options are read it
cannot say anything of secmsg's: its refusal speaks of a twistd server and
of C{--logfile}, and leaves a newcomer who ran C{make run} twice guessing.
This check comes first and says what is running and what to do instead.
A pidfile whose process is gone (after C{kill -9}, say) is left to twistd,
which removes it and starts.
"""

from __future__ import annotations

import os
from pathlib import Path

SECOND_INSTANCE = (
    "or give a second daemon an instance of its own, with its own pidfile "
    "and ports (secmsg init DIR --port 7501 --admin-port 7446, then twistd "
    "--pidfile DIR/secmsg.pid secmsg --config DIR/secmsg.toml; in a clone of "
    "secmsg, make run INSTANCE=dev2 PORT=7501 ADMIN_PORT=7446 does both)"
)
"""How to run a second daemon beside the first, for the refusal."""


def pidfile_problem(pidfile: Path) -> str | None:
    """
    Why a daemon cannot start with C{pidfile}, in one line; L{None} if it
    can: there is none, or the process it names is gone.
    """
    try:
        text = pidfile.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"cannot read the pidfile {pidfile}: {error.strerror}"
    pid = _pid_in(text)
    if pid is None:
        return (
            f"the pidfile {pidfile} holds no process id, as a crash while "
            "writing it leaves it; if no daemon runs with it, remove it"
        )
    if not _running(pid):
        return None
    return (
        f"a daemon is already running with the pidfile {pidfile} (pid {pid}): "
        f"stop it (kill {pid}), {SECOND_INSTANCE}"
    )


def _pid_in(text: str) -> int | None:
    """
    The process id a pidfile holds, or L{None} for anything else (a pid of
    0 or below would name a process group to twistd's check).
    """
    try:
        pid = int(text)
    except ValueError:
        return None
    return pid if pid > 0 else None


def _running(pid: int) -> bool:
    """
    Whether process C{pid} exists, whoever's it is.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Another user's process: it exists, and twistd refuses it too.
        return True
    return True
