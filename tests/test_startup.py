"""
Starting the daemon where it cannot serve, in its own process as
L{tests.test_daemon} runs it: a port another process holds (with an
older version's database, which it must leave as it was), a pidfile a
running daemon holds, one that names the daemon itself or another
program, and one that a killed daemon left behind.

Slow tests, as those of L{tests.test_daemon}, whose helpers they use.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon import pidfile as pidfile_module
from secmsg.daemon.pidfile import another_instance, looks_like_daemon, pidfile_problem
from secmsg.daemon.store.database import DATABASE_NAME
from tests.harness import temporary_directory
from tests.test_daemon import BIN, STARTUP_DEADLINE, init_instance, twistd
from tests.test_deployment import CommandDaemon, free_port
from tests.test_store import contents, make_version_1

LISTENING = "listening on 127.0.0.1:"


def unrelated_process(testcase: SynchronousTestCase) -> subprocess.Popen[bytes]:
    """
    A live process that is not secmsg, killed and reaped at cleanup.
    """
    process = subprocess.Popen(["sleep", "600"])
    testcase.addCleanup(process.wait)
    testcase.addCleanup(process.kill)
    return process


def refusal_of(testcase: SynchronousTestCase, command: list[str]) -> str:
    """
    Run a daemon that must refuse to start, and return its one line of
    refusal, checking that it exits with status 1 and no traceback.
    """
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=STARTUP_DEADLINE,
        check=False,
    )
    output = result.stdout + result.stderr
    testcase.assertEqual(result.returncode, 1, output)
    testcase.assertNotIn("Traceback", output)
    refusals = [
        line for line in output.splitlines() if "secmsg: cannot start: " in line
    ]
    testcase.assertEqual(len(refusals), 1, output)
    return refusals[0].split("secmsg: cannot start: ", 1)[1]


class TakenPortTests(SynchronousTestCase):
    """
    A port another process holds stops the daemon with one line naming the
    address and the setting that moves it, before it writes anything.
    """

    def setUp(self) -> None:
        self.directory = init_instance(self)
        # A fresh data directory, which must stay empty.
        self.data = self.directory / "data"
        self.data.mkdir(mode=0o700)
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        self.taken = holder.getsockname()[1]

    def test_taken_port_is_named_with_its_fix_and_nothing_is_written(self) -> None:
        """
        The line names the address, why, and --port or the config's port
        and listen; no database, audit trail or key is left behind.
        """
        refusal = refusal_of(self, twistd(self.directory, "--port", str(self.taken)))
        self.assertEqual(
            refusal,
            f"cannot listen on 127.0.0.1:{self.taken}: address already in use; "
            "choose another with --port, or with port or listen in the config "
            "file",
        )
        self.assertEqual(sorted(self.data.iterdir()), [])

    def test_taken_admin_port_is_named_with_its_fix_and_nothing_is_written(
        self,
    ) -> None:
        """
        The admin interface's port is bound before anything is written
        too, and its refusal names its own settings.
        """
        refusal = refusal_of(
            self,
            twistd(self.directory, "--port", "0", "--admin-port", str(self.taken)),
        )
        self.assertEqual(
            refusal,
            f"cannot listen on 127.0.0.1:{self.taken}: address already in use; "
            "choose another with --admin-port, or with admin-port or "
            "admin-listen in the config file",
        )
        self.assertEqual(sorted(self.data.iterdir()), [])

    def test_taken_port_leaves_an_older_database_as_it_was(self) -> None:
        """
        A new daemon that cannot listen leaves an older version's database
        byte for byte as it was, neither made WAL nor upgraded, with no
        backup beside it: the version it came from still opens it.
        """
        make_version_1(self.data / DATABASE_NAME, wal=True)
        before = contents(self.data)
        refusal = refusal_of(self, twistd(self.directory, "--port", str(self.taken)))
        self.assertTrue(
            refusal.startswith(f"cannot listen on 127.0.0.1:{self.taken}: "), refusal
        )
        self.assertEqual(contents(self.data), before)

    def test_daemon_in_the_background_reports_the_refusal_and_exits(self) -> None:
        """
        Started in the background, the daemon's refusal reaches the
        process twistd left waiting, which shows it and exits 1 rather
        than waiting for ever; the whole line is in the log file, and the
        pidfile is gone with the daemon.
        """
        log = self.directory / "twistd.log"
        pidfile = self.directory / "secmsg.pid"
        result = subprocess.run(
            [
                str(BIN / "twistd"),
                *("--pidfile", str(pidfile)),
                *("--logfile", str(log)),
                *("secmsg", "--config", str(self.directory / "secmsg.toml")),
                *("--port", str(self.taken)),
            ],
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE,
            check=False,
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(
            f"An error has occurred: b'cannot listen on 127.0.0.1:{self.taken}: "
            "address already in use; choose another",
            result.stderr,
        )
        self.assertIn(
            f"secmsg: cannot start: cannot listen on 127.0.0.1:{self.taken}: "
            "address already in use; choose another with --port, or with port "
            "or listen in the config file\n",
            log.read_text(),
        )
        self.assertEqual(sorted(self.data.iterdir()), [])
        self.assertFalse(pidfile.exists())


class PidfileTests(SynchronousTestCase):
    """
    twistd's pidfile, as C{make run} gives it: a running daemon's stops a
    second one with words that say what to do; a dead one's does not.
    """

    def setUp(self) -> None:
        self.directory = init_instance(self)
        self.pidfile = self.directory / "secmsg.pid"
        self.command = twistd(
            self.directory, "--port", "0", twistd_flags=("--pidfile", str(self.pidfile))
        )

    def test_second_daemon_on_a_running_daemons_pidfile_says_what_runs(self) -> None:
        """
        The refusal names the pidfile and the running daemon's pid, and
        how to run a second instance, not twistd's advice about
        --logfile; the first daemon goes on serving.
        """
        first = CommandDaemon(self, self.directory, self.command, LISTENING)
        refusal = refusal_of(self, self.command)
        self.assertTrue(
            refusal.startswith(
                f"a daemon is already running with the pidfile {self.pidfile} "
                f"(pid {first.process.pid}): stop it (kill {first.process.pid}), "
                "or give a second daemon an instance of its own"
            ),
            refusal,
        )
        other = another_instance(self.directory.resolve().name)
        self.assertIn(f"make run INSTANCE={other} PORT=7501 ADMIN_PORT=7446", refusal)
        self.assertNotIn("--logfile", refusal)
        self.assertIsNone(first.process.poll())
        self.assertEqual(int(self.pidfile.read_text()), first.process.pid)

    def test_pidfile_naming_the_daemon_itself_does_not_stop_it(self) -> None:
        """
        In a container the daemon is pid 1 at every start, and the last
        run's pidfile names it: it starts, and the pidfile is its own.
        """
        # The shell writes its own pid, which twistd then runs as.
        command = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.pidfile)]
        daemon = CommandDaemon(
            self, self.directory, [*command, *self.command], LISTENING
        )
        self.assertEqual(int(self.pidfile.read_text()), daemon.process.pid)

    def test_pidfile_naming_another_program_is_not_advised_killed(self) -> None:
        """
        A pidfile naming a live process that is not secmsg (its pid reused
        after a reboot) is refused saying to remove the pidfile, never to
        kill the process; both are left as they were.
        """
        other = unrelated_process(self)
        self.pidfile.write_text(f"{other.pid}\n")
        refusal = refusal_of(self, self.command)
        self.assertEqual(
            refusal,
            f"process {other.pid}, which does not look like secmsg, holds the pid "
            f"in {self.pidfile}: if no secmsg daemon runs, remove {self.pidfile}",
        )
        self.assertNotIn("kill", refusal)
        self.assertIsNone(other.poll())
        self.assertEqual(self.pidfile.read_text(), f"{other.pid}\n")

    def test_pidfile_of_a_killed_daemon_does_not_stop_the_next(self) -> None:
        """
        After a kill -9 the pidfile stays, naming a process that is gone:
        the next daemon starts all the same, and the pidfile is its own.
        """
        killed = CommandDaemon(self, self.directory, self.command, LISTENING)
        killed.process.kill()
        killed.process.wait(timeout=STARTUP_DEADLINE)
        self.assertEqual(int(self.pidfile.read_text()), killed.process.pid)
        second = CommandDaemon(self, self.directory, self.command, LISTENING)
        self.assertEqual(int(self.pidfile.read_text()), second.process.pid)

    def test_pidfile_holding_no_pid_is_named_with_its_fix(self) -> None:
        """
        An empty pidfile, as a crash while writing it leaves, is refused
        saying to remove it, and is left as it was.
        """
        self.pidfile.write_text("")
        refusal = refusal_of(self, self.command)
        self.assertEqual(
            refusal,
            f"the pidfile {self.pidfile} holds no process id, as a crash while "
            "writing it leaves it; if no daemon runs with it, remove it",
        )
        self.assertEqual(self.pidfile.read_text(), "")


class SecondInstanceTests(SynchronousTestCase):
    """
    A second daemon beside the first, as the refusal and C{make run
    INSTANCE=dev2 PORT=7501 ADMIN_PORT=7446} make it.
    """

    def test_instance_made_with_its_ports_serves_beside_the_first(self) -> None:
        """
        secmsg init --port --admin-port writes the ports in the config, and
        a daemon run from it with its own pidfile and no flags listens on
        them while the first instance's daemon runs.
        """
        first = init_instance(self)
        CommandDaemon(
            self,
            first,
            twistd(
                first,
                "--port",
                "0",
                twistd_flags=("--pidfile", str(first / "secmsg.pid")),
            ),
            LISTENING,
        )
        second = temporary_directory(self) / "dev2"
        port, admin_port = free_port(), free_port()
        made = subprocess.run(
            [
                BIN / "secmsg",
                "init",
                str(second),
                *("--port", str(port), "--admin-port", str(admin_port)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertIn(f"secmsg connect localhost:{port} --instance", made.stdout)
        config = (second / "secmsg.toml").read_text()
        self.assertIn(f"\nport = {port}\n", config)
        self.assertIn(f"\nadmin-port = {admin_port}\n", config)
        daemon = CommandDaemon(
            self,
            second,
            twistd(second, twistd_flags=("--pidfile", str(second / "secmsg.pid"))),
            f"{LISTENING}{port}",
        )
        daemon.wait_for(f"admin interface listening on https://127.0.0.1:{admin_port}/")

    def test_init_refuses_what_is_not_a_port(self) -> None:
        """
        A port out of range is refused, saying what a port is, and no
        instance is made.
        """
        directory = temporary_directory(self) / "dev2"
        for flag in ("--port", "--admin-port"):
            with self.subTest(flag=flag):
                result = subprocess.run(
                    [BIN / "secmsg", "init", str(directory), flag, "65536"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(
                    "a port is a number from 1 to 65535, not '65536'", result.stderr
                )
                self.assertFalse(directory.exists())


class PidfileProblemTests(SynchronousTestCase):
    """
    The check behind the refusal, without a daemon.
    """

    def setUp(self) -> None:
        self.pidfile = temporary_directory(self) / "secmsg.pid"

    def test_advice_never_names_the_instance_already_running(self) -> None:
        """
        The second instance the refusal suggests is named after the one
        running, never the same: dev beside dev, dev3 beside dev2.
        """
        self.assertEqual(
            [another_instance(name) for name in ("dev", "dev2", "dev9", "7", "")],
            ["dev2", "dev3", "dev10", "dev8", "dev2"],
        )

    def test_no_pidfile_is_no_problem(self) -> None:
        """
        Where there is no pidfile a daemon starts.
        """
        self.assertIsNone(pidfile_problem(self.pidfile))

    def test_pidfile_of_this_process_is_no_problem(self) -> None:
        """
        A pidfile naming the process that checks it is an earlier run's,
        under the same pid: no daemon runs with it.
        """
        self.pidfile.write_text(f"{os.getpid()}\n")
        self.assertIsNone(pidfile_problem(self.pidfile))

    def fake_command_line(self, pid: int, arguments: list[bytes] | None) -> None:
        """
        Read command lines from a procfs of the test's, giving C{pid}
        C{arguments} (L{None}: none, as procfs hides it).
        """
        proc = temporary_directory(self)
        self.patch(pidfile_module, "PROC", proc)
        if arguments is not None:
            (proc / str(pid)).mkdir()
            (proc / str(pid) / "cmdline").write_bytes(b"\0".join(arguments) + b"\0")

    def test_pidfile_of_a_live_daemon_says_to_stop_it(self) -> None:
        """
        A live process running twistd secmsg is a daemon running, to stop.
        """
        pid = unrelated_process(self).pid
        self.fake_command_line(
            pid, [b"/venv/bin/python", b"/venv/bin/twistd", b"secmsg"]
        )
        self.pidfile.write_text(f"{pid}\n")
        problem = str(pidfile_problem(self.pidfile))
        self.assertTrue(
            problem.startswith(
                f"a daemon is already running with the pidfile {self.pidfile} "
                f"(pid {pid}): stop it (kill {pid})"
            ),
            problem,
        )

    def test_pidfile_of_another_program_says_to_remove_it(self) -> None:
        """
        A live process that is not secmsg (a sleep) is named as such, with
        the advice to remove the pidfile and none to kill it.
        """
        pid = unrelated_process(self).pid
        self.pidfile.write_text(f"{pid}\n")
        self.assertEqual(
            pidfile_problem(self.pidfile),
            f"process {pid}, which does not look like secmsg, holds the pid in "
            f"{self.pidfile}: if no secmsg daemon runs, remove {self.pidfile}",
        )

    def test_process_that_cannot_be_told_is_not_called_a_daemon(self) -> None:
        """
        Where the command line cannot be read, the refusal says what to do
        in either case, and calls the process no daemon.
        """
        pid = unrelated_process(self).pid
        self.fake_command_line(pid, None)
        self.pidfile.write_text(f"{pid}\n")
        problem = str(pidfile_problem(self.pidfile))
        self.assertTrue(
            problem.startswith(
                f"process {pid} holds the pid in {self.pidfile}: if it is a "
                f"secmsg daemon, stop it (kill {pid}), or give a second daemon"
            ),
            problem,
        )
        self.assertTrue(
            problem.endswith(f"; if no secmsg daemon runs, remove {self.pidfile}"),
            problem,
        )

    def test_what_looks_like_a_daemon(self) -> None:
        """
        twistd or python -m twisted running secmsg looks like a daemon;
        another program, or another twistd, or no arguments, does not.
        """
        cases = [
            (
                ["/opt/secmsg/bin/python", "/opt/secmsg/bin/twistd", "-n", "secmsg"],
                True,
            ),
            (["twistd", "--pidfile=", "secmsg", "--config", "/etc/x.toml"], True),
            (["python3", "-m", "twisted", "secmsg"], True),
            (["twistd", "-n", "web", "--path", "/srv"], False),
            (["sleep", "600"], False),
            (["/home/me/secmsg/.venv/bin/python", "-m", "pytest"], False),
            ([], False),
        ]
        for arguments, expected in cases:
            with self.subTest(arguments=arguments):
                self.assertEqual(looks_like_daemon(arguments), expected)

    def test_pid_of_zero_or_below_is_no_pid(self) -> None:
        """
        0 and -1 would name process groups to a signal, not one daemon.
        """
        for text in ("0", "-1", "twistd"):
            with self.subTest(text=text):
                self.pidfile.write_text(text)
                self.assertIn("holds no process id", str(pidfile_problem(self.pidfile)))

    def test_unreadable_pidfile_says_why(self) -> None:
        """
        A pidfile that is a directory cannot be read, and the check says so.
        """
        Path(self.pidfile).mkdir()
        self.assertIn(
            f"cannot read the pidfile {self.pidfile}: ",
            str(pidfile_problem(self.pidfile)),
        )
