"""
How many messages per second the message store commits, and what group
commit is worth; then the same through the real daemon over TLS.

    python bench/store_throughput.py [--messages N] [--clients C]

1. The store alone: N messages accepted through the SQLite store's worker
   thread, once with group commit (every job waiting shares a commit) and
   once with one commit per message, as a store without it would do.
2. The daemon: a development instance in a temporary directory, the daemon
   on a loopback port, C clients each streaming N/C messages (pipelined)
   to an identity that is offline, so that every message is stored for
   later; the rate is 250 replies per second across all clients.

Durability is the same in both: synchronous=FULL, an fsync per commit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

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
        lambda c: ThreadWorker(c, lambda *_: fired.release(), batch_limit),
        Clock(),
    )
    store.open()
    now = datetime.now(UTC)
    start = time.perf_counter()
    for n in range(messages):
        store.accept(Draft(Kind.DIRECT, "alice", "bob", f"message {n}", now), {"bob"})
    for _ in range(messages):
        fired.acquire()
    elapsed = time.perf_counter() - start
    store.close()
    return messages / elapsed


def daemon_rate(directory: Path, messages: int, clients: int) -> float:
    """
    250 replies per second from the real daemon, across C pipelining
    clients sending to an offline identity.
    """
    instance = directory / "instance"
    subprocess.run([BIN / "secmsg", "init", instance], check=True, capture_output=True)
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
            instance / "secmsg.toml",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port = _listening_port(daemon)
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
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="secmsg-bench-") as scratch:
        directory = Path(scratch)
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        grouped = store_rate(directory, arguments.messages, 512)
        single = store_rate(directory, arguments.messages // 10, 1)
        rate = daemon_rate(directory, arguments.messages, arguments.clients)
        rows = [
            ("store, group commit", grouped),
            ("store, one commit per message", single),
            (f"daemon, {arguments.clients} TLS clients pipelining", rate),
        ]
        for what, per_second in rows:
            print(f"{what:<36} {per_second:10,.0f} messages/s")


if __name__ == "__main__":
    main()
