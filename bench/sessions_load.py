"""
A thousand authenticated TLS sessions held on the real daemon while
messages flow between them: whether it keeps answering, whether its memory
stays bounded, and whether any message is lost.

    .venv/bin/python bench/sessions_load.py [--sessions 1000] [--workers 4]
        [--identities 50] [--rate 500] [--seconds 20] [--json PATH]

A development instance in a temporary directory, one client certificate
per identity (the sessions are spread evenly over the identities), and the
daemon on a loopback port. Client processes (--workers) each hold their
share of the sessions, on one asyncio loop each, so that the client side is
not what is measured. A probe session of its own PINGs the daemon every
--probe-interval seconds from start to end. The run, in phases:

1. connecting: every session is opened (TLS handshake, certificate
   checked, greeting read); the time it takes gives handshakes per second.
2. idle: the sessions are held, doing nothing, for a few seconds.
3. flow: for --seconds, the workers send --rate MSGs a second between
   them, each from a session to another identity chosen at random; every
   session of the recipient identity gets each message pushed, and says
   ACK UPTO for what it has every --ack-interval seconds.
4. drain: until every push that the confirmed messages call for has
   arrived, or nothing more arrives.
5. closing: every session says QUIT and waits for the daemon to let go.

What it reports: PING latency per phase (p50, p99, max); the daemon's
resident memory (VmRSS from /proc/PID/status) before connecting, with the
sessions idle, at its peak during the flow, after it, and after every
session has closed, and what each session costs; and delivery: messages
sent, confirmed with 250, received by at least one session of their
recipient, and missing, then the same per session (every session of a
recipient should get every message to it, once).

The instance lifts the limits that would otherwise measure themselves:
sessions per identity and per address, sessions in all, and the policy's
rate of commands. Loopback only; the run stops
by itself in a few minutes. No figure is asserted: it is a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent

CONNECT_TIMEOUT = 30.0
"""Seconds a session may take from connecting to its greeting."""

MAX_OUTSTANDING = 2000
"""Commands a worker may have sent without their replies: past it, it sends
no more MSGs until the daemon catches up, so that a daemon slower than the
offered rate shows as a lower rate sent, not as a queue in the client."""

ACK_SLICES = 50
"""Slices of a worker's sessions that take turns to say ACK UPTO."""

SETTLE_SECONDS = 3.0
"""How long the sessions are held idle before memory is read."""

DRAIN_TIMEOUT = 60.0
"""Most seconds to wait for pushes after the last MSG is sent."""

DRAIN_STALL = 10.0
"""Seconds without a new push after which the drain gives up."""

LOG_PATTERNS = {
    "tracebacks": "Traceback",
    "unhandled": "Unhandled",
    "refused": "refused",
    "dropped": "dropped",
    "errors": "#error]",
    "critical": "#critical]",
    "warnings": "#warn]",
}
"""What to count in the daemon's log: a name, and a substring of a line."""


@dataclass(frozen=True)
class WorkerPlan:
    """
    What one client process needs: where the daemon is, and the identity
    of each of its sessions.
    """

    instance: Path
    port: int
    identities: list[str]
    concurrency: int
    ack_interval: float
    seed: int


@dataclass
class Session:
    """
    One of a worker's sessions, with the commands awaiting their replies
    (replies come in order) and every message pushed to it, by id.
    """

    identity: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: deque[tuple[str, str, str]] = field(default_factory=deque)
    received: dict[int, tuple[str, str]] = field(default_factory=dict)
    highest: int = 0
    acked: int = 0
    closing: bool = False
    ended: str | None = None


class Worker:
    """
    A client process: holds its sessions on one asyncio loop and does what
    the parent asks, one command at a time, answering each with a dict.
    """

    def __init__(self, control: Connection, plan: WorkerPlan) -> None:
        self._control = control
        self._plan = plan
        self._sessions: list[Session] = []
        self._readers: list[asyncio.Task[None]] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._outstanding = 0
        self._confirmed: dict[int, tuple[str, str, str]] = {}
        self._msg_replies: Counter[str] = Counter()
        self._other_replies: Counter[str] = Counter()
        self._unasked: Counter[str] = Counter()
        self._duplicates = 0
        self._redelivered = 0

    async def run(self) -> None:
        """
        Serve the parent's commands until it asks for the results.
        """
        commands: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        loop.add_reader(
            self._control.fileno(), lambda: commands.put_nowait(self._control.recv())
        )
        handlers = {
            "connect": self._connect_all,
            "flow": self._flow,
            "status": self._status,
            "ack": self._ack_all,
            "close": self._close_all,
        }
        while True:
            command, arguments = await commands.get()
            self._control.send(await handlers[command](**arguments))
            if command == "close":
                return

    async def _connect_all(self) -> dict[str, Any]:
        """
        Open every session, a few at a time so that the daemon's listen
        queue never overflows (a dropped SYN costs a second's retry, which
        would be measured as a slow handshake).
        """
        contexts = {
            name: _client_context(self._plan.instance, name)
            for name in set(self._plan.identities)
        }
        gate = asyncio.Semaphore(self._plan.concurrency)

        async def one(identity: str) -> float | str:
            async with gate:
                return await self._open(identity, contexts[identity])

        start = time.perf_counter()
        outcomes = await asyncio.gather(*(one(i) for i in self._plan.identities))
        elapsed = time.perf_counter() - start
        self._ack_task = asyncio.create_task(self._ack_loop())
        return {
            "elapsed": elapsed,
            "latencies": [o for o in outcomes if isinstance(o, float)],
            "failures": [o for o in outcomes if isinstance(o, str)],
            "online": Counter(s.identity for s in self._sessions),
        }

    async def _open(self, identity: str, context: ssl.SSLContext) -> float | str:
        """
        Open one session and read its greeting, which is what says the
        daemon accepted it (under TLS 1.3 a refusal comes after the
        client's handshake is done).

        @return: seconds it took, or why it failed.
        """
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1",
                    self._plan.port,
                    ssl=context,
                    server_hostname="localhost",
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as error:
            return f"{identity}: connect: {error!r}"
        try:
            greeting = await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as error:
            writer.close()
            return f"{identity}: greeting: {error!r}"
        if not greeting.startswith(b"200 "):
            writer.close()
            return f"{identity}: greeting: {greeting!r}"
        session = Session(identity, reader, writer)
        self._sessions.append(session)
        self._readers.append(asyncio.create_task(self._read(session)))
        return time.perf_counter() - start

    async def _read(self, session: Session) -> None:
        """
        Take every line the daemon sends a session until it ends, noting
        how it ended: a session that ends before it said QUIT was dropped.
        """
        try:
            while line := await session.reader.readline():
                self._line(session, line.rstrip(b"\r\n").decode())
        except (OSError, ValueError) as error:
            session.ended = repr(error)
        else:
            session.ended = "QUIT" if session.closing else "closed by the daemon"

    def _line(self, session: Session, line: str) -> None:
        """
        Sort one line: a push is recorded by id (a repeat is counted, not
        stored), a reply settles the oldest command awaiting one.
        """
        if line.startswith("REDELIVERED "):
            self._redelivered += 1
            line = line.removeprefix("REDELIVERED ")
        if line.startswith("MSG "):
            _, number, _, sender, text = line.split(" ", 4)
            message_id = int(number)
            if message_id in session.received:
                self._duplicates += 1
            else:
                session.received[message_id] = (sender, text)
                session.highest = max(session.highest, message_id)
        elif line[:1].isdigit() and session.pending:
            verb, recipient, text = session.pending.popleft()
            self._outstanding -= 1
            code = line[:3]
            if verb == "MSG":
                self._msg_replies[code] += 1
                if code == "250":
                    self._confirmed[int(line[4:])] = (session.identity, recipient, text)
            else:
                self._other_replies[f"{verb} {code}"] += 1
        else:
            self._unasked[line.split(" ", 1)[0]] += 1

    def _send(
        self,
        session: Session,
        verb: str,
        line: str,
        recipient: str = "",
        text: str = "",
    ) -> None:
        """
        Send a command and remember it, so that its reply is matched.
        """
        session.writer.write(line.encode() + b"\n")
        session.pending.append((verb, recipient, text))
        self._outstanding += 1

    async def _ack_loop(self) -> None:
        """
        Acknowledge what each session has, every so often, so that the
        daemon does not keep it for redelivery; a slice of the sessions at
        a time, as clients that do not share a clock would, because a
        thousand ACKs at once hold up everything behind them (the final
        round, L{_ack_all}, measures that).
        """
        while True:
            for part in range(ACK_SLICES):
                await asyncio.sleep(self._plan.ack_interval / ACK_SLICES)
                self._ack_round(self._sessions[part::ACK_SLICES])

    def _ack_round(self, sessions: list[Session]) -> None:
        """
        ACK UPTO the newest message each of these sessions has, if it has
        one it has not acknowledged.
        """
        for session in sessions:
            if session.ended is None and session.highest > session.acked:
                self._send(session, "ACK", f"ACK UPTO {session.highest}")
                session.acked = session.highest

    async def _flow(
        self, recipients: list[str], rate: float, seconds: float
    ) -> dict[str, Any]:
        """
        Send MSGs at the given rate for the given time, round-robin over
        this worker's sessions, each to another identity at random.
        """
        # Which identity gets a message is no secret; it need only vary.
        rng = random.Random(self._plan.seed)  # noqa: S311
        others = {
            identity: [r for r in recipients if r != identity] or recipients
            for identity in set(self._plan.identities)
        }
        senders = itertools.cycle([s for s in self._sessions if s.ended is None])
        offered = int(rate * seconds)
        sent = 0
        start = time.perf_counter()
        while sent < offered and (now := time.perf_counter() - start) < seconds + 10:
            # Message n is due at n / rate; what is still unsent at the end
            # goes at once, and a daemon that cannot take it all in ten
            # seconds more shows as fewer sent.
            due = (
                offered if now >= seconds else min(offered, int(now * rate) + 1)
            ) - sent
            for _ in range(max(0, min(due, MAX_OUTSTANDING - self._outstanding))):
                session = next(senders)
                recipient = rng.choice(others[session.identity])
                text = f"load {self._plan.seed}-{sent} from {session.identity}"
                self._send(session, "MSG", f"MSG {recipient} {text}", recipient, text)
                sent += 1
            await asyncio.sleep(0.005)
        return {
            "offered": offered,
            "sent": sent,
            "elapsed": time.perf_counter() - start,
        }

    async def _status(self) -> dict[str, Any]:
        """
        How far delivery has come, for the parent to tell when the pushes
        have stopped.
        """
        return {
            "outstanding": self._outstanding,
            "confirmed_to": Counter(r for _, r, _ in self._confirmed.values()),
            "received": sum(len(s.received) for s in self._sessions),
        }

    async def _ack_all(self) -> dict[str, Any]:
        """
        Acknowledge everything received, and wait for every reply.
        """
        self._ack_round(self._sessions)
        deadline = time.perf_counter() + 30
        while self._outstanding and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return {"outstanding": self._outstanding}

    async def _close_all(self) -> dict[str, Any]:
        """
        QUIT every session, wait for the daemon to close each, and hand
        back everything sent and received.
        """
        if self._ack_task is not None:
            self._ack_task.cancel()
        dropped = Counter(s.ended for s in self._sessions if s.ended is not None)
        for session in self._sessions:
            if session.ended is None:
                session.closing = True
                self._send(session, "QUIT", "QUIT")
        await asyncio.wait(self._readers, timeout=20)
        for session in self._sessions:
            session.writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(
                    *(s.writer.wait_closed() for s in self._sessions),
                    return_exceptions=True,
                ),
                10,
            )
        return {
            "confirmed": self._confirmed,
            "received": [(s.identity, s.received) for s in self._sessions],
            "msg_replies": self._msg_replies,
            "other_replies": self._other_replies,
            "unasked": self._unasked,
            "duplicates": self._duplicates,
            "redelivered": self._redelivered,
            "dropped": dropped,
            "not_closed": sum(1 for s in self._sessions if s.ended is None),
        }


def _worker_main(control: Connection, plan: WorkerPlan) -> None:
    """
    A client process's body: any failure goes back to the parent as text,
    so that it stops the run and says why instead of waiting.
    """
    try:
        asyncio.run(Worker(control, plan).run())
    except Exception:  # noqa: BLE001 - everything is reported to the parent
        control.send({"error": traceback.format_exc()})


def _client_context(instance: Path, name: str) -> ssl.SSLContext:
    """
    A TLS context that trusts the instance's CA and presents NAME's
    certificate.
    """
    context = ssl.create_default_context(cafile=instance / "ca.pem")
    context.load_cert_chain(
        instance / "clients" / f"{name}.pem", instance / "clients" / f"{name}.key"
    )
    return context


class Stage:
    """
    The phase of the run the parent is in, which the probe and the memory
    sampler file their readings under.
    """

    name = "before"


class Probe(threading.Thread):
    """
    A session of its own that PINGs the daemon at a steady interval and
    times each answer: the daemon's responsiveness as a client sees it.
    """

    def __init__(
        self, connection: ssl.SSLSocket, interval: float, stage: Stage
    ) -> None:
        super().__init__(daemon=True)
        self._connection = connection
        self._interval = interval
        self._stage = stage
        self._halt = threading.Event()
        self.latencies: defaultdict[str, list[float]] = defaultdict(list)
        self.failures: list[str] = []

    def run(self) -> None:
        """
        PING, wait for PONG, and again an interval after the last PING was
        sent (or at once, if the answer took longer): one at a time, so
        that each latency is the daemon's alone.
        """
        lines = self._connection.makefile("rb")
        wait = 0.0
        while not self._halt.wait(wait):
            phase = self._stage.name
            start = time.perf_counter()
            try:
                self._connection.sendall(b"PING\n")
                line = lines.readline()
            except OSError as error:
                self.failures.append(f"{phase}: {error!r}")
                return
            elapsed = time.perf_counter() - start
            if line != b"200 PONG\n":
                self.failures.append(f"{phase}: {line!r}")
                if not line:
                    return
            else:
                self.latencies[phase].append(elapsed * 1000)
            wait = max(0.0, self._interval - elapsed)

    def stop(self) -> None:
        """
        Stop after the PING in flight, if any, and say QUIT.
        """
        self._halt.set()
        self.join()
        with contextlib.suppress(OSError):
            self._connection.sendall(b"QUIT\n")
        self._connection.close()


class Sampler(threading.Thread):
    """
    Reads the daemon's resident memory five times a second, to find its
    peak in each phase (a reading at the end of a phase would miss it).
    """

    def __init__(self, pid: int, stage: Stage) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self._stage = stage
        self._halt = threading.Event()
        self.peaks: dict[str, int] = {}

    def run(self) -> None:
        """
        Keep the highest reading of each phase.
        """
        while not self._halt.wait(0.2):
            with contextlib.suppress(OSError):
                rss = _rss_kb(self._pid)
                phase = self._stage.name
                self.peaks[phase] = max(self.peaks.get(phase, 0), rss)

    def stop(self) -> None:
        """
        Stop after the reading in hand.
        """
        self._halt.set()
        self.join()


def _rss_kb(pid: int) -> int:
    """
    The process's resident memory in KiB, as the kernel counts it.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise OSError(f"no VmRSS for {pid}")


def _cpu_seconds(pid: int) -> float:
    """
    CPU time the process has used, user and system, in seconds.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _open_sockets(pid: int) -> int:
    """
    How many sockets the process holds: one per connection, so the count
    falls back to where it was once the daemon has let go of them all.
    (Not every descriptor: SQLite may open a temporary file and keep it.)
    """
    sockets = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            sockets += os.readlink(fd).startswith("socket:")
    return sockets


def _percentile(values: list[float], share: float) -> float:
    """
    The nearest-rank percentile: a value that was actually measured.
    """
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share / 100 * len(ordered)) - 1)]


def _make_instance(directory: Path, identities: list[str]) -> Path:
    """
    A development instance with a certificate per identity and the limits
    lifted, so that the benchmark measures the daemon, not its bounds.
    """
    instance = directory / "instance"
    subprocess.run([BIN / "secmsg", "init", instance], check=True, capture_output=True)

    def issue(name: str) -> None:
        subprocess.run(
            [BIN / "secmsg", "pki", "--dir", instance, "issue", name],
            check=True,
            capture_output=True,
        )

    # Issuing is mostly interpreter start-up; the CA serialises its own
    # writes with a lock, so issuing side by side is safe.
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(issue, identities))
    policy = instance / "policy.toml"
    policy.write_text(policy.read_text().replace("\nrate = 20\n", "\nrate = 1e9\n"))
    with (instance / "secmsg.toml").open("a") as config:
        config.write(
            "max-sessions-per-identity = 100\n"
            "max-sessions-per-address = 5000\n"
            "max-sessions = 20000\n"
            "max-handshakes-per-address = 5000\n"
            "logins-per-address = 1000000\n"
        )
    return instance


def _start_daemon(instance: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """
    Start the daemon on a free loopback port, its log to a file (a pipe
    nobody reads would stall it once full), and find the port in the log.
    """
    with log.open("wb") as output:
        daemon = subprocess.Popen(
            [
                BIN / "twistd",
                "-n",
                "--pidfile=",
                "secmsg",
                "--config",
                instance / "secmsg.toml",
                "--interface",
                "127.0.0.1",
                "--port",
                "0",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and daemon.poll() is None:
        if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text()):
            return daemon, int(match.group(1))
        time.sleep(0.1)
    _stop_daemon(daemon)
    raise SystemExit(f"the daemon did not start:\n{log.read_text()}")


def _stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    """
    SIGTERM, and SIGKILL if it has not stopped in half a minute.
    """
    daemon.terminate()
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def _connect_probe(instance: Path, port: int) -> ssl.SSLSocket:
    """
    The probe's session, blocking, logged in.
    """
    connection = _client_context(instance, "probe").wrap_socket(
        socket.create_connection(("127.0.0.1", port)), server_hostname="localhost"
    )
    connection.settimeout(CONNECT_TIMEOUT)
    greeting = b""
    while not greeting.endswith(b"\n"):
        greeting += connection.recv(1)
    if not greeting.startswith(b"200 "):
        raise SystemExit(f"the probe was refused: {greeting!r}")
    return connection


class Workers:
    """
    The client processes, asked things all at once and answered within a
    deadline, so that a stuck worker stops the run instead of hanging it.
    """

    def __init__(self, plans: list[WorkerPlan]) -> None:
        context = multiprocessing.get_context("spawn")
        self._controls: list[Connection] = []
        self._processes = []
        for plan in plans:
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker_main, args=(theirs, plan))
            process.start()
            theirs.close()
            self._controls.append(ours)
            self._processes.append(process)

    def ask(
        self, command: str, timeout: float, **arguments: Any
    ) -> list[dict[str, Any]]:
        """
        Send a command to every worker, so that they carry it out side by
        side, then collect their answers in order.
        """
        for control in self._controls:
            control.send((command, arguments))
        deadline = time.monotonic() + timeout
        answers = []
        for control in self._controls:
            if not control.poll(max(0.0, deadline - time.monotonic())):
                raise SystemExit(f"a worker did not answer {command} in {timeout} s")
            answer = control.recv()
            if "error" in answer:
                raise SystemExit(f"a worker failed:\n{answer['error']}")
            answers.append(answer)
        return answers

    def cpu_seconds(self) -> float:
        """
        CPU time the client processes have used, to tell a daemon slowed
        by the clients' load on the same cores from one slow by itself.
        """
        return sum(_cpu_seconds(p.pid) for p in self._processes)

    def stop(self) -> None:
        """
        Wait for the workers to end, ending any that does not.
        """
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join()


def _drain(workers: Workers, online: Counter[str]) -> dict[str, Any]:
    """
    Wait until every push the confirmed messages call for has arrived
    (each goes to every session of its recipient), or none has arrived for
    a while, or the drain has taken too long.
    """
    start = time.monotonic()
    last, last_change = -1, start
    while True:
        answers = workers.ask("status", 30)
        confirmed_to: Counter[str] = sum(
            (a["confirmed_to"] for a in answers), Counter()
        )
        expected = sum(count * online[r] for r, count in confirmed_to.items())
        received = sum(a["received"] for a in answers)
        outstanding = sum(a["outstanding"] for a in answers)
        now = time.monotonic()
        if received != last:
            last, last_change = received, now
        if received >= expected and not outstanding:
            break
        if now - last_change > DRAIN_STALL or now - start > DRAIN_TIMEOUT:
            break
        time.sleep(0.2)
    return {
        "seconds": time.monotonic() - start,
        "expected": expected,
        "received": received,
    }


def _delivery(results: list[dict[str, Any]]) -> dict[str, int]:
    """
    Check every message confirmed with 250 against what the sessions got:
    by message (did any session of the recipient get it) and by session
    (did every session of the recipient get it, once, as sent).
    """
    confirmed: dict[int, tuple[str, str, str]] = {}
    for result in results:
        confirmed.update(result["confirmed"])
    ids_to: defaultdict[str, set[int]] = defaultdict(set)
    for message_id, (_, recipient, _) in confirmed.items():
        ids_to[recipient].add(message_id)
    sessions = [s for result in results for s in result["received"]]
    got_by: defaultdict[str, set[int]] = defaultdict(set)
    for identity, received in sessions:
        got_by[identity].update(received)
    expected = delivered = stray = altered = 0
    for identity, received in sessions:
        expected += len(ids_to[identity])
        delivered += len(ids_to[identity].intersection(received))
        for message_id, (sender, text) in received.items():
            if message_id not in ids_to[identity]:
                stray += 1
            elif confirmed[message_id][::2] != (sender, text):
                altered += 1
    missing = sum(1 for r, ids in ids_to.items() for i in ids if i not in got_by[r])
    return {
        "messages_confirmed": len(confirmed),
        "messages_received": len(confirmed) - missing,
        "messages_missing": missing,
        "deliveries_expected": expected,
        "deliveries_received": delivered,
        "deliveries_missing": expected - delivered,
        "deliveries_duplicated": sum(r["duplicates"] for r in results),
        "deliveries_redelivered": sum(r["redelivered"] for r in results),
        "pushes_not_confirmed": stray,
        "pushes_altered": altered,
    }


def _scan_log(log: Path) -> dict[str, dict[str, Any]]:
    """
    Count the daemon's log lines that say something went wrong, with a
    few of each to read.
    """
    found: dict[str, dict[str, Any]] = {}
    lines = log.read_text(errors="replace").splitlines()
    for name, needle in LOG_PATTERNS.items():
        hits = [line for line in lines if needle in line]
        found[name] = {"count": len(hits), "examples": hits[:3]}
    return found


def _latency(values: list[float]) -> dict[str, float | int]:
    """
    The middle, the tail and the worst of some latencies: a mean would
    hide the stalls this benchmark is looking for.
    """
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50_ms": _percentile(values, 50),
        "p99_ms": _percentile(values, 99),
        "max_ms": max(values),
    }


def run(arguments: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """
    The whole benchmark, in its phases; the figures as a dict.
    """
    names = [f"user{n}" for n in range(arguments.identities)]
    instance = _make_instance(directory, [*names, "probe"])
    identities = [names[n % len(names)] for n in range(arguments.sessions)]
    log = directory / "daemon.log"
    daemon, port = _start_daemon(instance, log)
    stage = Stage()
    figures: dict[str, Any] = {}
    rss: dict[str, int] = {}
    cpu: dict[str, float] = {}
    workers = None
    probe = sampler = None
    try:
        workers = Workers(
            [
                WorkerPlan(
                    instance,
                    port,
                    identities[w :: arguments.workers],
                    arguments.concurrency,
                    arguments.ack_interval,
                    w,
                )
                for w in range(arguments.workers)
            ]
        )
        probe = Probe(_connect_probe(instance, port), arguments.probe_interval, stage)
        sampler = Sampler(daemon.pid, stage)
        probe.start()
        sampler.start()
        time.sleep(SETTLE_SECONDS)
        rss["before"] = _rss_kb(daemon.pid)
        sockets_before = _open_sockets(daemon.pid)

        stage.name = "connecting"
        cpu["connecting"] = _cpu_seconds(daemon.pid)
        start = time.perf_counter()
        connected = workers.ask("connect", 300)
        elapsed = time.perf_counter() - start
        cpu["connecting"] = _cpu_seconds(daemon.pid) - cpu["connecting"]
        latencies = [x * 1000 for c in connected for x in c["latencies"]]
        online: Counter[str] = sum((c["online"] for c in connected), Counter())
        figures["sessions"] = {
            "opened": len(latencies),
            "failed": sum(len(c["failures"]) for c in connected),
            "failures": [f for c in connected for f in c["failures"]][:10],
            "seconds": elapsed,
            "per_second": len(latencies) / elapsed,
            "latency": _latency(latencies),
            "daemon_cpu_ms_each": 1000 * cpu["connecting"] / max(1, len(latencies)),
            "daemon_sockets": _open_sockets(daemon.pid) - sockets_before,
        }

        stage.name = "idle"
        time.sleep(SETTLE_SECONDS)
        rss["idle"] = _rss_kb(daemon.pid)

        stage.name = "flow"
        cpu["flow"] = _cpu_seconds(daemon.pid)
        cpu["clients"] = workers.cpu_seconds()
        flows = workers.ask(
            "flow",
            arguments.seconds + 60,
            recipients=sorted(online),
            rate=arguments.rate / arguments.workers,
            seconds=arguments.seconds,
        )
        flow_seconds = max(f["elapsed"] for f in flows)
        rss["end_of_flow"] = _rss_kb(daemon.pid)
        stage.name = "drain"
        drain = _drain(workers, online)
        cpu["flow"] = _cpu_seconds(daemon.pid) - cpu["flow"]
        cpu["clients"] = workers.cpu_seconds() - cpu["clients"]
        stage.name = "ack"
        acked = workers.ask("ack", 60)
        stage.name = "after"
        time.sleep(SETTLE_SECONDS)
        rss["after_flow"] = _rss_kb(daemon.pid)
        sent = sum(f["sent"] for f in flows)
        figures["flow"] = {
            "offered": sum(f["offered"] for f in flows),
            "sent": sent,
            "seconds": flow_seconds,
            "sent_per_second": sent / flow_seconds,
            "drain_seconds": drain["seconds"],
            "daemon_cpu_share": cpu["flow"] / (flow_seconds + drain["seconds"]),
            "clients_cpu_share": cpu["clients"] / (flow_seconds + drain["seconds"]),
            "acks_unanswered": sum(a["outstanding"] for a in acked),
        }

        stage.name = "closing"
        closing = time.monotonic()
        results = workers.ask("close", 60)
        deadline = time.monotonic() + 30
        while (
            _open_sockets(daemon.pid) > sockets_before and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        figures["closing_seconds"] = time.monotonic() - closing
        figures["daemon_sockets_after_close"] = (
            _open_sockets(daemon.pid) - sockets_before
        )
        stage.name = "closed"
        time.sleep(SETTLE_SECONDS)
        rss["closed"] = _rss_kb(daemon.pid)
    finally:
        if probe is not None:
            probe.stop()
        if sampler is not None:
            sampler.stop()
        if workers is not None:
            workers.stop()
        _stop_daemon(daemon)
    opened = figures["sessions"]["opened"]
    figures["rss_kb"] = {
        **rss,
        "peak_flow": max(sampler.peaks.get("flow", 0), sampler.peaks.get("drain", 0)),
        "per_session": (rss["idle"] - rss["before"]) / max(1, opened),
    }
    figures["ping"] = {phase: _latency(v) for phase, v in probe.latencies.items()}
    figures["ping_failures"] = probe.failures
    figures["delivery"] = _delivery(results)
    figures["replies"] = {
        "MSG": dict(sum((r["msg_replies"] for r in results), Counter())),
        "other": dict(sum((r["other_replies"] for r in results), Counter())),
        "unasked": dict(sum((r["unasked"] for r in results), Counter())),
    }
    figures["sessions_dropped"] = dict(sum((r["dropped"] for r in results), Counter()))
    figures["sessions_not_closed"] = sum(r["not_closed"] for r in results)
    figures["daemon_log"] = _scan_log(log)
    if arguments.daemon_log:
        arguments.daemon_log.write_bytes(log.read_bytes())
    return figures


def _slash(*values: float, unit: str = "") -> str:
    """
    Figures that go together, as C{a / b / c}, with thousands separated.
    """
    return " / ".join(_number(v) for v in values) + unit


def _number(value: float) -> str:
    """
    A count as it is; a measurement to a tenth below ten, else whole.
    """
    if isinstance(value, int) or value >= 10:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _table(figures: dict[str, Any]) -> str:
    """
    The figures as a Markdown table, in the order of the run.
    """
    sessions, flow, rss = figures["sessions"], figures["flow"], figures["rss_kb"]
    delivery, log = figures["delivery"], figures["daemon_log"]

    def ping(phase: str) -> str:
        p = figures["ping"].get(phase, {"count": 0})
        if not p["count"]:
            return "no PING in this phase"
        latency = _slash(p["p50_ms"], p["p99_ms"], p["max_ms"], unit=" ms")
        return f"{latency} (n = {p['count']:,})"

    def memory(kb: int) -> str:
        return f"{kb / 1024:,.1f} MiB"

    login = sessions["latency"]
    rows = [
        ("sessions opened / failed", _slash(sessions["opened"], sessions["failed"])),
        (
            "time to open them",
            f"{sessions['seconds']:.1f} s, {sessions['per_second']:,.0f} handshakes/s",
        ),
        (
            "one login, p50 / p99 / max",
            _slash(login["p50_ms"], login["p99_ms"], login["max_ms"], unit=" ms"),
        ),
        ("daemon CPU per login", f"{sessions['daemon_cpu_ms_each']:.1f} ms"),
        ("PING p50 / p99 / max, no sessions", ping("before")),
        ("PING, while sessions open", ping("connecting")),
        ("PING, sessions idle", ping("idle")),
        ("PING, messages flowing", ping("flow")),
        ("PING, pushes draining", ping("drain")),
        ("PING, every session's last ACK at once", ping("ack")),
        ("PING, sessions closing", ping("closing")),
        ("RSS before connecting", memory(rss["before"])),
        (
            f"RSS with {sessions['opened']:,} idle sessions",
            f"{memory(rss['idle'])}, {rss['per_session']:.0f} KiB a session",
        ),
        ("RSS peak while messages flow", memory(rss["peak_flow"])),
        ("RSS after the flow, sessions open", memory(rss["after_flow"])),
        ("RSS after every session closed", memory(rss["closed"])),
        ("MSGs offered / sent", _slash(flow["offered"], flow["sent"])),
        (
            "MSGs sent a second",
            f"{flow['sent_per_second']:,.0f} over {flow['seconds']:.1f} s",
        ),
        (
            "MSG replies",
            ", ".join(
                f"{c}: {n:,}" for c, n in sorted(figures["replies"]["MSG"].items())
            ),
        ),
        (
            "other replies",
            ", ".join(
                f"{c}: {n:,}" for c, n in sorted(figures["replies"]["other"].items())
            ),
        ),
        ("pushes drained after the last MSG", f"{flow['drain_seconds']:.1f} s"),
        (
            "CPU while messages flow, daemon / clients",
            f"{100 * flow['daemon_cpu_share']:.0f}% / "
            f"{100 * flow['clients_cpu_share']:.0f}% of a core",
        ),
        (
            "messages confirmed / received / missing",
            _slash(
                delivery["messages_confirmed"],
                delivery["messages_received"],
                delivery["messages_missing"],
            ),
        ),
        (
            "pushes expected / received / missing",
            _slash(
                delivery["deliveries_expected"],
                delivery["deliveries_received"],
                delivery["deliveries_missing"],
            ),
        ),
        (
            "pushes duplicated / redelivered / unconfirmed / altered",
            _slash(
                delivery["deliveries_duplicated"],
                delivery["deliveries_redelivered"],
                delivery["pushes_not_confirmed"],
                delivery["pushes_altered"],
            ),
        ),
        (
            "sessions dropped by the daemon",
            str(sum(figures["sessions_dropped"].values())),
        ),
        (
            "from QUIT to the daemon holding no session",
            f"{figures['closing_seconds']:.1f} s, "
            f"{figures['daemon_sockets_after_close']} sockets left",
        ),
        (
            "daemon log: tracebacks / unhandled / refused / dropped",
            _slash(
                *(
                    log[k]["count"]
                    for k in ("tracebacks", "unhandled", "refused", "dropped")
                )
            ),
        ),
    ]
    lines = ["| what | figure |", "|---|---|"]
    lines += [f"| {what} | {figure} |" for what, figure in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sessions", type=int, default=1000, help="sessions held at once"
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="client processes holding them"
    )
    parser.add_argument(
        "--identities",
        type=int,
        default=50,
        help="identities the sessions are spread over",
    )
    parser.add_argument(
        "--rate", type=float, default=500, help="MSGs a second, across all workers"
    )
    parser.add_argument(
        "--seconds", type=float, default=20, help="how long messages flow"
    )
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=0.1,
        help="seconds between the probe's PINGs",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="handshakes each worker has in flight at once",
    )
    parser.add_argument(
        "--ack-interval",
        type=float,
        default=1.0,
        help="seconds between each session's ACK UPTO for what it has",
    )
    parser.add_argument(
        "--json", type=Path, help="write the figures and parameters here"
    )
    parser.add_argument(
        "--daemon-log", type=Path, help="keep a copy of the daemon's log here"
    )
    arguments = parser.parse_args()
    if not 0 < arguments.workers <= arguments.sessions or arguments.identities < 1:
        parser.error("every worker needs a session, and there must be an identity")
    # Each session is a file descriptor in the daemon and in its worker;
    # the daemon, started later, inherits the limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="secmsg-bench-") as scratch:
        figures = run(arguments, Path(scratch))
    python = sys.version.split()[0]
    print(f"machine: {os.cpu_count()} cores, Python {python}, {ssl.OPENSSL_VERSION}")
    print(
        f"{arguments.sessions:,} sessions over {arguments.identities} identities, "
        f"{arguments.workers} client processes; {arguments.rate:,.0f} MSGs/s for "
        f"{arguments.seconds:g} s\n"
    )
    print(_table(figures))
    problems = {
        "sessions that failed to open": figures["sessions"]["failures"],
        "PINGs that failed": figures["ping_failures"],
        "sessions the daemon dropped": list(figures["sessions_dropped"].items()),
        **{f"daemon log, {k}": v["examples"] for k, v in figures["daemon_log"].items()},
    }
    for what, examples in problems.items():
        for example in examples[:3]:
            print(f"\n{what}: {example}")
    if arguments.json:
        parameters = {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(arguments).items()
        }
        arguments.json.write_text(
            json.dumps({"parameters": parameters, "figures": figures}, indent=2)
        )


if __name__ == "__main__":
    main()
