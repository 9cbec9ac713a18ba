"""
C{secmsg connect}, C{secmsg send} and C{secmsg pki} as processes against a
real daemon on a loopback port, as the README promises them: the scripted
mode, every exit status of send, the PKI round trip with revocation and
SIGHUP, and the terminal client through a pseudo-terminal.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

import pexpect
from twisted.trial.unittest import SynchronousTestCase

from tests.harness import TERMINAL_CONTROLS, next_but_presence, temporary_directory
from tests.test_daemon import BIN, STARTUP_DEADLINE, Daemon, init_instance


def secmsg(
    *argv: str, stdin: str = "", environment: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """
    Run the secmsg command to its end, with a generous bound, with
    C{environment} over the usual one.
    """
    return subprocess.run(
        [str(BIN / "secmsg"), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=STARTUP_DEADLINE,
        check=False,
        env={**os.environ, **(environment or {})},
    )


class ClientAgainstDaemonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = init_instance(self)
        d = str(self.directory)
        for name in ("carol", "guest1"):
            self.assertEqual(secmsg("pki", "--dir", d, "issue", name).returncode, 0)
        self.assertEqual(secmsg("pki", "--dir", d, "revoke", "carol").returncode, 0)
        policy = self.directory / "policy.toml"
        policy.write_text(policy.read_text() + 'guest1 = ["guest"]\n')
        self.daemon = Daemon(self, self.directory)
        self.address = f"localhost:{self.daemon.port}"

    def as_user(self, name: str) -> list[str]:
        return ["--instance", str(self.directory), "--as", name]

    def test_scripted_connect_answers_every_line_then_exits(self) -> None:
        """
        Lines from standard input are sent, every server line is written to
        standard output, blank lines get nothing, a line with a control
        character is refused here with its number, and the client exits 7
        (a line not sent) once the last command is answered.
        """
        result = secmsg(
            "connect",
            self.address,
            *self.as_user("alice"),
            stdin="PING\n\n\r\r\nWHO\n",
        )
        self.assertEqual(result.returncode, 7, result.stderr)
        self.assertEqual(
            result.stderr,
            "secmsg: line 3 not sent: control characters are not allowed\n",
        )
        self.assertEqual(
            result.stdout.splitlines(),
            [
                "200 secmsg 0.1.0 ready; you are alice (roles: user)"
                "; protocol 1.0; capabilities store,ack-upto,history,"
                "rooms,broadcast,presence"
                "; rate 20/s, burst 60, 60 left",
                "200 PONG",
                "211-alice",
                "211 1 online",
            ],
        )

    def test_scripted_mode_keeps_to_the_rate_the_greeting_gives(self) -> None:
        """
        A script of more lines than its burst (60 for a user of secmsg
        init's policy) is paced to the rate the greeting gives, in order:
        every line is answered, none with 429.
        """
        result = secmsg(
            "connect",
            self.address,
            *self.as_user("alice"),
            stdin="".join(f"MSG bob {n}\n" for n in range(80)),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        replies = result.stdout.splitlines()[1:]
        self.assertEqual(replies, [f"250 {n}" for n in range(1, 81)])
        # At once again: the greeting says how little is left of the
        # bucket, and the script starts from that, not from a full one.
        again = secmsg(
            "connect",
            self.address,
            *self.as_user("alice"),
            stdin="PING\n" * 70 + "PING",
        )
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("left", again.stdout.splitlines()[0])
        self.assertEqual(again.stdout.splitlines()[1:], ["200 PONG"] * 71)

    def test_scripted_reader_that_stops_early(self) -> None:
        """
        A reader that closes the pipe after one line (head -1) ends the
        client quietly, without a traceback.
        """
        client = subprocess.Popen(
            [str(BIN / "secmsg"), "connect", self.address, *self.as_user("alice")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(lambda: client.poll() is None and client.kill())
        client.stdin.write(b"HELP\n" * 50)
        client.stdin.close()
        self.assertIn(b"you are alice", client.stdout.readline())
        client.stdout.close()
        self.assertEqual(client.wait(timeout=STARTUP_DEADLINE), 0)
        self.assertEqual(client.stderr.read(), b"")
        client.stderr.close()

    def test_send_exit_statuses(self) -> None:
        """
        send exits 0 on delivery and with a status of its own for no such
        recipient, not permitted, a refused certificate and no connection;
        every failure says why on standard error.
        """
        bob = self.daemon.client("bob")
        with bob, bob.makefile("rb") as lines:
            self.assertIn(b"you are bob", lines.readline())
            sent = secmsg(
                "send", self.address, *self.as_user("alice"), "--to", "bob", "hi bob"
            )
            self.assertEqual((sent.returncode, sent.stderr), (0, ""))
            self.assertRegex(next_but_presence(lines), rb"^MSG 1 \S+Z alice hi bob\n$")
        cases = [
            (self.as_user("alice"), ["--to", "zed"], 6, "404 no such identity zed"),
            (self.as_user("guest1"), ["--to", "bob"], 5, "403 MSG not permitted"),
            (
                self.as_user("carol"),
                ["--to", "bob"],
                4,
                "refused our certificate: revoked",
            ),
        ]
        for user, target, status, words in cases:
            result = secmsg("send", self.address, *user, *target, "hello")
            self.assertEqual(result.returncode, status, result.stderr)
            self.assertIn(words, result.stderr)
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
            result = secmsg(
                "send", f"127.0.0.1:{port}", *self.as_user("alice"), "--to", "bob", "x"
            )
        self.assertEqual(result.returncode, 3)
        self.assertIn("cannot connect to 127.0.0.1", result.stderr)

    def test_client_refuses_wrong_server_name_and_unknown_ca(self) -> None:
        """
        The client verifies the server: a name its certificate does not
        carry, or a CA we did not give, ends the attempt with exit 3.
        """
        other = temporary_directory(self) / "other"
        secmsg("pki", "init", str(other))
        for extra, words in [
            (["--server-name", "chat.example"], "not valid for chat.example"),
            (["--ca", str(other / "ca.pem")], "did not verify against our CA file"),
        ]:
            result = secmsg(
                "connect", self.address, *self.as_user("alice"), *extra, stdin="PING\n"
            )
            self.assertEqual(result.returncode, 3, result.stderr)
            self.assertIn(words, result.stderr)
            self.assertEqual(result.stdout, "")

    def test_pki_round_trip_with_revocation_and_sighup(self) -> None:
        """
        A newly issued identity logs in; once revoked and the daemon sent
        SIGHUP, its open session is closed and it cannot log in again.
        """
        d = str(self.directory)
        self.assertEqual(secmsg("pki", "--dir", d, "issue", "dave").returncode, 0)
        whoami = secmsg("connect", self.address, *self.as_user("dave"), stdin="PING\n")
        self.assertIn("you are dave", whoami.stdout)
        dave = self.daemon.client("dave")
        with dave, dave.makefile("rb") as lines:
            self.assertIn(b"you are dave", lines.readline())
            self.assertEqual(secmsg("pki", "--dir", d, "revoke", "dave").returncode, 0)
            os.kill(self.daemon.process.pid, signal.SIGHUP)
            self.assertEqual(lines.readline(), b"CLOSED revoked\n")
        self.daemon.wait_for("closed dave (revoked)")
        again = secmsg("send", self.address, *self.as_user("dave"), "--to", "bob", "x")
        self.assertEqual(again.returncode, 4)
        self.assertIn("the server refused our certificate: revoked", again.stderr)

    def test_terminal_client(self) -> None:
        """
        On a terminal: a prompt, messages shown above it with who and when,
        completion of the commands HELP lists, /quit to leave with 0.
        """
        console = self.console("bob")
        console.expect("bob>")
        sent = secmsg(
            "send", self.address, *self.as_user("alice"), "--to", "bob", "hello"
        )
        self.assertEqual(sent.returncode, 0, sent.stderr)
        console.expect(r"\] alice to you: hello")
        console.send("PI\t")
        console.expect(TERMINAL_CONTROLS.join("PING"))
        console.send("\r")
        console.expect("PONG")
        # A paste holding a newline would be two commands: refused whole.
        console.send("\x1b[200~MSG alice x\nWHOAMI\x1b[201~\r")
        console.expect("not sent: control characters are not allowed")
        console.send("/quit\r")
        console.expect(pexpect.EOF)
        console.close()
        self.assertEqual(console.exitstatus, 0)

    def test_terminal_client_reports_kick(self) -> None:
        """
        A KICK arriving while the prompt waits is shown in words at once,
        and the client exits non-zero without connecting again.
        """
        console = self.console("bob")
        console.expect("bob>")
        kick = secmsg(
            "connect", self.address, *self.as_user("admin"), stdin="KICK bob bye now\n"
        )
        self.assertIn("200 kicked bob", kick.stdout)
        console.expect("kicked by admin: bye now")
        console.expect(pexpect.EOF)
        self.assertNotIn("connecting again", console.before)
        console.close()
        self.assertEqual(console.exitstatus, 1)

    def console(self, name: str) -> pexpect.spawn:
        console = pexpect.spawn(
            str(BIN / "secmsg"),
            ["connect", self.address, *self.as_user(name)],
            encoding="utf-8",
            timeout=STARTUP_DEADLINE,
            dimensions=(24, 100),
            # No cursor position requests: the pseudo-terminal never answers.
            env={**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"},
        )
        self.addCleanup(console.close, force=True)
        return console


class HostileServer:
    """
    A TLS server with the instance's server certificate that greets, then
    does what a hostile or broken server could do to a client: escape
    sequences in a push, in a HELP listing and in a reply; or, C{silent},
    never answers at all.
    """

    GREETING = b"200 secmsg 0.1.0 ready; you are alice (roles: user)\n"
    PUSH = (
        b"MSG 1 2026-06-01T09:29:00Z eve "
        b"\x1b]0;owned\x07\x1b[2Jcleared \xe2\x80\xae reversed\n"
    )
    HELP = b"211-\x1b]0;PWNED\x07PING  check\n211-MSG <identity> <text>\n211 2\n"
    # U+009B (CSI) as UTF-8, and the raw 8-bit CSI byte, which is not UTF-8.
    REPLY = b"200 \x1b[31mPONG\xc2\x9b1m \x9b1m\n"

    def __init__(
        self,
        testcase: SynchronousTestCase,
        directory: Path,
        silent: bool = False,
        greets: bool = True,
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        servers = directory / "servers"
        context.load_cert_chain(servers / "localhost.pem", servers / "localhost.key")
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(STARTUP_DEADLINE)
        self.port = listener.getsockname()[1]
        self._silent = silent
        self._greets = greets
        self._listener = context.wrap_socket(listener, server_side=True)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        testcase.addCleanup(self._thread.join, STARTUP_DEADLINE)
        testcase.addCleanup(self._listener.close)

    def _serve(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except OSError:
            return
        with connection, connection.makefile("rb") as lines:
            if self._greets:
                connection.sendall(self.GREETING)
            if self._silent:
                # Read until the client gives up; answer nothing.
                while lines.readline():
                    pass
                return
            connection.sendall(self.PUSH)
            for _ in range(2):
                line = lines.readline()
                if not line:
                    break
                connection.sendall(self.HELP if line == b"HELP\n" else self.REPLY)


class HostileServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = init_instance(self)
        self.user = ["--instance", str(self.directory), "--as", "alice"]

    def address(self, silent: bool = False, greets: bool = True) -> str:
        server = HostileServer(self, self.directory, silent, greets)
        return f"localhost:{server.port}"

    def test_scripted_output_is_escaped(self) -> None:
        """
        Escape sequences, C1 controls and bidi overrides from the server
        are written as visible escapes, never as themselves.
        """
        result = secmsg("connect", self.address(), *self.user, stdin="PING\n")
        self.assertEqual(
            result.stdout.splitlines()[1:],
            [
                "MSG 1 2026-06-01T09:29:00Z eve "
                "\\x1b]0;owned\\x07\\x1b[2Jcleared \\u202e reversed",
                "200 \\x1b[31mPONG\\x9b1m \ufffd1m",
            ],
        )

    def test_terminal_output_is_escaped(self) -> None:
        """
        The terminal client leaves out of its command list a HELP word that
        is an escape sequence, and shows the push (after that list) escaped:
        the title is not set and the screen is not cleared; /quit leaves
        once the server has hung up.
        """
        console = pexpect.spawn(
            str(BIN / "secmsg"),
            ["connect", self.address(), *self.user],
            encoding="utf-8",
            timeout=STARTUP_DEADLINE,
            env={**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"},
        )
        self.addCleanup(console.close, force=True)
        console.expect_exact("commands: MSG;")
        seen = console.before + console.after
        console.expect_exact("eve to you: \\x1b]0;owned\\x07\\x1b[2Jcleared \\u202e")
        seen += console.before + console.after
        console.send("PING\r")
        # The server hangs up after the reply; leave rather than wait.
        console.expect_exact("connecting again in ")
        seen += console.before + console.after
        console.send("/quit\r")
        console.expect(pexpect.EOF)
        seen += console.before
        for raw in ("\x1b]0;owned", "\x1b]0;PWNED", "\u202e", "\x1b[31m", "\x9b"):
            self.assertNotIn(raw, seen)

    def test_send_gives_up_on_a_silent_server(self) -> None:
        """
        A server that never greets, or greets and then never answers, does
        not hang send: it gives up after --timeout with exit 3 and words.
        """
        for greets, words in [
            (True, "no reply from the server within 1 seconds"),
            (False, "no greeting from the server within 1 seconds"),
        ]:
            address = self.address(silent=True, greets=greets)
            result = secmsg(
                "send", address, *self.user, "--timeout", "1", "--to", "bob", "hi"
            )
            self.assertEqual(result.returncode, 3)
            self.assertIn(words, result.stderr)
