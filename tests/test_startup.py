"""
Starting the daemon where it cannot serve, in its own process as
L{tests.test_daemon} runs it: a port another process holds; and a
second instance beside the first, with ports of its own.

Slow tests, as those of L{tests.test_daemon}, whose helpers they use.
"""

from __future__ import annotations

import socket
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import temporary_directory
from tests.test_daemon import BIN, STARTUP_DEADLINE, init_instance, twistd
from tests.test_deployment import CommandDaemon, free_port

LISTENING = "listening on 127.0.0.1:"


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


class SecondInstanceTests(SynchronousTestCase):
    """
    A second daemon beside the first, as C{make run INSTANCE=dev2
    PORT=7501 ADMIN_PORT=7446} makes it.
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
