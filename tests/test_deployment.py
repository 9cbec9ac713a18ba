"""
The daemon as an operator deploys it, in its own process: handed its
socket by systemd's socket activation, on a UNIX socket, and started as
root dropping to an unprivileged user.

Slow tests, as those of L{tests.test_daemon}, whose helpers they use.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.test_daemon import BIN, STARTUP_DEADLINE, Daemon, init_instance, twistd

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
UNPRIVILEGED = "nobody"


def free_port() -> int:
    """
    A loopback port no one listens on now, for a listener the test cannot
    ask for port 0 (systemd-socket-activate binds it itself).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class CommandDaemon(Daemon):
    """
    A daemon started by a command line of the test's own, rather than
    L{Daemon}'s C{twistd secmsg --port 0}.
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        directory: Path,
        command: list[str],
        listening: str,
    ) -> None:
        self.directory = directory
        self.log: list[str] = []
        self._terminated = False
        self._drain = None
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0
        )
        testcase.addCleanup(self.stop)
        self.listening = self.wait_for(listening)


def client_context(directory: Path, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=directory / "ca.pem")
    clients = directory / "clients"
    context.load_cert_chain(clients / f"{name}.pem", clients / f"{name}.key")
    return context


class SocketActivationTests(SynchronousTestCase):
    def setUp(self) -> None:
        if SOCKET_ACTIVATE is None:
            raise SkipTest("systemd-socket-activate is not installed (Debian: systemd)")
        self.directory = init_instance(self)

    def test_daemon_serves_the_socket_systemd_hands_it(self) -> None:
        """
        Under systemd-socket-activate, which binds the port and hands the
        daemon the listening socket as systemd does, C{--listen
        systemd:domain=INET:index=0} serves TLS on it: alice's certificate
        gets the greeting.
        """
        port = free_port()
        command = [
            SOCKET_ACTIVATE,
            # systemd always names what it hands over; Twisted insists.
            "--fdname=secmsg",
            "-l",
            f"127.0.0.1:{port}",
            *twistd(self.directory, "--listen", "systemd:domain=INET:index=0"),
        ]
        daemon = CommandDaemon(self, self.directory, command, "Listening on 127.0.0.1:")
        daemon.port = port
        with daemon.client("alice") as alice, alice.makefile("rb") as lines:
            self.assertIn(b"you are alice", lines.readline())
            alice.sendall(b"QUIT\n")
            self.assertEqual(lines.readline(), b"221 bye\n")
        daemon.wait_for(f"listening on 127.0.0.1:{port}")
        daemon.terminate()
        daemon.stop()
        self.assertIn("Server Shut Down.", daemon.log[-1])


class UnixSocketTests(SynchronousTestCase):
    def test_daemon_serves_tls_on_a_unix_socket(self) -> None:
        """
        C{--listen unix:PATH} listens there, logs the path, and speaks the
        same TLS with the same client certificates.
        """
        directory = init_instance(self)
        path = directory / "secmsg.sock"
        daemon = CommandDaemon(
            self,
            directory,
            twistd(directory, "--listen", f"unix:{path}"),
            f"listening on unix:{path}",
        )
        raw = socket.socket(socket.AF_UNIX)
        raw.settimeout(STARTUP_DEADLINE)
        raw.connect(str(path))
        context = client_context(directory, "bob")
        bob = context.wrap_socket(raw, server_hostname="localhost")
        with bob, bob.makefile("rb") as lines:
            self.assertIn(b"you are bob", lines.readline())
            bob.sendall(b"PING\n")
            self.assertEqual(lines.readline(), b"200 PONG\n")
        daemon.terminate()
        daemon.stop()
        self.assertFalse([line for line in daemon.log if "Traceback" in line])


class PrivilegeDropTests(SynchronousTestCase):
    """
    twistd --uid/--gid: the daemon starts as root and serves as an
    unprivileged user, who must own its state.
    """

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("dropping privileges needs the test to run as root")
        self.user = pwd.getpwnam(UNPRIVILEGED)
        self.directory = init_instance(self)
        # The user must reach the data directory inside the test's private
        # temporary directory; the keys are read before the drop.
        for path in (self.directory.parent, self.directory):
            path.chmod(0o755)

    def test_state_belongs_to_the_user_and_the_trail_rotates(self) -> None:
        """
        The data directory, database and audit trail (rotated files too)
        belong to the user dropped to; messages are stored; the trail goes
        on past its rotations with its chain intact.
        """
        daemon = CommandDaemon(
            self,
            self.directory,
            twistd(
                self.directory,
                "--port",
                "0",
                "--audit-rotate-bytes",
                "1024",
                twistd_flags=("--uid", UNPRIVILEGED, "--gid", str(self.user.pw_gid)),
            ),
            "listening on 127.0.0.1:",
        )
        daemon.port = int(daemon.listening.rsplit(":", 1)[1])
        daemon.wait_for(f"set uid/gid {self.user.pw_uid}/{self.user.pw_gid}")
        for number in range(1, 6):
            with daemon.client("alice") as alice, alice.makefile("rb") as lines:
                self.assertIn(b"you are alice", lines.readline())
                alice.sendall(b"MSG bob hello\nQUIT\n")
                self.assertEqual(lines.readline(), f"250 {number}\n".encode())
                self.assertEqual(lines.readline(), b"221 bye\n")
        data = self.directory / "data"
        owned = [data, data / "secmsg.db", data / "audit.log", data / "audit.log.1"]
        owned.append(data / "audit.key")
        # The database's -wal (and -shm) are there while it is open.
        owned += sorted(data.glob("secmsg.db-*"))
        self.assertIn(data / "secmsg.db-wal", owned)
        for path in owned:
            status = path.stat()
            self.assertEqual(
                (status.st_uid, status.st_gid),
                (self.user.pw_uid, self.user.pw_gid),
                path,
            )
        daemon.terminate()
        daemon.stop()
        rotated = sorted(data.glob("audit.log.*"), key=lambda p: -int(p.suffix[1:]))
        trail = [*rotated, data / "audit.log"]
        verify = subprocess.run(
            [BIN / "secmsg", "audit", "verify", *map(str, trail)],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(verify.returncode, 0, verify.stderr)
        # Ten logins and logouts, after the record that keys the trail.
        self.assertTrue(
            verify.stdout.startswith(
                "11 records, chain intact from the first record of the trail; "
                "keyed with key id "
            ),
            verify.stdout,
        )
