"""
Starting the daemon where it cannot serve, in its own process as
L{tests.test_daemon} runs it: a port another process holds.

Slow tests, as those of L{tests.test_daemon}, whose helpers they use.
"""

from __future__ import annotations

import socket
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.test_daemon import STARTUP_DEADLINE, init_instance, twistd


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
