"""
Several daemons on one port, in their own processes as
L{tests.test_daemon} runs them: with C{--reuse-port} both listen on the
same port and admin port and either greets a client; without it, the
second stops with the one line of a port in use.

Slow tests, as those of L{tests.test_daemon}, whose helpers they use.
"""

from __future__ import annotations

import shutil
import signal
import ssl
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import temporary_directory
from tests.servers import free_port
from tests.test_daemon import Daemon, init_instance, twistd
from tests.test_startup import refusal_of

GREETING = b"200 secmsg "


def greeting(connection: ssl.SSLSocket) -> bytes:
    """
    The first line a daemon sends a client that has just connected.
    """
    with connection, connection.makefile("rb") as lines:
        return lines.readline()


class SharedPortTests(SynchronousTestCase):
    """
    Two daemons, each with an instance directory of its own (its own data
    directory and store) and the same CA and certificates, so that a
    client is greeted by whichever the kernel hands it to.
    """

    def setUp(self) -> None:
        self.first = init_instance(self)
        self.second = temporary_directory(self) / "second"
        shutil.copytree(self.first, self.second)
        self.port = free_port()

    def daemon(self, directory: Path, *flags: str) -> Daemon:
        return Daemon(self, directory, "--port", str(self.port), *flags)

    def test_daemons_with_reuse_port_share_the_port_and_admin_port(self) -> None:
        """
        Both start on the same port and admin port; a client is greeted
        while both listen, and still once the first has stopped, by the
        second, which held the port all along.
        """
        admin = str(free_port())
        daemons = [
            self.daemon(directory, "--reuse-port", "--admin-port", admin)
            for directory in (self.first, self.second)
        ]
        for daemon in daemons:
            daemon.wait_for(f"admin interface listening on https://127.0.0.1:{admin}/")
        self.assertEqual([daemon.port for daemon in daemons], [self.port] * 2)
        before = [greeting(daemons[0].client("alice")) for _ in range(4)]
        self.assertEqual(daemons[0].stop(), -signal.SIGTERM)
        after = greeting(daemons[1].client("alice"))
        self.assertEqual(
            [line.startswith(GREETING) for line in [*before, after]], [True] * 5
        )
        self.assertIn(b"you are alice", after)

    def test_daemon_without_reuse_port_cannot_join_one_with_it(self) -> None:
        """
        A port is shared only among sockets that all ask for it: a second
        daemon without --reuse-port stops with the line of a port in use.
        """
        self.daemon(self.first, "--reuse-port")
        refusal = refusal_of(self, twistd(self.second, "--port", str(self.port)))
        self.assertEqual(
            refusal,
            f"cannot listen on 127.0.0.1:{self.port}: address already in use; "
            "choose another with --port, or with port or listen in the config "
            "file",
        )

    def test_daemons_without_reuse_port_do_not_share(self) -> None:
        """
        Without reuse-port, as by default, a second daemon on a port one
        listens on stops with the line of a port in use.
        """
        self.daemon(self.first)
        refusal = refusal_of(self, twistd(self.second, "--port", str(self.port)))
        self.assertTrue(
            refusal.startswith(
                f"cannot listen on 127.0.0.1:{self.port}: address already in use; "
            ),
            refusal,
        )
