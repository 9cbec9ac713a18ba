"""
C{secmsg listen}, C{send -} and C{connect --json} as processes against a
real daemon on a loopback port: a message comes out as one JSON line; a
listener killed between writing a line and acknowledging it gets the
message again, redelivered, at its next start; one that acknowledged it
does not.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import subprocess
import threading
import time
from typing import IO, Any

from twisted.trial.unittest import SynchronousTestCase

from tests.test_client_daemon import secmsg
from tests.test_daemon import BIN, STARTUP_DEADLINE, Daemon, init_instance

STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def read_line(stream: IO[bytes], what: str) -> str:
    """
    The next line of a process's unbuffered output; fail past a generous
    deadline rather than hang.
    """
    deadline = time.monotonic() + STARTUP_DEADLINE
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([stream], [], [], max(left, 0))
        if not ready:
            raise AssertionError(f"no line from {what} in time; so far {line!r}")
        byte = stream.read(1)
        if not byte:
            raise AssertionError(f"{what} ended before a line; so far {line!r}")
        line += byte
    return line.decode("utf-8").rstrip("\n")


class Listening:
    """
    A C{secmsg listen} process, killed at cleanup if it still runs.
    """

    def __init__(self, testcase: SynchronousTestCase, *argv: str) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "secmsg"), "listen", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        testcase.addCleanup(self._end)
        self.assert_said("secmsg: listening as ")

    def message(self) -> dict[str, Any]:
        """
        The next message it hands on, parsed from its JSON line.
        """
        assert self.process.stdout is not None
        record: dict[str, Any] = json.loads(read_line(self.process.stdout, "listen"))
        return record

    def assert_said(self, start: str) -> None:
        assert self.process.stderr is not None
        said = read_line(self.process.stderr, "listen's standard error")
        if not said.startswith(start):
            raise AssertionError(f"listen said {said!r}, not {start!r}...")

    def _end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STARTUP_DEADLINE)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class HeldProxy:
    """
    A loopback relay to the daemon, for one connection, that can stop
    passing on what the client sends while still passing on what the
    daemon sends: an acknowledgement sent then never reaches the daemon.
    """

    def __init__(self, testcase: SynchronousTestCase, port: int) -> None:
        self.hold = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(STARTUP_DEADLINE)
        self.port = self._listener.getsockname()[1]
        self._daemon_port = port
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()
        testcase.addCleanup(self._join)
        testcase.addCleanup(self._listener.close)

    def _serve(self) -> None:
        client, _ = self._listener.accept()
        upstream = socket.create_connection(
            ("127.0.0.1", self._daemon_port), timeout=STARTUP_DEADLINE
        )
        with client, upstream:
            back = threading.Thread(target=self._relay, args=(upstream, client, False))
            back.start()
            self._relay(client, upstream, True)
            back.join(STARTUP_DEADLINE)

    def _relay(self, source: socket.socket, sink: socket.socket, held: bool) -> None:
        source.settimeout(STARTUP_DEADLINE)
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not (held and self.hold.is_set()):
                    sink.sendall(data)
        # One side has gone: so does the other, and the session with it.
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(STARTUP_DEADLINE)


class ListenAgainstDaemonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = init_instance(self)
        self.daemon = Daemon(self, self.directory)
        self.address = f"localhost:{self.daemon.port}"

    def as_user(self, name: str) -> list[str]:
        return ["--instance", str(self.directory), "--as", name]

    def send(self, *target: str, text: str) -> None:
        sent = secmsg("send", self.address, *self.as_user("alice"), *target, text)
        self.assertEqual((sent.returncode, sent.stderr), (0, ""))

    def test_messages_come_out_as_json_lines(self) -> None:
        """
        A direct message and one said in a room the listener joined each
        come out as one JSON object on one line, with every field.
        """
        bob = Listening(
            self, self.address, *self.as_user("bob"), "--json", "--join", "#lobby"
        )
        self.send("--to", "bob", text="hello bob")
        direct = bob.message()
        self.assertRegex(direct.pop("time"), STAMP)
        self.assertEqual(
            direct,
            {
                "id": 1,
                "kind": "direct",
                "sender": "alice",
                "room": None,
                "text": "hello bob",
                "redelivered": False,
            },
        )
        self.send("--room", "#lobby", text="hi all \u2764\ufe0f")
        room = bob.message()
        room.pop("time")
        self.assertEqual(
            room,
            {
                "id": 2,
                "kind": "room",
                "sender": "alice",
                "room": "#lobby",
                "text": "hi all \u2764\ufe0f",
                "redelivered": False,
            },
        )

    def test_killed_before_acknowledging_it_gets_the_message_again(self) -> None:
        """
        A listener killed (SIGKILL) after writing a message's line, before
        its acknowledgement reached the daemon, gets it again at its next
        start, redelivered; that listener acknowledges it, and the one
        after it is not handed it again.
        """
        proxy = HeldProxy(self, self.daemon.port)
        first = Listening(
            self, f"localhost:{proxy.port}", *self.as_user("bob"), "--json"
        )
        proxy.hold.set()
        self.send("--to", "bob", text="keep this")
        written = first.message()
        self.assertFalse(written["redelivered"])
        first.process.kill()
        first.process.wait(timeout=STARTUP_DEADLINE)
        second = Listening(self, self.address, *self.as_user("bob"), "--json")
        again = second.message()
        self.assertEqual(
            (again["id"], again["text"], again["redelivered"]),
            (written["id"], "keep this", True),
        )
        # SIGTERM: it leaves with QUIT, once its acknowledgement is answered.
        second.process.terminate()
        self.assertEqual(second.process.wait(timeout=STARTUP_DEADLINE), 130)
        third = Listening(self, self.address, *self.as_user("bob"), "--json")
        self.send("--to", "bob", text="after")
        self.assertEqual(third.message()["text"], "after")

    def test_a_reader_that_goes_stops_it_without_acknowledging(self) -> None:
        """
        A listener whose reader has closed the pipe stops quietly with 0
        at the next message, and that message comes again, redelivered,
        to the next listener.
        """
        gone = Listening(self, self.address, *self.as_user("bob"), "--json")
        assert gone.process.stdout is not None
        gone.process.stdout.close()
        self.send("--to", "bob", text="for the next one")
        self.assertEqual(gone.process.wait(timeout=STARTUP_DEADLINE), 0)
        assert gone.process.stderr is not None
        self.assertEqual(gone.process.stderr.read(), b"")
        after = Listening(self, self.address, *self.as_user("bob"), "--json")
        again = after.message()
        self.assertEqual(
            (again["text"], again["redelivered"]), ("for the next one", True)
        )

    def test_send_reads_its_text_from_standard_input(self) -> None:
        """
        send - sends standard input's one line; more than one line is
        refused with words and status 2, and nothing is sent.
        """
        bob = Listening(self, self.address, *self.as_user("bob"), "--json")
        refused = secmsg(
            "send",
            self.address,
            *self.as_user("alice"),
            "--to",
            "bob",
            "-",
            stdin="one\ntwo\n",
        )
        self.assertEqual(refused.returncode, 2)
        self.assertIn("more than one line", refused.stderr)
        sent = secmsg(
            "send",
            self.address,
            *self.as_user("alice"),
            "--to",
            "bob",
            "-",
            stdin="from a pipe\n",
        )
        self.assertEqual((sent.returncode, sent.stderr), (0, ""))
        self.assertEqual(bob.message()["text"], "from a pipe")

    def test_scripted_connect_writes_json(self) -> None:
        """
        connect --json writes the greeting, each reply line and each push
        as a JSON object.
        """
        self.send("--to", "bob", text="waiting")
        result = secmsg(
            "connect", self.address, *self.as_user("bob"), "--json", stdin="PING\n"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        greeting, waiting, pong = (
            json.loads(line) for line in result.stdout.splitlines()
        )
        self.assertEqual((greeting["reply"], greeting["final"]), (200, True))
        self.assertIn("you are bob", greeting["text"])
        self.assertEqual(
            (waiting["push"], waiting["kind"], waiting["text"]),
            ("MSG", "direct", "waiting"),
        )
        self.assertEqual(pong, {"reply": 200, "final": True, "text": "PONG"})
