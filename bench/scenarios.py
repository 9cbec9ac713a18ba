"""
The scenarios, each run the same way against every server: client worker
processes open their sessions, the parent starts them together, they warm
up, then count what happens inside a measured window while the parent reads
the server's CPU time at the window's two ends.

The load is spread over several processes (--workers) so that no one
client process is the bottleneck; on a two-core machine they still share
the cores with the server, so each result also says how busy the clients
were. A closed loop bounds what is in flight: a sender sends no more while
C{in_flight} of its messages have not yet arrived (or, for the durable
scenario, not yet been confirmed), so that saturation shows as a rate, not
as a queue that grows until the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import resource
import ssl
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from bench.clients import (
    SERVER_NAME,
    HandshakeSession,
    MqttSession,
    Recorder,
    SecmsgSession,
    Session,
    client_context,
    payload,
)
from bench.servers import ROOM, Credentials
from secmsg.daemon.limits import raise_open_file_limit

TICK = 0.002
"""Seconds between a paced sender's batches at a fixed offered load."""

DRAIN_SECONDS = 5.0
"""Most seconds to wait, after the window, for messages still in flight."""

START_MARGIN = 0.3
"""Seconds from the parent's go to the start, for every worker to hear it."""

ANSWER_TIMEOUT = 120.0
"""Most seconds a worker may take over one request (opening thousands of
sessions, or a run with its warm-up and drain): past it, something hangs."""


@dataclass(frozen=True)
class Target:
    """
    A running server as a worker sees it: which protocol, where, which TLS
    version, and the certificates to present.
    """

    protocol: str
    port: int
    credentials: Credentials
    tls: str = "1.3"


class Contexts:
    """
    One client TLS context per identity, made once per worker.
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        self._made: dict[str, ssl.SSLContext] = {}

    def __getitem__(self, name: str) -> ssl.SSLContext:
        if name not in self._made:
            certificate, key = self._target.credentials.client(name)
            self._made[name] = client_context(
                certificate, key, self._target.credentials.ca, self._target.tls
            )
        return self._made[name]


_connections = Counter[str]()
"""Connections made per identity in this process, which with the process's
id make each MQTT client id unique (a broker closes the older of two
sessions with the same client id)."""


async def open_session(
    target: Target,
    contexts: Contexts,
    name: str,
    recorder: Recorder,
    *,
    qos: int = 0,
    clean: bool = True,
    kind: type[SecmsgSession] = SecmsgSession,
) -> Session:
    """
    A session logged in as NAME: secmsg's greeting read (on a session of
    C{kind}), MQTT's CONNACK received, or the TLS handshake done for
    C{openssl s_server}.
    """
    loop = asyncio.get_running_loop()
    _connections[name] += 1
    if target.protocol == "secmsg":
        factory: Any = lambda: kind(recorder)  # noqa: E731
    elif target.protocol == "mqtt":
        client_id = f"{name}-{os.getpid()}-{_connections[name]}" if clean else name
        factory = lambda: MqttSession(recorder, client_id, qos, clean)  # noqa: E731
    else:
        factory = lambda: HandshakeSession(recorder)  # noqa: E731
    _, session = await loop.create_connection(
        factory,
        "127.0.0.1",
        target.port,
        ssl=contexts[name],
        server_hostname=SERVER_NAME,
    )
    await session.ready
    return session


def _cpu_seconds_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Timing:
    """
    When a run starts (CLOCK_MONOTONIC, ns) and how long it warms up and
    measures (s).
    """

    start_ns: int
    warmup: float
    measure: float

    @property
    def window_start(self) -> int:
        return self.start_ns + int(self.warmup * 1e9)

    @property
    def window_end(self) -> int:
        return self.window_start + int(self.measure * 1e9)


async def until(when_ns: int) -> None:
    """
    Sleep until a moment of CLOCK_MONOTONIC, in ns (at once if it is past).
    """
    await asyncio.sleep(max(0.0, (when_ns - time.monotonic_ns()) / 1e9))


def _stamps(
    first: int, count: int, rate: float, started: int, previous: int, now: int
) -> list[int]:
    """
    The send times a paced sender writes into messages C{first} to
    C{first + count - 1}: a message that was due before the sender's last
    turn, and leaves only now, was held back for want of credit, so it
    carries the moment it was due and the server is charged for the wait;
    one due since then leaves on time, and carries now (the sender's own
    pacing, a tick at most, is not the server's to answer for).
    """
    stamps = []
    for index in range(first, first + count):
        # Message n is due once n + 1 messages are, as the sender counts.
        due = started + int((index + 1) * 1e9 / rate)
        stamps.append(due if due < previous else now)
    return stamps


async def window_cpu(timing: Timing) -> float:
    """
    This process's CPU time inside the measured window, in seconds.
    """
    await until(timing.window_start)
    start = _cpu_seconds_self()
    await until(timing.window_end)
    return _cpu_seconds_self() - start


@dataclass(frozen=True)
class FlowPlan:
    """
    One worker's share of a message flow.

    @ivar senders: (sender, recipient) pairs; the recipient is an identity,
        or the room when C{room} is set.
    @ivar receivers: identities this worker receives as, one session each;
        for a direct flow, the recipients of this worker's senders are
        among them, so that a sender can see its messages arrive.
    @ivar offline: identities that must be known to the server as offline
        recipients before the flow starts (the durable scenario).
    @ivar rate: messages a second per sender, or L{None} for as many as
        the closed loop allows.
    @ivar in_flight: messages a sender may have in flight.
    @ivar qos: the MQTT QoS of its messages.
    @ivar receiving: where the receivers' sessions are, if not at
        C{target} (another daemon of a cluster, L{bench.cluster}).
    @ivar broadcast: the senders broadcast (secmsg's C{BROADCAST}, a
        publish to a topic every session reads in MQTT), and are held back
        by their own confirmations.
    """

    target: Target
    senders: list[tuple[str, str]]
    receivers: list[str]
    room: bool = False
    broadcast: bool = False
    offline: list[str] = field(default_factory=list)
    rate: float | None = None
    in_flight: int = 100
    qos: int = 0
    receiving: Target | None = None

    def worker(self) -> FlowWorker:
        return FlowWorker(self)


class FlowWorker:
    """
    Opens a worker's sessions, then sends and receives as its plan says.
    """

    def __init__(self, plan: FlowPlan) -> None:
        self._plan = plan
        self._contexts = Contexts(plan.target)
        self._recorder = Recorder()
        self._receivers: dict[str, Session] = {}
        self._senders: list[tuple[Session, str, Session]] = []
        self._sent_in_window = 0

    async def prepare(self) -> dict[str, Any]:
        plan = self._plan
        for name in plan.offline:
            await self._register_offline(name)
        for name in plan.receivers:
            session = await open_session(
                plan.receiving or plan.target,
                self._contexts,
                name,
                self._recorder,
                qos=plan.qos,
            )
            if plan.broadcast:
                await session.hear_broadcasts()
            elif plan.room:
                await session.enter(ROOM)
            else:
                await session.listen(name)
            self._receivers[name] = session
        for sender, destination in plan.senders:
            session = await open_session(
                plan.target, self._contexts, sender, self._recorder, qos=plan.qos
            )
            if plan.broadcast:
                # A broadcast's sender has its own copy, as secmsg sends it.
                await session.hear_broadcasts()
            elif plan.room and plan.target.protocol == "secmsg":
                await session.enter(ROOM)
            watched = self._watched(session, destination)
            self._senders.append((session, destination, watched))
        return {"sessions": len(self._receivers) + len(self._senders)}

    async def _register_offline(self, name: str) -> None:
        """
        Make NAME a recipient that is away: for MQTT, a session that is not
        clean, subscribed at QoS 1 and then disconnected, so that the broker
        queues its messages; secmsg's policy lists it already.
        """
        if self._plan.target.protocol != "mqtt":
            return
        session = await open_session(
            self._plan.target,
            self._contexts,
            name,
            self._recorder,
            qos=1,
            clean=False,
        )
        await session.listen(name)
        session.close()
        await session.closed

    def _watched(self, sender: Session, destination: str) -> Session:
        """
        The session whose progress bounds a sender's: its own confirmations
        for offline recipients, else the session it sends to (for a room,
        the first member in this worker).
        """
        if self._confirmed_only:
            return sender
        if self._plan.room:
            return next(iter(self._receivers.values()))
        return self._receivers[destination]

    @property
    def _confirmed_only(self) -> bool:
        """
        Whether a sender's progress is what the server has confirmed (for
        offline recipients, or a broadcast's thousands), not what arrived.
        """
        return bool(self._plan.offline) or self._plan.broadcast

    def _progress(self, watched: Session) -> int:
        return watched.confirmed if self._confirmed_only else watched.received

    async def run(self, timing: Timing) -> dict[str, Any]:
        self._recorder.window_start = timing.window_start
        self._recorder.window_end = timing.window_end
        await until(timing.start_ns)
        senders = [
            asyncio.create_task(self._send(session, destination, watched, timing))
            for session, destination, watched in self._senders
        ]
        cpu = await window_cpu(timing)
        await asyncio.gather(*senders)
        await self._drain()
        for receiver in self._receivers.values():
            await receiver.settle()
        sessions = [*self._receivers.values(), *(s for s, _, _ in self._senders)]
        lost = sum(s.closed.done() for s in sessions)
        problems: Counter[str] = Counter()
        for session in sessions:
            problems.update(session.problems)
            session.close()
        return {
            "delivered": self._recorder.delivered,
            "confirmed": self._recorder.confirmed,
            "sent": self._sent_in_window,
            "latencies_us": self._recorder.latencies_us,
            "cpu_seconds": cpu,
            "problems": dict(problems),
            "lost_sessions": lost,
        }

    async def _send(
        self, session: Session, destination: str, watched: Session, timing: Timing
    ) -> None:
        frame = session.frame_direct
        if self._plan.room:
            frame = session.frame_say
        elif self._plan.broadcast:
            frame = session.frame_broadcast
        rate = self._plan.rate
        # At a fixed rate, up to a second's worth may be in flight.
        in_flight = self._plan.in_flight
        if rate is not None:
            in_flight = max(in_flight, math.ceil(rate))
        sent = 0
        started = previous = time.monotonic_ns()
        while (now := time.monotonic_ns()) < timing.window_end:
            if session.closed.done():
                return
            credit = in_flight - (sent - self._progress(watched))
            if rate is None:
                count = credit
                stamps = [now] * count
            else:
                due = int(rate * (now - started) / 1e9) - sent
                count = min(due, credit)
                stamps = _stamps(sent, count, rate, started, previous, now)
            previous = now
            if count > 0:
                session.send([frame(destination, payload(t)) for t in stamps])
                sent += count
                if timing.window_start <= now:
                    self._sent_in_window += count
            if rate is None:
                watched.progressed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        watched.progressed.wait(),
                        (timing.window_end - now) / 1e9,
                    )
            else:
                await asyncio.sleep(TICK)

    async def _drain(self) -> None:
        """
        Wait for what is still in flight, until nothing more comes for a
        moment, so that the messages sent late in the window have their
        latencies counted too.
        """
        deadline = time.monotonic() + DRAIN_SECONDS

        def progress() -> int:
            return sum(s.received for s in self._receivers.values()) + sum(
                s.confirmed for s, _, _ in self._senders
            )

        while time.monotonic() < deadline:
            before = progress()
            await asyncio.sleep(0.2)
            if progress() == before:
                return


@dataclass(frozen=True)
class HandshakePlan:
    """
    One worker's share of the handshake scenario: its identities, and how
    many connections it keeps in progress at once.
    """

    target: Target
    identities: list[str]
    concurrency: int

    def worker(self) -> HandshakeWorker:
        return HandshakeWorker(self)


class HandshakeWorker:
    """
    Connects, waits for the server to be ready (the greeting, CONNACK, or
    the handshake's end), closes, and again, from C{concurrency} loops.
    """

    def __init__(self, plan: HandshakePlan) -> None:
        self._plan = plan
        self._contexts = Contexts(plan.target)
        self._recorder = Recorder()
        self._latencies_us: list[float] = []
        self._completed = 0
        self._failures: Counter[str] = Counter()

    async def prepare(self) -> dict[str, Any]:
        for name in self._plan.identities:
            self._contexts[name]
        return {}

    async def run(self, timing: Timing) -> dict[str, Any]:
        await until(timing.start_ns)
        names = self._plan.identities
        loops = [
            asyncio.create_task(self._loop(names[n % len(names)], timing))
            for n in range(self._plan.concurrency)
        ]
        cpu = await window_cpu(timing)
        await asyncio.gather(*loops)
        return {
            "completed": self._completed,
            "latencies_us": self._latencies_us,
            "failures": dict(self._failures),
            "cpu_seconds": cpu,
        }

    async def _loop(self, name: str, timing: Timing) -> None:
        while (start := time.monotonic_ns()) < timing.window_end:
            try:
                session = await open_session(
                    self._plan.target, self._contexts, name, self._recorder
                )
            except OSError as failure:
                if timing.window_start <= time.monotonic_ns() < timing.window_end:
                    reason = f"{type(failure).__name__}: {str(failure)[:80]}"
                    self._failures[reason] += 1
                continue
            end = time.monotonic_ns()
            session.close()
            # Counted by when it ended, as the server's CPU time is read.
            if timing.window_start <= end < timing.window_end:
                self._completed += 1
                self._latencies_us.append((end - start) / 1000)


@dataclass(frozen=True)
class IdlePlan:
    """
    One worker's share of the idle-sessions scenario.
    """

    target: Target
    identities: list[str]
    concurrency: int

    def worker(self) -> IdleWorker:
        return IdleWorker(self)


class IdleWorker:
    """
    Opens idle sessions when asked, a few at a time (a burst of thousands
    would overflow the listen queue and measure the kernel's SYN retries),
    and holds them until told to close.
    """

    def __init__(self, plan: IdlePlan) -> None:
        self._plan = plan
        self._contexts = Contexts(plan.target)
        self._recorder = Recorder()
        self._sessions: list[Session] = []

    async def prepare(self) -> dict[str, Any]:
        return {}

    async def open(self, count: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(self._plan.concurrency)
        names = self._plan.identities
        first = len(self._sessions)

        async def one(n: int) -> Session:
            async with gate:
                return await open_session(
                    self._plan.target,
                    self._contexts,
                    names[n % len(names)],
                    self._recorder,
                )

        self._sessions += await asyncio.gather(
            *(one(n) for n in range(first, first + count))
        )
        return {"held": len(self._sessions)}

    async def close(self) -> dict[str, Any]:
        lost = sum(s.closed.done() for s in self._sessions)
        for session in self._sessions:
            session.close()
        return {"lost": lost}


def _worker_main(control: Connection, plan: Any) -> None:
    """
    A client process: does what the parent asks, one request at a time,
    and answers each with a dict (or the traceback that stopped it). The
    plan makes its worker, so that a scenario's workers may live in a
    module of their own (L{bench.flood}) without this one naming them.
    """
    raise_open_file_limit(65536)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        worker = None
        while True:
            method, arguments = await loop.run_in_executor(None, control.recv)
            if method is None:
                return
            try:
                worker = worker or plan.worker()
                answer = await asyncio.wait_for(
                    getattr(worker, method)(**arguments), ANSWER_TIMEOUT
                )
            except Exception:  # noqa: BLE001 - the parent reports it
                control.send({"error": traceback.format_exc()})
                return
            control.send(answer)

    asyncio.run(serve())


class Workers:
    """
    The client processes of one run, asked the same thing at once.
    """

    def __init__(self, plans: list[Any]) -> None:
        context = multiprocessing.get_context("fork")
        self._controls: list[Connection] = []
        self._processes: list[Any] = []
        for plan in plans:
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(child, plan))
            self._processes.append(process)
            process.start()
            # Only the worker holds its end: if it dies, the parent reads EOF.
            child.close()
            self._controls.append(parent)

    def ask(self, method: str, **arguments: Any) -> list[dict[str, Any]]:
        self.send(method, **arguments)
        return self.answers()

    def send(self, method: str, **arguments: Any) -> None:
        for control in self._controls:
            control.send((method, arguments))

    def answers(self) -> list[dict[str, Any]]:
        """
        Every worker's answer; a worker that fails, dies or says nothing
        for longer than it may stops the run with the reason.
        """
        answers = []
        for control in self._controls:
            if not control.poll(ANSWER_TIMEOUT + 10):
                raise RuntimeError("a client worker did not answer in time")
            try:
                answer = control.recv()
            except EOFError:
                raise RuntimeError("a client worker died") from None
            if "error" in answer:
                raise RuntimeError(f"a client worker failed:\n{answer['error']}")
            answers.append(answer)
        return answers

    def cpu_seconds(self) -> float:
        """
        CPU time the client processes have used, user and system: on cores
        shared with the server, what the load itself cost.
        """
        total = 0.0
        for process in self._processes:
            stat = Path(f"/proc/{process.pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for control in self._controls:
            with contextlib.suppress(OSError):
                control.send((None, {}))
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.kill()


def percentiles(latencies_us: list[float]) -> dict[str, float | None]:
    """
    p50, p99 and p99.9 in milliseconds, nearest rank (a value that was
    measured); L{None} where there is nothing to rank.
    """
    ordered = sorted(latencies_us)

    def rank(share: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[max(0, math.ceil(share * len(ordered)) - 1)] / 1000, 3)

    return {"p50_ms": rank(0.50), "p99_ms": rank(0.99), "p999_ms": rank(0.999)}


class Metered(Protocol):
    """
    Whatever the parent reads CPU time of over the window: a server, or a
    cluster's daemons or its PostgreSQL (L{bench.cluster}).
    """

    def cpu_seconds(self) -> float: ...


def measure(
    server: Metered, workers: Workers, warmup: float, seconds: float
) -> tuple[list[dict[str, Any]], float]:
    """
    Start every worker's run together and read the server's CPU time over
    the measured window; return the workers' results and that CPU time.
    """
    results, (cpu,) = measure_each([server], workers, warmup, seconds)
    return results, cpu


def measure_each(
    meters: list[Metered], workers: Workers, warmup: float, seconds: float
) -> tuple[list[dict[str, Any]], list[float]]:
    """
    As L{measure}, reading the CPU time of each of C{meters} over the window.

    What earlier scenarios wrote is put on disk first: the kernel writes
    dirty pages back some 30 s after they were written, and that writeback
    (a million-message store, a saturation run's WAL) would otherwise land
    in a later window and stall its fsyncs, charging one scenario's disk
    traffic to another's latency.
    """
    os.sync()
    timing = Timing(time.monotonic_ns() + int(START_MARGIN * 1e9), warmup, seconds)
    workers.send("run", timing=timing)
    time.sleep(max(0.0, (timing.window_start - time.monotonic_ns()) / 1e9))
    starts = [meter.cpu_seconds() for meter in meters]
    time.sleep(max(0.0, (timing.window_end - time.monotonic_ns()) / 1e9))
    ends = [meter.cpu_seconds() for meter in meters]
    return workers.answers(), [
        end - start for start, end in zip(starts, ends, strict=True)
    ]
