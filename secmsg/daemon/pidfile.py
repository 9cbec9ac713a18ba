"""
Whether another daemon already runs with the pidfile twistd was given.

twistd checks its pidfile itself, but before our options are read it
cannot say anything of secmsg's: its refusal speaks of a twistd server and
of C{--logfile}, and leaves a newcomer who ran C{make run} twice guessing.
This check comes first and says what is running and what to do instead.
A pidfile whose process is gone (after C{kill -9}, say) is left to twistd,
which removes it and starts.

A live pid is not always a daemon: after a reboot the pid may be another
program's, and in a container the daemon often runs as pid 1 with its
pidfile on a volume, so that the pidfile of the last run names the daemon
itself.  The process's command line (C{/proc/N/cmdline}) tells which, so
that the refusal never advises killing what is not secmsg.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

PROC = Path("/proc")
"""Where the command lines of the processes are read (Linux's procfs)."""


def another_instance(name: str) -> str:
    """
    A name for a second instance beside the one called C{name}, for the
    refusal's advice: C{dev} gives C{dev2}, C{dev2} gives C{dev3}, so that
    the advice never names the instance already running.
    """
    stem = name.rstrip("0123456789")
    number = int(name[len(stem) :] or 1)
    return f"{stem or 'dev'}{number + 1}"


def _second_instance(pidfile: Path) -> str:
    """
    How to run a second daemon beside the one holding C{pidfile}.
    """
    other = another_instance(pidfile.resolve().parent.name)
    return (
        "or give a second daemon an instance of its own, with its own pidfile "
        f"and ports (secmsg init {other} --port 7501 --admin-port 7446, then "
        f"twistd --pidfile {other}/secmsg.pid secmsg --config {other}/secmsg.toml; "
        f"in a clone of secmsg, make run INSTANCE={other} PORT=7501 "
        "ADMIN_PORT=7446 does both; any ports no other instance has will do)"
    )


def pidfile_problem(pidfile: Path) -> str | None:
    """
    Why a daemon cannot start with C{pidfile}, in one line; L{None} if it
    can: there is none, the process it names is gone, or it names this
    very process, left by an earlier run under the same pid (which the
    caller removes: twistd would take it for another server's).
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
    if pid == os.getpid() or not _running(pid):
        return None
    arguments = command_line(pid)
    if arguments is None:
        return (
            f"process {pid} holds the pid in {pidfile}: if it is a secmsg "
            f"daemon, stop it (kill {pid}), {_second_instance(pidfile)}; if no secmsg "
            f"daemon runs, remove {pidfile}"
        )
    if not looks_like_daemon(arguments):
        return (
            f"process {pid}, which does not look like secmsg, holds the pid in "
            f"{pidfile}: if no secmsg daemon runs, remove {pidfile}"
        )
    return (
        f"a daemon is already running with the pidfile {pidfile} (pid {pid}): "
        f"stop it (kill {pid}), {_second_instance(pidfile)}"
    )


def command_line(pid: int) -> list[str] | None:
    """
    The arguments process C{pid} runs with, or L{None} where they cannot
    be read: there is no procfs, or it hides other users' processes.
    """
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [
        argument.decode(errors="replace") for argument in raw.split(b"\0") if argument
    ]


def looks_like_daemon(arguments: Sequence[str]) -> bool:
    """
    Whether a process running with C{arguments} looks like a secmsg daemon:
    twistd (or C{python -m twisted}) with secmsg among its arguments (the
    plugin's name, or its configuration's path).  A kernel thread or a
    zombie has no arguments, and looks like none.
    """
    runner = "twisted" in arguments or any(
        os.path.basename(argument).startswith("twistd") for argument in arguments
    )
    return runner and any("secmsg" in argument for argument in arguments)


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
