"""Real PostgreSQL and Redis servers for the tests of secmsg's cluster mode.

The cluster keeps its messages in PostgreSQL and tells its daemons of them
over Redis's pub/sub, so its tests run against the real servers, never a
mock: each server here runs from Debian's packages (``make test`` installs
them) on a free loopback port, in a temporary directory of its own, and can
be halted or killed and started again on the same port, as the cluster's
tests do to a store or bus that goes away mid-test.

initdb runs once a run, into a template that each new server copies (half
a second, against initdb's one and a half); even so, most tests share one
server (``shared_postgres()``, started on first use and stopped when the
interpreter exits) and take a fresh database of it each
(``shared_postgres().new_database()``, a tenth of a second); a test that
halts or kills PostgreSQL starts a ``PostgresServer`` of its own.
Everything here blocks, so that both pytest and trial can call it from a
test case's ``setUp``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypedDict

import psycopg
from psycopg import sql

# How long a server may take to come up or go away: generous, since the
# whole suite shares two cores.
START_SECONDS = 30.0
STOP_SECONDS = 15.0
# The pause between two looks at a server that is not up yet.
POLL_SECONDS = 0.05

POSTGRES_ROOT = Path("/usr/lib/postgresql")
REDIS_SERVER = Path("/usr/bin/redis-server")
# initdb and postgres refuse to run as root; as root, the server runs as
# this user instead.
UNPRIVILEGED_USER = "nobody"
DATABASE = "secmsg"
SUPERUSER = "secmsg"


class ServerNotInstalled(RuntimeError):
    """A server's programs are missing: the test cannot run without them."""


class ServerDidNotStart(RuntimeError):
    """A server did not answer in time; the message ends with its log."""


def free_port() -> int:
    """A loopback port that nothing listens on now, for a server to take."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def process_table() -> dict[int, tuple[str, int]]:
    """Every process's state and parent, read from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, parent = text[text.rindex(")") + 2 :].split()[:2]
        table[int(stat.parent.name)] = (state, int(parent))
    return table


def live_processes(pids: Iterable[int]) -> list[int]:
    """Those of these processes that still run (a zombie has ended)."""
    table = process_table()
    return [pid for pid in pids if pid in table and table[pid][0] != "Z"]


def process_tree(root: int) -> list[int]:
    """A process and its descendants that still run.

    PostgreSQL's children each start a session of their own, so a process
    group would not find them; they outlive a kill of the postmaster for a
    moment, and a server started again before they are gone finds its
    shared memory still held.
    """
    table = process_table()
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        if pid in table and table[pid][0] != "Z":
            tree.append(pid)
            frontier += [child for child, (_, parent) in table.items() if parent == pid]
    return tree


class RunAs(TypedDict, total=False):
    """subprocess's arguments that run a program as another user."""

    user: str
    group: int
    extra_groups: list[int]


def as_user(user: str | None) -> RunAs:
    """subprocess's arguments that run a program as this user (None: as us)."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL each of these processes that has not ended yet."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class ServerProcess:
    """A server's process and its children, in a session of their own, so
    that a Ctrl-C of the tests does not reach them before their stop().

    Its output goes to a log file, whose tail explains a server that does
    not come up.
    """

    def __init__(self, arguments: list[str], log: Path, user: str | None) -> None:
        with log.open("ab") as output:
            self._process = subprocess.Popen(
                arguments,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=log.parent,
                start_new_session=True,
                **as_user(user),
            )
        self._log = log

    @property
    def running(self) -> bool:
        """Whether the main process has not ended yet."""
        return self._process.poll() is None

    def exited_within(self, seconds: float) -> bool:
        """Whether the process ends within these seconds (the poll's pause)."""
        try:
            self._process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def processes(self) -> list[int]:
        """The live processes of the server: its main one and its children."""
        return process_tree(self._process.pid)

    def end(self, signal_number: int) -> None:
        """Send the main process this signal (every process, for SIGKILL),
        and wait until every one is gone, killing any that lingers."""
        members = self.processes()
        if signal_number == signal.SIGKILL:
            kill_all(members)
        else:
            self._process.send_signal(signal_number)
        if not self.exited_within(STOP_SECONDS):
            kill_all(members)
            self._process.wait(timeout=STOP_SECONDS)
        deadline = time.monotonic() + STOP_SECONDS
        while live_processes(members):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"processes {live_processes(members)} outlived a kill"
                )
            time.sleep(POLL_SECONDS)

    def wait_until(self, answers: Callable[[], bool], what: str) -> None:
        """Poll ``answers`` until it is true, within START_SECONDS; a server
        that exits or stays silent is ended and fails with its log."""
        deadline = time.monotonic() + START_SECONDS
        while not answers():
            if self.exited_within(POLL_SECONDS):
                raise self._failure(f"{what} exited while starting")
            if time.monotonic() > deadline:
                self.end(signal.SIGKILL)
                raise self._failure(f"{what} did not answer in {START_SECONDS} s")

    def _failure(self, what: str) -> ServerDidNotStart:
        """The error for a server that did not come up, with its log's tail."""
        tail = self._log.read_text(errors="replace").splitlines()[-20:]
        return ServerDidNotStart(f"{what}; the end of {self._log}:\n" + "\n".join(tail))


class LoopbackServer:
    """A server on a free loopback port, in a temporary directory.

    The port is chosen once, so a server halted or killed starts again
    where its clients expect it.  Call ``stop()`` when done (with
    ``addCleanup`` before ``start()``, so that a server that fails to start
    is cleaned up too).
    """

    # What the server is called in its directory's and its log's names.
    name: str
    stop_signal = signal.SIGTERM

    def __init__(self, user: str | None = None) -> None:
        self.port = free_port()
        self.directory = owned_directory(self.name, user)
        self._user = user
        self._process: ServerProcess | None = None

    def processes(self) -> list[int]:
        """The server's live processes; none once it is stopped or killed."""
        return [] if self._process is None else self._process.processes()

    def kill(self) -> None:
        """Kill every process of the server at once, as a crash would; its
        directory stays, for ``start()`` again."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """Shut the server down if it runs and remove its directory."""
        self._end(self.stop_signal)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _launch(self, arguments: list[str], answers: Callable[[], bool]) -> None:
        """Run the server, logging in its directory, until it answers."""
        log = self.directory / f"{self.name}.log"
        self._process = ServerProcess(arguments, log, self._user)
        self._process.wait_until(answers, self.name)

    def _end(self, signal_number: int) -> None:
        """End the server with this signal if it runs, and its children."""
        if self._process is not None and self._process.running:
            self._process.end(signal_number)


def postgres_programs() -> Path:
    """The directory of the newest PostgreSQL server Debian installed, which
    keeps them off PATH in /usr/lib/postgresql/<major>/bin."""
    found = sorted(
        POSTGRES_ROOT.glob("*/bin/postgres"),
        key=lambda program: [int(part) for part in program.parts[-3].split(".")],
    )
    if not found:
        raise ServerNotInstalled(
            f"PostgreSQL's server is not installed (no {POSTGRES_ROOT}/*/bin/"
            "postgres): make test installs it, or apt-get install postgresql"
        )
    return found[-1].parent


def postgres_user() -> str | None:
    """Who PostgreSQL runs as: us, or an unprivileged user if we are root,
    since initdb and postgres refuse root."""
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


def owned_directory(prefix: str, user: str | None) -> Path:
    """A new temporary directory that belongs to this user (None: to us)."""
    directory = Path(tempfile.mkdtemp(prefix=f"secmsg-{prefix}-"))
    if user is not None:
        account = pwd.getpwnam(user)
        os.chown(directory, account.pw_uid, account.pw_gid)
    return directory


@functools.cache
def postgres_template() -> Path:
    """A directory whose data/ initdb made, once a run, for every server to
    copy: initdb takes most of a new server's start.  It goes at exit."""
    user = postgres_user()
    directory = owned_directory("postgres-template", user)
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    made = subprocess.run(
        [
            str(postgres_programs() / "initdb"),
            "--pgdata",
            str(directory / "data"),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--no-locale",
            "--encoding",
            "UTF8",
            "--no-instructions",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
        **as_user(user),
    )
    if made.returncode != 0:
        raise ServerDidNotStart(f"initdb failed:\n{made.stdout}{made.stderr}")
    return directory


class PostgresServer(LoopbackServer):
    """PostgreSQL with fsync on, as the cluster's store needs it, and small
    settings; its superuser is trusted on loopback, with no password.

    As root it runs as an unprivileged user (postgres_user).  Its database
    ``secmsg`` is made at the first start.
    """

    name = "postgres"
    # Fast shutdown: roll back what is open, checkpoint, exit.
    stop_signal = signal.SIGINT

    def __init__(self) -> None:
        self._programs = postgres_programs()
        super().__init__(postgres_user())
        self._names = itertools.count(1)

    @property
    def url(self) -> str:
        """The connection URL of the database ``secmsg``."""
        return self.database_url(DATABASE)

    def database_url(self, database: str) -> str:
        """The connection URL of a database of this server."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (made first if it is new) and wait until it
        accepts connections; a halted or killed one starts on its data."""
        data = self.directory / "data"
        new = not data.exists()
        if new:
            self._copy_template(data)
        self._launch(self._server_arguments(data), self._accepts_connections)
        if new:
            self._create_database(DATABASE)

    def halt(self) -> None:
        """Shut the server down, keeping its data for ``start()`` again."""
        self._end(self.stop_signal)

    def new_database(self) -> str:
        """A new empty database of this server, so that a test sees no other
        test's data: its connection URL."""
        name = f"test_{next(self._names)}"
        self._create_database(name)
        return self.database_url(name)

    def _copy_template(self, data: Path) -> None:
        """Make the server's data directory, as the user it runs as, from
        the run's template rather than initdb's second and a half."""
        subprocess.run(
            ["cp", "-a", str(postgres_template() / "data"), str(data)],
            cwd=self.directory,
            check=True,
            **as_user(self._user),
        )

    def _server_arguments(self, data: Path) -> list[str]:
        """postgres's command line: loopback only, its socket in its own
        directory, every commit on disk before it returns."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "fsync": "on",
            "synchronous_commit": "on",
            "shared_buffers": "16MB",
            "max_connections": "50",
        }
        arguments = [str(self._programs / "postgres"), "-D", str(data)]
        for name, value in settings.items():
            arguments += ["-c", f"{name}={value}"]
        return arguments

    def _accepts_connections(self) -> bool:
        """Whether the server lets a client in (not just its port open)."""
        try:
            with psycopg.connect(self.database_url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _create_database(self, name: str) -> None:
        """CREATE DATABASE, which cannot run inside a transaction."""
        url = self.database_url("postgres")
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            )


@functools.cache
def shared_postgres() -> PostgresServer:
    """One PostgreSQL for the tests of a run, started on first use and
    stopped when the interpreter exits.  Take a database of it with
    ``new_database()``; never halt or kill it."""
    server = PostgresServer()
    atexit.register(server.stop)
    server.start()
    return server


class RedisServer(LoopbackServer):
    """redis-server with no persistence, as the cluster's bus needs none:
    a killed one starts again empty, as a real one that lost its memory."""

    name = "redis"

    def __init__(self) -> None:
        if not REDIS_SERVER.exists():
            raise ServerNotInstalled(
                f"Redis is not installed (no {REDIS_SERVER}): make test installs "
                "it, or apt-get install redis-server"
            )
        super().__init__()

    @property
    def url(self) -> str:
        """The URL of the server's database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        arguments = [
            str(REDIS_SERVER),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        self._launch(arguments, self._answers_ping)

    def _answers_ping(self) -> bool:
        """Whether the server answers PING (not LOADING or a refusal)."""
        try:
            with socket.create_connection(
                ("127.0.0.1", self.port), timeout=2
            ) as client:
                client.sendall(b"PING\r\n")
                return client.recv(64).startswith(b"+PONG")
        except OSError:
            return False
