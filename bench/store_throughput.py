"""
How many messages per second the message store commits, and what group
commit and the commit delay are worth; then the same through the real
daemon over TLS.

    python bench/store_throughput.py [--messages N] [--clients C]
        [--loads 500,2000,8000] [--delays 0,0.5,1,2] [--seconds S]

1. The store alone: N messages accepted through the SQLite store's worker
   thread, once with group commit (every job waiting shares a commit) and
   once with one commit per message, as a store without it would do.
2. The store at offered loads: messages offered at each rate for S
   seconds, at random moments (exponential gaps, as from many independent
   clients), through the worker with each commit delay: commits a second,
   messages a commit, the process's CPU per message (the offering thread's
   share included, alike for every delay), and the time from offer to
   commit (p50, p99).
3. The daemon: a development instance in a temporary directory, the daemon
   on a loopback port, C clients each streaming N/C messages (pipelined)
   to an identity that is offline, so that every message is stored for
   later; the rate is 250 replies per second across all clients, with
   each commit delay given.

Durability is the same in all three: synchronous=FULL, an fsync per commit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import select
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from secmsg.daemon.store.sqlite import SQLiteStore
from secmsg.daemon.store.worker import ThreadWorker
from secmsg.messages import Draft, Kind

BIN = Path(sys.executable).parent


def store_rate(directory: Path, messages: int, batch_limit: int) -> float:
    """
    Messages per second the store commits with the given batch limit.
    """
    fired = threading.Semaphore(0)
    store = SQLiteStore(
        directory / f"batch-{batch_limit}.db",
        lambda c: ThreadWorker(c, _run_here, batch_limit),
        Clock(),
    )
    store.open()
    now = datetime.now(UTC)
    start = time.perf_counter()
    for n in range(messages):
        draft = Draft(Kind.DIRECT, "alice", "bob", f"message {n}", now)
        store.accept(draft, {"bob"}).addBoth(lambda _: fired.release())
    # A batch's outcomes come back in one call; count the messages in it.
    for _ in range(messages):
        fired.acquire()
    elapsed = time.perf_counter() - start
    store.close()
    return messages / elapsed


def _run_here(function: Any, *arguments: Any) -> None:
    """
    Fire a batch's Deferreds on the worker's own thread: there is no
    reactor here to hand them to.
    """
    function(*arguments)


@dataclass(frozen=True)
class Paced:
    """
    What the store did with a load offered at a steady rate.
    """

    commits_per_second: float
    messages_per_commit: float
    cpu_per_message: float
    thread_cpu_per_message: float
    p50: float
    p99: float


def paced_run(directory: Path, rate: int, seconds: float, delay_ms: float) -> Paced:
    """
    Offer messages at C{rate} a second for C{seconds}, at random moments,
    to a store whose commits wait up to C{delay_ms} for company.
    """
    handed_back = 0

    def hand_back(function: Any, *arguments: Any) -> None:
        # One hand-back a committed batch: the count of commits.
        nonlocal handed_back
        handed_back += 1
        function(*arguments)

    workers: list[ThreadWorker] = []

    def start_worker(connection: sqlite3.Connection) -> ThreadWorker:
        workers.append(
            ThreadWorker(connection, hand_back, commit_delay=delay_ms / 1000)
        )
        return workers[0]

    store = SQLiteStore(
        directory / f"paced-{rate}-{delay_ms}.db", start_worker, Clock()
    )
    store.open()
    thread_cpu = _thread_time(workers[0])
    handed_back = 0
    count = int(rate * seconds)
    latencies: list[float] = []
    fired = threading.Semaphore(0)
    gaps = random.Random(rate)  # noqa: S311 -- the moments of a load, no secret
    now = datetime.now(UTC)
    cpu, start = time.process_time(), time.perf_counter()
    due = start
    for n in range(count):
        due += gaps.expovariate(rate)
        if (pause := due - time.perf_counter()) > 0:
            time.sleep(pause)
        offered = time.perf_counter()
        done = store.accept(Draft(Kind.DIRECT, "alice", "bob", f"m {n}", now), ["bob"])
        done.addCallback(lambda _, t=offered: latencies.append(time.perf_counter() - t))
        done.addBoth(lambda _: fired.release())
    for _ in range(count):
        fired.acquire()
    cpu = time.process_time() - cpu
    elapsed = time.perf_counter() - start
    commits = handed_back
    thread_cpu = _thread_time(workers[0]) - thread_cpu
    store.close()
    latencies.sort()
    return Paced(
        commits / elapsed,
        count / commits,
        cpu / count,
        thread_cpu / count,
        latencies[len(latencies) // 2],
        latencies[int(len(latencies) * 0.99)],
    )


def _thread_time(worker: ThreadWorker) -> float:
    """
    The CPU time the worker's thread has spent, asked of the thread itself.
    """
    spent: list[float] = []
    answered = threading.Event()
    asked = worker.submit(lambda _: time.thread_time())
    asked.addCallback(spent.append).addCallback(lambda _: answered.set())
    answered.wait()
    return spent[0]


def daemon_rate(directory: Path, messages: int, clients: int, delay_ms: float) -> float:
    """
    250 replies per second from the real daemon, across C pipelining
    clients sending to an offline identity, its commits waiting up to
    C{delay_ms} for company.
    """
    instance = Path(tempfile.mkdtemp(dir=directory)) / "instance"
    subprocess.run([BIN / "secmsg", "init", instance], check=True, capture_output=True)
    config = instance / "secmsg.toml"
    # Past 10,000 messages waiting for bob, the default limit, they get 507.
    config.write_text(
        config.read_text()
        + f"commit-delay = {delay_ms}\nmailbox-max-waiting = 1000000000\n"
    )
    # The development policy's rate (20 commands a second) would measure
    # the rate limit, not the store.
    policy = instance / "policy.toml"
    policy.write_text(policy.read_text().replace("\nrate = 20\n", "\nrate = 1e9\n"))
    for n in range(clients):
        subprocess.run(
            [BIN / "secmsg", "pki", "--dir", instance, "issue", f"sender{n}"],
            check=True,
            capture_output=True,
        )
    daemon = subprocess.Popen(
        [
            BIN / "twistd",
            "-n",
            "--pidfile=",
            "secmsg",
            "--config",
            config,
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port = _listening_port(daemon)
        # Its log goes on (each session's login, for one): read it, or the
        # daemon stops at a full pipe.
        log = instance / "daemon.log"
        threading.Thread(target=_copy, args=(daemon.stdout, log), daemon=True).start()
        each = messages // clients
        stream = b"".join(b"MSG bob benchmark message %d\n" % n for n in range(each))
        sockets = [_connect(instance, f"sender{n}", port) for n in range(clients)]
        threads = [
            threading.Thread(target=_stream, args=(s, stream, each)) for s in sockets
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        for s in sockets:
            s.close()
        return each * clients / elapsed
    finally:
        daemon.terminate()
        daemon.wait()


def _listening_port(daemon: subprocess.Popen[str]) -> int:
    for line in daemon.stdout:
        if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
            return int(match.group(1))
    raise SystemExit("the daemon did not start")


def _copy(lines: Iterable[str], path: Path) -> None:
    with path.open("w") as copy:
        copy.writelines(lines)


def _connect(instance: Path, name: str, port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=instance / "ca.pem")
    context.load_cert_chain(
        instance / "clients" / f"{name}.pem", instance / "clients" / f"{name}.key"
    )
    connection = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port)), server_hostname="localhost"
    )
    greeting = b""
    while not greeting.endswith(b"\n"):
        greeting += connection.recv(1)
    return connection


def _stream(connection: ssl.SSLSocket, data: bytes, replies: int) -> None:
    """
    Send everything while reading replies, on one thread, until every
    message has its 250.
    """
    connection.setblocking(False)
    unsent = memoryview(data)
    buffer = b""
    seen = 0
    while seen < replies:
        readable, writable, _ = select.select(
            [connection], [connection] if unsent else [], [], 60
        )
        if writable:
            with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                unsent = unsent[connection.send(unsent[:65536]) :]
        if readable:
            try:
                chunk = connection.recv(65536)
                while connection.pending():
                    chunk += connection.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                if not line.startswith(b"250 "):
                    raise SystemExit(f"unexpected reply: {line!r}")
            seen += len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--messages", type=int, default=20_000, help="messages in each run"
    )
    parser.add_argument(
        "--clients", type=int, default=4, help="TLS clients sending to the daemon"
    )
    parser.add_argument(
        "--loads", default="500,2000,8000", help="offered messages a second, paced"
    )
    parser.add_argument(
        "--delays", default="0,0.5,1,2", help="commit delays in milliseconds"
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="seconds each paced run offers"
    )
    arguments = parser.parse_args()
    loads = [int(load) for load in arguments.loads.split(",")]
    delays = [float(delay) for delay in arguments.delays.split(",")]
    with tempfile.TemporaryDirectory(prefix="secmsg-bench-") as scratch:
        directory = Path(scratch)
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        grouped = store_rate(directory, arguments.messages, 512)
        single = store_rate(directory, arguments.messages // 10, 1)
        print(f"{'store, group commit':<44} {grouped:10,.0f} messages/s")
        print(f"{'store, one commit per message':<44} {single:10,.0f} messages/s")
        _print_paced(directory, loads, delays, arguments.seconds)
        for delay in delays:
            rate = daemon_rate(directory, arguments.messages, arguments.clients, delay)
            what = f"daemon, {arguments.clients} TLS clients, commit-delay {delay:g}"
            print(f"{what:<44} {rate:10,.0f} messages/s")


def _print_paced(
    directory: Path, loads: list[int], delays: list[float], seconds: float
) -> None:
    print(
        "offered/s  delay ms  commits/s  messages/commit  CPU us/message"
        "  of which store thread  p50 ms  p99 ms"
    )
    for load in loads:
        for delay in delays:
            run = paced_run(directory, load, seconds, delay)
            print(
                f"{load:9,}  {delay:8g}  {run.commits_per_second:9,.0f}"
                f"  {run.messages_per_commit:15.1f}"
                f"  {run.cpu_per_message * 1e6:14.0f}"
                f"  {run.thread_cpu_per_message * 1e6:21.0f}"
                f"  {run.p50 * 1e3:6.2f}  {run.p99 * 1e3:6.2f}"
            )


if __name__ == "__main__":
    main()
