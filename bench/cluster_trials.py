"""
The cluster's promise put to the test, over and over: nothing a daemon
confirmed with C{250} is lost when a daemon is killed, Redis restarts or
PostgreSQL restarts in the middle of a stream.

    .venv/bin/python -m bench.cluster_trials [--kills N] [--redis N]
        [--postgres N]

Each trial, on one PostgreSQL and one Redis (L{bench.cluster_nodes}) and
a database of its own: daemons A and B; bob in a session on B; alice on A
streaming C{MSG bob} with a bounded number in flight. After
L{FAULT_AFTER} confirmations the fault comes, while she goes on sending:

- kill: SIGKILL of A (her daemon: her stream ends) or of B (bob's), in
  turn;
- redis: Redis killed and started again, empty, on its port;
- postgres: PostgreSQL shut down, and started again L{OUTAGE} seconds
  later; what alice sends meanwhile is refused with C{503}, confirmed
  nothing, and counts for nothing.

She stops once L{AFTER_FAULT} more were confirmed after the fault was
over. Then bob logs in again, on a daemon still running, and collects
what he is owed. A message is lost if alice read its C{250} and bob was
never sent it, in either session. The counts are printed per kind; the
exit status is 1 if anything was lost or a trial did not end within
L{TRIAL_SECONDS}. C{make cluster-trials} runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import select
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.cluster_nodes import Cluster, LineSession
from bench.servers import SecmsgServer

SENDER = "alice"
RECIPIENT = "bob"

IN_FLIGHT = 50
"""Messages alice may have sent and not yet had answered."""

FAULT_AFTER = 200
AFTER_FAULT = 200
"""Confirmations before the fault, and after it is over."""

OUTAGE = 1.0
"""Seconds PostgreSQL stays down."""

TRIAL_SECONDS = 60.0
QUIET_SECONDS = 3.0
"""Most seconds a trial may take, and how long bob waits for more once
nothing comes, before what he lacks is counted lost."""

_PUSH = re.compile(r"(?:REDELIVERED )?MSG (\d+) ")


@dataclass(frozen=True)
class Fault:
    """
    What a trial does to the cluster mid-stream, and where bob logs in
    again afterwards (a daemon that still runs).
    """

    what: str
    inject: Callable[[], None]
    survivor: SecmsgServer


@dataclass(frozen=True)
class Faults:
    """
    The faults a trial may inject into its cluster, with daemons A and B;
    C{index} is the trial's number among those of its kind.
    """

    cluster: Cluster
    a: SecmsgServer
    b: SecmsgServer
    index: int

    def kill(self) -> Fault:
        """
        SIGKILL of A, alice's daemon, in even trials, of B, bob's, in odd.
        """
        victim, survivor, name = (
            (self.a, self.b, "A") if self.index % 2 == 0 else (self.b, self.a, "B")
        )

        def inject() -> None:
            victim.process.kill()
            victim.process.wait()

        return Fault(f"kill -9 of {name}", inject, survivor)

    def redis(self) -> Fault:
        redis = self.cluster.redis

        def inject() -> None:
            redis.kill()
            redis.start()

        return Fault("Redis restarted", inject, self.b)

    def postgres(self) -> Fault:
        postgres = self.cluster.postgres

        def inject() -> None:
            postgres.halt()
            time.sleep(OUTAGE)
            postgres.start()

        return Fault("PostgreSQL restarted", inject, self.b)


KINDS = ("kill", "redis", "postgres")


@dataclass
class Stream:
    """
    What alice's stream saw: the ids confirmed, how many were answered
    otherwise (C{503} while the database was down), whether it ended by
    itself (her daemon died) or as planned, and when the fault was over.
    """

    confirmed: set[int] = field(default_factory=set)
    unconfirmed: int = 0
    finished: bool = False
    sent: int = 0
    answered: int = 0
    after_fault: int = 0

    def read(self, lines: list[bytes], recovered: bool) -> None:
        for line in lines:
            if not (line[:3].isdigit() and line[3:4] == b" "):
                continue
            self.answered += 1
            if line[:3] == b"250":
                self.confirmed.add(int(line.split()[1]))
                self.after_fault += recovered
            else:
                self.unconfirmed += 1


def stream(session: LineSession, fault: threading.Thread, deadline: float) -> Stream:
    """
    Send C{MSG bob} and read the replies on one thread (an SSL connection
    is not to be read and written from two), starting C{fault} after
    L{FAULT_AFTER} confirmations; stop once L{AFTER_FAULT} more came after
    it was over and all were answered, or when the connection ends.
    """
    connection = session.connection
    connection.setblocking(False)
    seen = Stream()
    outbound, buffer = b"", b""
    while time.monotonic() < deadline:
        recovered = fault.ident is not None and not fault.is_alive()
        enough = recovered and seen.after_fault >= AFTER_FAULT
        if enough and seen.answered == seen.sent:
            seen.finished = True
            return seen
        room = 0 if enough else IN_FLIGHT - (seen.sent - seen.answered)
        outbound += b"".join(
            b"MSG %s trial %d\n" % (RECIPIENT.encode(), n)
            for n in range(seen.sent, seen.sent + max(room, 0))
        )
        seen.sent += max(room, 0)
        try:
            outbound, chunk = _exchange(connection, outbound)
        except OSError:
            seen.finished = True
            return seen
        *lines, buffer = (buffer + chunk).split(b"\n")
        seen.read(lines, recovered)
        if fault.ident is None and len(seen.confirmed) >= FAULT_AFTER:
            fault.start()
    return seen


def _exchange(connection: ssl.SSLSocket, outbound: bytes) -> tuple[bytes, bytes]:
    """
    One turn of the stream: write what the connection takes of
    C{outbound}, read what has come; what is left to write, and what was
    read. A connection that has ended raises L{OSError}.
    """
    readable = [connection] if not connection.pending() else []
    writers = [connection] if outbound else []
    wait = 0.0 if connection.pending() else 0.1
    ready, writable, _ = select.select(readable, writers, [], wait)
    if writable:
        with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
            outbound = outbound[connection.send(outbound[:16384]) :]
    chunk = b""
    if ready or connection.pending():
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the session")
            while connection.pending():
                chunk += connection.recv(65536)
    return outbound, chunk


class Collector(threading.Thread):
    """
    bob's session during the stream, read on a thread of its own: the ids
    pushed to it.
    """

    def __init__(self, session: LineSession) -> None:
        super().__init__(daemon=True)
        self.session = session
        self.received: set[int] = set()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and not self.session.ended:
            line = self.session.readline(time.monotonic() + 0.2)
            if line is not None and (match := _PUSH.match(line)):
                self.received.add(int(match.group(1)))

    def stop(self) -> set[int]:
        self.stopping.set()
        self.join()
        self.session.close()
        return self.received


def collect(session: LineSession, owed: set[int], deadline: float) -> set[int]:
    """
    The ids pushed to bob at his login, until he has every one he is
    owed, nothing comes for L{QUIET_SECONDS}, or C{deadline} passes.
    """
    received: set[int] = set()
    while not owed <= received:
        line = session.readline(min(deadline, time.monotonic() + QUIET_SECONDS))
        if line is None:
            break
        if match := _PUSH.match(line):
            received.add(int(match.group(1)))
    return received


@dataclass(frozen=True)
class Outcome:
    kind: str
    what: str
    confirmed: int
    unconfirmed: int
    lost: int
    finished: bool
    seconds: float

    def line(self) -> str:
        ended = "" if self.finished else ", did not end in time"
        return (
            f"{self.kind}: {self.what}: {self.confirmed} confirmed, "
            f"{self.unconfirmed} refused, {self.lost} lost, "
            f"{self.seconds:.1f} s{ended}"
        )


def trial(cluster: Cluster, kind: str, index: int) -> Outcome:
    """
    One trial of C{kind}, on daemons and a database of its own.
    """
    started = time.monotonic()
    deadline = started + TRIAL_SECONDS
    database = cluster.new_database()
    a = cluster.node(f"a{index}", database)
    b = cluster.node(f"b{index}", database)
    fault: Fault = getattr(Faults(cluster, a, b, index), kind)()
    injecting = threading.Thread(target=fault.inject)
    try:
        live = Collector(cluster.session(b, RECIPIENT))
        live.start()
        sender = cluster.session(a, SENDER)
        seen = stream(sender, injecting, deadline)
        sender.close()
        received = live.stop()
        again = cluster.session(fault.survivor, RECIPIENT)
        received |= collect(again, seen.confirmed, deadline)
        again.close()
    finally:
        if injecting.ident is not None:
            injecting.join()
        a.stop()
        b.stop()
    return Outcome(
        kind,
        fault.what,
        len(seen.confirmed),
        seen.unconfirmed,
        len(seen.confirmed - received),
        seen.finished and time.monotonic() < deadline,
        time.monotonic() - started,
    )


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kill -9 trials")
    parser.add_argument("--redis", type=int, default=5, help="Redis restarts")
    parser.add_argument("--postgres", type=int, default=5, help="PostgreSQL restarts")
    options = parser.parse_args(arguments)
    counts = dict(
        zip(KINDS, (options.kills, options.redis, options.postgres), strict=True)
    )
    outcomes: list[Outcome] = []
    with (
        tempfile.TemporaryDirectory(prefix="secmsg-cluster-trials-") as scratch,
        Cluster(Path(scratch), [SENDER, RECIPIENT]) as cluster,
    ):
        for kind, count in counts.items():
            for index in range(count):
                outcomes.append(trial(cluster, kind, index))
                print(outcomes[-1].line(), flush=True)
    return summary(outcomes)


def summary(outcomes: list[Outcome]) -> int:
    """
    Print each kind's totals and the whole's; 1 if anything was lost or a
    trial did not end in time, else 0.
    """
    for kind in KINDS:
        mine = [o for o in outcomes if o.kind == kind]
        if mine:
            print(
                f"{kind}: {len(mine)} trials, "
                f"{sum(o.confirmed for o in mine)} confirmed, "
                f"{sum(o.lost for o in mine)} lost"
            )
    lost = sum(o.lost for o in outcomes)
    unfinished = sum(not o.finished for o in outcomes)
    print(f"total: {len(outcomes)} trials, {lost} lost, {unfinished} did not end")
    return 1 if lost or unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
