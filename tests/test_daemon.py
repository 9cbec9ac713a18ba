"""
The real daemon, as README promises it: C{secmsg init}, then C{twistd -n
secmsg} in its own process on a loopback port, spoken to with
C{openssl s_client} and Python's ssl module.

These are the slow tests (a few seconds each); everything they cover in
depth is tested in memory elsewhere.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.harness import next_but_presence, temporary_directory

BIN = Path(sys.executable).parent
STARTUP_DEADLINE = 30.0
"""Seconds a daemon may take to say it listens; a generous bound, not a timing."""


def init_instance(testcase: SynchronousTestCase) -> Path:
    """
    Run C{secmsg init} into a fresh directory and return it.
    """
    directory = temporary_directory(testcase) / "instance"
    result = subprocess.run(
        [BIN / "secmsg", "init", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    testcase.assertEqual(result.returncode, 0, result.stderr)
    return directory


def lift_rate(directory: Path) -> None:
    """
    Give every role of an instance's policy a rate no test reaches, for
    tests that stream as fast as the daemon takes commands.
    """
    policy = directory / "policy.toml"
    text = policy.read_text()
    assert "\nrate = 20\n" in text, "secmsg init's policy sets no rate to lift"
    policy.write_text(text.replace("\nrate = 20\n", "\nrate = 1e9\n"))


def twistd(
    directory: Path, *flags: str, twistd_flags: tuple[str, ...] = ()
) -> list[str]:
    """
    The command line of a daemon in the foreground on C{directory}'s
    config, with C{twistd_flags} for twistd itself (C{--uid}, say).
    """
    return [
        str(BIN / "twistd"),
        "--nodaemon",
        "--pidfile=",
        *twistd_flags,
        "secmsg",
        "--config",
        str(directory / "secmsg.toml"),
        *flags,
    ]


class Daemon:
    """
    A daemon process on an ephemeral loopback port, stopped at cleanup.
    """

    def __init__(
        self, testcase: SynchronousTestCase, directory: Path, *flags: str
    ) -> None:
        self.directory = directory
        self.log: list[str] = []
        self._terminated = False
        self._drain: threading.Thread | None = None
        self.process = subprocess.Popen(
            twistd(directory, "--port", "0", *flags),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Unbuffered, so that select() sees every line not yet read.
            bufsize=0,
        )
        testcase.addCleanup(self.stop)
        line = self.wait_for("listening on 127.0.0.1:")
        self.port = int(line.rsplit(":", 1)[1])

    def wait_for(self, text: str) -> str:
        """
        Read the daemon's log until a line holds C{text}; fail past a
        generous deadline rather than hang.
        """
        deadline = time.monotonic() + STARTUP_DEADLINE
        stream = self.process.stdout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stream], [], [], deadline - time.monotonic())
            if not ready:
                break
            raw = stream.readline()
            if not raw:
                break
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            if text in self.shown(line):
                return self.shown(line)
        raise AssertionError(f"daemon never logged {text!r}; log: {self.log}")

    def shown(self, line: str) -> str:
        """
        A line of the log as L{wait_for} reads it and returns it: as
        written, for the text log.
        """
        return line

    def drain_log(self) -> None:
        """
        Read the rest of the log in a thread from now on, for a test that
        makes the daemon log more than a pipe holds while it waits for
        something else; L{stop} then waits for that thread.
        """

        def read() -> None:
            with self.process.stdout as stream:
                for raw in stream:
                    self.log.append(raw.decode("utf-8", "replace").rstrip("\n"))

        self._drain = threading.Thread(target=read, daemon=True)
        self._drain.start()

    def terminate(self) -> None:
        """
        Send SIGTERM once; a second one while twistd shuts down would make
        it try to stop a reactor that is already stopping.
        """
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """
        Stop the daemon if it runs, collect the rest of its log, and return
        its exit status.
        """
        self.terminate()
        if self._drain is not None:
            self._drain.join(STARTUP_DEADLINE)
        elif not self.process.stdout.closed:
            with self.process.stdout as stream:
                rest = stream.read().decode("utf-8", "replace")
            self.log.extend(rest.splitlines())
        try:
            return self.process.wait(timeout=STARTUP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def client(self, name: str) -> ssl.SSLSocket:
        """
        A TLS connection as C{name}, verifying the server as localhost.
        """
        context = ssl.create_default_context(cafile=self.directory / "ca.pem")
        clients = self.directory / "clients"
        context.load_cert_chain(clients / f"{name}.pem", clients / f"{name}.key")
        raw = socket.create_connection(
            ("127.0.0.1", self.port), timeout=STARTUP_DEADLINE
        )
        return context.wrap_socket(raw, server_hostname="localhost")

    def s_client(self, *certificate: str, stdin: str) -> str:
        """
        The README's openssl s_client command line, fed C{stdin}.
        """
        result = subprocess.run(
            [
                "openssl",
                "s_client",
                "-quiet",
                "-connect",
                f"127.0.0.1:{self.port}",
                *certificate,
                "-CAfile",
                str(self.directory / "ca.pem"),
                "-verify_return_error",
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE,
            check=False,
        )
        return result.stdout


class DaemonTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            raise SkipTest("openssl is not installed")
        self.directory = init_instance(self)
        self.daemon = Daemon(self, self.directory)

    def test_openssl_s_client_logs_in_as_readme_says(self) -> None:
        """
        The README's command line with alice's certificate gets the greeting
        and answers.
        """
        clients = self.directory / "clients"
        out = self.daemon.s_client(
            "-cert",
            str(clients / "alice.pem"),
            "-key",
            str(clients / "alice.key"),
            stdin="PING\nQUIT\n",
        )
        self.assertEqual(
            out.splitlines(),
            [
                "200 secmsg 0.1.0 ready; you are alice (roles: user)"
                "; protocol 1.0; capabilities store,ack-upto,history,"
                "rooms,broadcast,presence"
                "; rate 20/s, burst 60, 60 left",
                "200 PONG",
                "221 bye",
            ],
        )

    def test_old_protocols_and_weak_ciphers_refused(self) -> None:
        """
        TLS 1.1 is refused, and so are TLS 1.2 suites without forward
        secrecy or without AEAD; a forward-secret AEAD suite gets in.
        """
        clients = self.directory / "clients"
        alice = [
            "-cert",
            str(clients / "alice.pem"),
            "-key",
            str(clients / "alice.key"),
        ]
        for flags, reason in [
            (["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], "unsupported protocol"),
            (["-tls1_2", "-cipher", "AES128-GCM-SHA256"], "no shared cipher"),
            (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"], "no shared cipher"),
        ]:
            self.assertNotIn(
                "secmsg", self.daemon.s_client(*alice, *flags, stdin="PING\n")
            )
            self.assertIn(reason, self.daemon.wait_for("refused handshake"))
        out = self.daemon.s_client(
            *alice,
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            stdin="PING\nQUIT\n",
        )
        self.assertIn("200 PONG", out)

    def test_no_certificate_is_refused_and_logged(self) -> None:
        """
        s_client without a certificate gets no greeting, and the daemon logs
        the refusal with its reason.
        """
        out = self.daemon.s_client(stdin="PING\n")
        self.assertNotIn("secmsg", out)
        line = self.daemon.wait_for("refused handshake")
        self.assertIn("no certificate", line)

    def test_users_talk_and_shutdown_says_closed(self) -> None:
        """
        alice's MSG reaches bob; at SIGTERM bob's session gets CLOSED with
        the reason before the daemon exits cleanly.
        """
        bob, alice = self.daemon.client("bob"), self.daemon.client("alice")
        # A socket's makefile holds the socket open until it is closed too.
        with bob, alice, bob.makefile("rb") as bob_lines, alice.makefile("rb") as lines:
            self.assertIn(b"you are bob", bob_lines.readline())
            self.assertIn(b"you are alice", lines.readline())
            alice.sendall(b"MSG bob hello bob\n")
            self.assertEqual(lines.readline(), b"250 1\n")
            self.assertRegex(
                next_but_presence(bob_lines),
                rb"^MSG 1 \d{4}-\d\d-\d\dT[\d:]{8}Z alice hello bob\n$",
            )
            self.daemon.terminate()
            # Neither hears the other go offline: at shutdown all are going.
            self.assertEqual(bob_lines.readline(), b"CLOSED server shutting down\n")
            self.assertEqual(lines.readline(), b"CLOSED server shutting down\n")
        # twistd ends itself with the signal it was stopped by.
        self.assertEqual(self.daemon.stop(), -signal.SIGTERM)
        self.assertIn("Server Shut Down.", self.daemon.log[-1])
        self.assertFalse(
            [line for line in self.daemon.log if "Traceback" in line],
            "\n".join(self.daemon.log),
        )

    def test_audit_trail_answers_who_did_what(self) -> None:
        """
        The real daemon's audit trail, 0600 in its data directory with its
        0600 key, records that it was keyed, alice's login, her denied KICK
        and her logout, never her message; the daemon logs the trail's head
        at shutdown, and C{secmsg audit verify --head} finds the chain
        intact up to that head.
        """
        with self.daemon.client("alice") as alice, alice.makefile("rb") as lines:
            self.assertIn(b"you are alice", lines.readline())
            alice.sendall(b"KICK bob\nMSG bob words for bob only\nQUIT\n")
            self.assertTrue(lines.readline().startswith(b"403 KICK not permitted"))
            self.assertEqual(lines.readline(), b"250 1\n")
            self.assertEqual(lines.readline(), b"221 bye\n")
        self.daemon.stop()
        trail = self.directory / "data" / "audit.log"
        self.assertEqual(stat.S_IMODE(trail.stat().st_mode), 0o600)
        key = self.directory / "data" / "audit.key"
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        self.assertNotIn(b"words for bob", trail.read_bytes())
        events = [json.loads(line) for line in trail.read_text().splitlines()]
        self.assertEqual(
            [(e["event"], e.get("identity")) for e in events],
            [
                ("trail_keyed", None),
                ("login", "alice"),
                ("denied", "alice"),
                ("logout", "alice"),
            ],
        )
        self.assertEqual(events[2]["rule"], "not granted by role user")
        self.assertEqual(events[1]["peer"], events[3]["peer"])
        (head,) = [
            line.partition("audit trail head ")[2].split()[0]
            for line in self.daemon.log
            if "audit trail head 4:" in line
        ]
        verify = subprocess.run(
            [BIN / "secmsg", "audit", "verify", "--head", head, str(trail)],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(verify.returncode, 0, verify.stderr)
        self.assertEqual(
            verify.stdout.splitlines(),
            [
                "4 records, chain intact from the first record of the trail; "
                f"keyed with key id {events[0]['key']}",
                "reaches the logged head 4",
            ],
        )
        self.assertNotIn(key.read_bytes().hex(), "\n".join(self.daemon.log))


class AdminInterfaceTests(SynchronousTestCase):
    """
    The README's promise for the admin interface, with curl against the
    real daemon.
    """

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        self.directory = init_instance(self)
        self.daemon = Daemon(self, self.directory, "--admin-port", "0")
        line = self.daemon.wait_for("admin interface listening on https://")
        self.admin_port = int(line.rsplit(":", 1)[1].rstrip("/"))

    def curl(self, *arguments: str, path: str = "/v1/sessions") -> tuple[int, dict]:
        result = subprocess.run(
            [
                "curl",
                "--silent",
                "--write-out",
                "\n%{http_code}",
                *arguments,
                "--cacert",
                str(self.directory / "ca.pem"),
                f"https://localhost:{self.admin_port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE,
            check=False,
        )
        body, _, status = result.stdout.rpartition("\n")
        return int(status), json.loads(body)

    def test_curl_lists_sessions_with_a_certificate_and_gets_401_without(self) -> None:
        """
        curl with the admin's certificate lists the live sessions; without
        one it gets 401 and words; a user's may not kick: 403.
        """
        clients = self.directory / "clients"
        with self.daemon.client("alice") as alice, alice.makefile("rb") as lines:
            self.assertIn(b"you are alice", lines.readline())
            status, body = self.curl(
                "--cert",
                str(clients / "admin.pem"),
                "--key",
                str(clients / "admin.key"),
            )
            self.assertEqual(status, 200)
            self.assertEqual([s["identity"] for s in body["sessions"]], ["alice"])
            status, body = self.curl()
            self.assertEqual(status, 401)
            self.assertIn("client certificate is required", body["detail"])
            status, body = self.curl(
                "--cert",
                str(clients / "bob.pem"),
                "--key",
                str(clients / "bob.key"),
                "--json",
                '{"identity": "alice"}',
                path="/v1/kick",
            )
            self.assertEqual(status, 403)
            self.assertEqual(
                body["detail"], "KICK not permitted for bob: not granted by role user"
            )


class HeldConnections:
    """
    Plain TCP connections to a port, held open without a byte sent, and
    opened again as the daemon drops them: what anyone without a
    certificate can do to an address.
    """

    COUNT = 200
    """More than any budget for connections not logged in from one address,
    and more than the old bound on one address's connections in all."""

    def __init__(self, testcase: SynchronousTestCase, port: int) -> None:
        self._port = port
        self._sockets: list[socket.socket] = []
        testcase.addCleanup(self.close)
        self.reopened = 0
        self.top_up()

    def top_up(self) -> None:
        """
        Open as many as were dropped, so that COUNT are held again.
        """
        held = []
        for held_socket in self._sockets:
            if _dropped(held_socket):
                held_socket.close()
                self.reopened += 1
            else:
                held.append(held_socket)
        while len(held) < self.COUNT:
            held.append(socket.create_connection(("127.0.0.1", self._port)))
        self._sockets = held

    def close(self) -> None:
        for held_socket in self._sockets:
            held_socket.close()


def _dropped(connection: socket.socket) -> bool:
    """
    Whether the other end has closed or reset a connection that sends us
    nothing otherwise.
    """
    ready, _, _ = select.select([connection], [], [], 0)
    if not ready:
        return False
    try:
        return not connection.recv(1)
    except ConnectionResetError:
        return True


class LockoutTests(SynchronousTestCase):
    """
    Connections that have not logged in, however many one address holds,
    cannot keep a client with a certificate from logging in from it.
    """

    def setUp(self) -> None:
        self.directory = init_instance(self)
        self.daemon = Daemon(self, self.directory, "--admin-port", "0")
        line = self.daemon.wait_for("admin interface listening on https://")
        self.admin_port = int(line.rsplit(":", 1)[1].rstrip("/"))
        self.daemon.drain_log()

    def test_held_connections_do_not_lock_an_address_out(self) -> None:
        """
        With the address holding as many idle connections as it opens, on
        the line port and the admin port, alice logs in and asks the admin
        interface, every time.
        """
        line_flood = HeldConnections(self, self.daemon.port)
        admin_flood = HeldConnections(self, self.admin_port)
        logins = requests = 0
        for _ in range(5):
            with self.daemon.client("alice") as alice, alice.makefile("rb") as lines:
                if b"you are alice" in lines.readline():
                    logins += 1
            if self.admin_request("alice") == 200:
                requests += 1
            line_flood.top_up()
            admin_flood.top_up()
        self.assertEqual((logins, requests), (5, 5))
        # The idle connections were the ones displaced to make room.
        self.assertGreater(line_flood.reopened, 0)
        self.assertGreater(admin_flood.reopened, 0)

    def admin_request(self, name: str) -> int:
        """
        The status of C{GET /healthz} as C{name}, or 0 without an answer.
        """
        context = ssl.create_default_context(cafile=self.directory / "ca.pem")
        clients = self.directory / "clients"
        context.load_cert_chain(clients / f"{name}.pem", clients / f"{name}.key")
        raw = socket.create_connection(
            ("127.0.0.1", self.admin_port), timeout=STARTUP_DEADLINE
        )
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            answer = tls.makefile("rb").readline()
        return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else 0


class StartupRefusalTests(SynchronousTestCase):
    """
    A daemon that cannot start says why in one line, with no traceback.
    """

    def setUp(self) -> None:
        self.directory = init_instance(self)

    def assertRefusesToStart(self, words: str, *flags: str) -> None:
        result = subprocess.run(
            twistd(self.directory, "--port", "0", *flags),
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE,
            check=False,
        )
        self.assertEqual(result.returncode, 1)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        # Before twistd starts logging the line goes to stderr; after, twistd
        # logs what is written to stderr, so it is one log line on stdout.
        refusals = [
            line for line in output.splitlines() if "secmsg: cannot start: " in line
        ]
        self.assertEqual(len(refusals), 1, output)
        self.assertIn(words, refusals[0])

    def test_missing_key(self) -> None:
        """
        A key file that is not there is named, with the reason.
        """
        (self.directory / "servers" / "localhost.key").unlink()
        self.assertRefusesToStart(
            "localhost.key: cannot read: No such file or directory"
        )

    def test_key_does_not_match_certificate(self) -> None:
        """
        A key that belongs to another certificate is refused.
        """
        self.assertRefusesToStart(
            "key does not match the certificate",
            "--key",
            str(self.directory / "clients" / "alice.key"),
        )

    def test_bad_policy(self) -> None:
        """
        An invalid policy is refused with what is wrong in it.
        """
        (self.directory / "policy.toml").write_text('[roles.a]\ninherits = ["a"]\n')
        self.assertRefusesToStart("policy.toml: inheritance cycle: a -> a")

    def test_unknown_setting_in_config(self) -> None:
        """
        A misspelt setting in the config file is refused, not ignored.
        """
        config = self.directory / "secmsg.toml"
        config.write_text(config.read_text() + 'crl-file = "x"\n')
        self.assertRefusesToStart("unknown setting crl-file")

    def test_port_in_use(self) -> None:
        """
        A port another process holds is named in the refusal.
        """
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = str(holder.getsockname()[1])
            self.assertRefusesToStart("cannot listen", "--port", port)


class InitTests(SynchronousTestCase):
    def test_private_keys_are_owner_only(self) -> None:
        """
        Every private key secmsg init writes is mode 0600.
        """
        directory = init_instance(self)
        keys = sorted(directory.rglob("*.key"))
        self.assertEqual(
            [key.name for key in keys],
            ["ca.key", "admin.key", "alice.key", "bob.key", "localhost.key"],
        )
        for key in keys:
            self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600, key)

    def test_init_refuses_to_overwrite(self) -> None:
        """
        A second init into the same directory changes nothing and says why.
        """
        directory = init_instance(self)
        before = (directory / "ca.pem").read_bytes()
        result = subprocess.run(
            [BIN / "secmsg", "init", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn(
            "already exists; secmsg init writes a new instance", result.stderr
        )
        self.assertEqual((directory / "ca.pem").read_bytes(), before)
