"""
The soak: thousands of sessions held on the real daemon for minutes while
messages and room traffic flow, with reconnect storms, a RELOAD every
30 s and the daemon killed with SIGKILL and started again every few
minutes; whether it loses a message it confirmed, whether its memory
levels off, and whether it keeps answering.

    .venv/bin/python -m bench.soak [--sessions 10000] [--seconds 600]
        [--json PATH] [--markdown PATH] [--plot PATH]

C{make soak} runs it with the defaults (about ten minutes, loopback only,
it stops by itself); C{SOAK_SESSIONS} and C{SOAK_SECONDS} change its
size. A fresh instance in a temporary directory, the daemon as
C{twistd secmsg}, and client processes (L{bench.soak_load}) that hold
the sessions and log each one in again whenever it is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import report
from bench.clients import SERVER_NAME, client_context
from bench.scenarios import Target, Workers, percentiles
from bench.servers import Credentials, SecmsgServer, make_pki
from bench.soak_load import LoadPlan
from bench.soak_plot import BEGIN, END, markdown, plot
from secmsg.daemon.limits import raise_open_file_limit

POLICY = """\
# The soak's policy: every identity may message, join and say at a rate
# that never binds; the operator's sessions may RELOAD. Each RELOAD of
# the soak flips the user role's rate, so that every session is granted
# anew.
default_roles = ["user"]

[roles.user]
commands = ["PING", "QUIT", "MSG", "JOIN", "PART", "SAY"]
rate = {rate}
burst = 1000000000

[roles.operator]
commands = ["PING", "QUIT", "RELOAD"]
rate = 1e9
burst = 1000000000

[identities]
probe = ["operator"]
operator = ["operator"]
{known}
"""

RATES = ("1e9", "5e8")

LIMITS = """
max-sessions = {sessions}
max-sessions-per-identity = {sessions}
max-sessions-per-address = {sessions}
max-handshakes = {handshakes}
max-handshakes-per-address = {handshakes}
logins-per-identity = 1000000
logins-per-address = 1000000
mailbox-max-waiting = 1000000000
mailbox-max-waiting-bytes = 1099511627776
"""
"""The session and login limits lifted, as the benchmark's are
(L{bench.servers.LIFTED_LIMITS}), but no higher than the soak needs: the
daemon raises its own limit of open files to what these call for
(max-sessions + 2 x max-handshakes + 64), as far as the hard limit lets it."""

TICK = 1.0
"""Seconds between the parent's looks at the load and the daemon."""

DRAIN_QUIET = 5.0
DRAIN_MOST = 90.0
"""After the traffic: seconds with nothing new that end the drain, and the
most it may take."""


@dataclass
class Stage:
    """
    What the soak is doing now, which every PING is filed under: the
    daemon down or its sessions coming back, a storm's logins, a RELOAD in
    flight, or none of these.
    """

    connecting: bool = True
    recovering: bool = False
    storming: bool = False
    reloading: bool = False

    @property
    def name(self) -> str:
        if self.connecting:
            return "connecting"
        if self.recovering:
            return "recovering"
        if self.storming:
            return "storm"
        if self.reloading:
            return "reload"
        return "steady"


class LineSession:
    """
    A blocking session of the parent's own (the probe's, the operator's),
    logged in again whenever the daemon is gone.
    """

    def __init__(self, credentials: Credentials, name: str, port: int) -> None:
        certificate, key = credentials.client(name)
        self._context = client_context(certificate, key, credentials.ca, "1.3")
        self._port = port
        self._connection: ssl.SSLSocket | None = None
        self._lines: Any = None

    def ask(self, line: bytes, timeout: float) -> bytes:
        """
        Send a line and return the reply's last line; raise OSError if the
        session is gone (the next ask logs in again).
        """
        if self._connection is None:
            self._login()
        assert self._connection is not None  # noqa: S101 - logged in
        self._connection.settimeout(timeout)
        try:
            self._connection.sendall(line)
            while (reply := self._lines.readline()) and reply[3:4] == b"-":
                pass
        except OSError:
            self.close()
            raise
        if not reply:
            self.close()
            raise ConnectionError("the daemon closed the session")
        return reply

    def _login(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self._port), timeout=10)
        connection = self._context.wrap_socket(raw, server_hostname=SERVER_NAME)
        lines = connection.makefile("rb")
        greeting = lines.readline()
        if not greeting.startswith(b"200 "):
            connection.close()
            raise ConnectionError(f"refused: {greeting[:80]!r}")
        self._connection, self._lines = connection, lines

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.close()
        self._connection = None


class Periodic(threading.Thread):
    """
    A thread that does one thing every so often until stopped.
    """

    def __init__(self, every: float) -> None:
        super().__init__(daemon=True)
        self._every = every
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self._every):
            self.once()

    def once(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._halt.set()
        self.join()


class Probe(Periodic):
    """
    PINGs the daemon every so often, one at a time, and files each
    answer's latency under the stage it was sent in.
    """

    def __init__(self, session: LineSession, stage: Stage, every: float) -> None:
        super().__init__(every)
        self._session = session
        self._stage = stage
        self.latencies: defaultdict[str, list[float]] = defaultdict(list)
        self.failures: defaultdict[str, int] = defaultdict(int)

    def once(self) -> None:
        stage = self._stage.name
        start = time.perf_counter()
        try:
            reply = self._session.ask(b"PING\n", 10)
        except OSError:
            self.failures[stage] += 1
            return
        if reply == b"200 PONG\n":
            self.latencies[stage].append((time.perf_counter() - start) * 1e6)
        else:
            self.failures[stage] += 1


class Reloader(Periodic):
    """
    Rewrites the policy with the user role's rate flipped and says RELOAD,
    every so often, timing the answer.
    """

    def __init__(
        self, session: LineSession, stage: Stage, every: float, policy: Path, known: str
    ) -> None:
        super().__init__(every)
        self._session = session
        self._stage = stage
        self._policy = policy
        self._known = known
        self.done: list[dict[str, Any]] = []
        self.failed: list[str] = []

    def once(self) -> None:
        rate = RATES[len(self.done) % 2 == 0]
        self._policy.write_text(POLICY.format(rate=rate, known=self._known))
        self._stage.reloading = True
        start = time.perf_counter()
        try:
            reply = self._session.ask(b"RELOAD\n", 60)
        except OSError as error:
            self.failed.append(repr(error)[:80])
            return
        finally:
            self._stage.reloading = False
        text = reply.decode(errors="replace").strip()
        if text.startswith("200 "):
            self.done.append(
                {"seconds": time.perf_counter() - start, "reply": text[:120]}
            )
        else:
            self.failed.append(text[:120])


@dataclass
class Daemon:
    """
    The daemon of the soak, on one port and one store whatever happens to
    its process.
    """

    credentials: Credentials
    directory: Path
    server: SecmsgServer | None = None
    port: int | None = None
    restarts: list[dict[str, float]] = field(default_factory=list)

    def start(self) -> None:
        self.server = SecmsgServer.start(self.credentials, self.directory, self.port)
        self.port = self.server.port

    def kill_and_restart(self) -> float:
        """
        SIGKILL, and start it again at once: the seconds it was down.
        """
        assert self.server is not None  # noqa: S101 - started
        start = time.monotonic()
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait()
        self.start()
        return time.monotonic() - start

    def cpu(self) -> float:
        assert self.server is not None  # noqa: S101 - started
        return self.server.cpu_seconds()

    def rss(self) -> int:
        assert self.server is not None  # noqa: S101 - started
        return self.server.rss_kib()


@dataclass(frozen=True)
class Shape:
    """
    How the soak's sessions are laid out, and what it does when.
    """

    sessions: int
    seconds: float
    per_identity: int
    rooms: int
    room_sessions: int
    direct_rate: float
    say_rate: float
    reload_every: float
    kill_every: float
    storm_every: float
    storm_size: int
    load_processes: int
    concurrency: int
    sample_every: float
    ping_every: float

    @property
    def identities(self) -> list[str]:
        count = max(1, self.sessions // self.per_identity)
        return [f"u{n}" for n in range(count)]


def plans(shape: Shape, credentials: Credentials, port: int) -> list[LoadPlan]:
    """
    Each load process's sessions (a share of each identity's, so that a
    message crosses from one process to another) and rates.
    """
    names = shape.identities
    target = Target("secmsg", port, credentials)
    sessions = [names[n % len(names)] for n in range(shape.sessions)]
    rooms: list[str | None] = [
        f"room{n % shape.rooms}" if n < shape.rooms * shape.room_sessions else None
        for n in range(shape.sessions)
    ]
    processes = shape.load_processes
    return [
        LoadPlan(
            target,
            sessions[p::processes],
            rooms[p::processes],
            names,
            shape.direct_rate / processes,
            shape.say_rate / processes,
            shape.concurrency,
            p,
        )
        for p in range(processes)
    ]


def total(answers: list[dict[str, Any]], key: str) -> int:
    return sum(a[key] for a in answers)


class Soak:
    """
    One soak: the daemon, the load, the probes, the schedule, and what
    they saw.
    """

    def __init__(self, shape: Shape, directory: Path) -> None:
        self.shape = shape
        self.stage = Stage()
        names = shape.identities
        self.known = "\n".join(f'{name} = ["user"]' for name in names)
        limits = LIMITS.format(
            sessions=shape.sessions + 100,
            handshakes=max(1000, 2 * shape.storm_size),
        )
        credentials = make_pki(
            directory / "pki", [*names, "probe", "operator"], names, limits
        )
        self.policy = credentials.ca.parent / "policy.toml"
        self.policy.write_text(POLICY.format(rate=RATES[0], known=self.known))
        self.daemon = Daemon(credentials, directory)
        self.samples: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}
        self._lifetime = 0
        self._start = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self._start, 1)

    def run(self) -> dict[str, Any]:
        self.daemon.start()
        time.sleep(2)
        self.figures["rss_kib_no_session"] = self.daemon.rss()
        assert self.daemon.port is not None  # noqa: S101 - started
        port = self.daemon.port
        credentials = self.daemon.credentials
        probe = Probe(
            LineSession(credentials, "probe", port), self.stage, self.shape.ping_every
        )
        reloader = Reloader(
            LineSession(credentials, "operator", port),
            self.stage,
            self.shape.reload_every,
            self.policy,
            self.known,
        )
        with Workers(plans(self.shape, credentials, port)) as workers:
            workers.ask("prepare")
            probe.start()
            try:
                self._connect(workers)
                reloader.start()
                self._traffic(workers)
                reloader.stop()
                self._drain(workers)
                held = workers.ask("status")
                self.figures["held_at_end"] = total(held, "held")
                results = workers.ask("results")
            finally:
                probe.stop()
                if reloader.is_alive():
                    reloader.stop()
        self.figures["cpu_load_seconds"] = self._load_cpu
        assert self.daemon.server is not None  # noqa: S101 - started
        self.daemon.server.stop()
        self.figures["ping"] = {
            stage: {**percentiles(values), "count": len(values)}
            for stage, values in probe.latencies.items()
        }
        self.figures["ping"]["all"] = {
            **percentiles([v for vs in probe.latencies.values() for v in vs]),
            "count": sum(len(v) for v in probe.latencies.values()),
        }
        self.figures["ping_failures"] = dict(probe.failures)
        self.figures["reloads"] = {
            "done": len(reloader.done),
            "failed": reloader.failed,
            "seconds": percentiles([r["seconds"] * 1e6 for r in reloader.done]),
            "last_reply": reloader.done[-1]["reply"] if reloader.done else None,
        }
        self.figures.update(analyse(results))
        self.figures["samples"] = self.samples
        self.figures["events"] = self.events
        self.figures["daemon_log"] = scan_log(self.daemon.directory / "secmsg.log")
        return self.figures

    def _tick(self, workers: Workers) -> list[dict[str, Any]]:
        """
        The load's status, and a sample of the daemon every few seconds.
        """
        answers = workers.ask("status")
        held, wanted = total(answers, "held"), total(answers, "wanted")
        if held >= wanted and (self.stage.recovering or self.stage.storming):
            what = "recovered" if self.stage.recovering else "storm over"
            self.events.append({"t": self.now(), "what": what})
            self.stage.recovering = self.stage.storming = False
        due = not self.samples or (
            self.now() - self.samples[-1]["t"] >= self.shape.sample_every
        )
        if due:
            with contextlib.suppress(OSError):
                self.samples.append(
                    {
                        "t": self.now(),
                        "lifetime": self._lifetime,
                        "rss_kib": self.daemon.rss(),
                        "daemon_cpu": self.daemon.cpu() + self._cpu_before,
                        "load_cpu": workers.cpu_seconds(),
                        "held": held,
                        "confirmed": total(answers, "confirmed"),
                        "pushes": total(answers, "pushes"),
                        "stage": self.stage.name,
                    }
                )
        self._load_cpu = workers.cpu_seconds()
        return answers

    _cpu_before = 0.0
    _load_cpu = 0.0

    def _connect(self, workers: Workers) -> None:
        """
        Log every session in, and time it.
        """
        start, cpu = time.monotonic(), self.daemon.cpu()
        workers.ask("connect")
        while True:
            answers = self._tick(workers)
            if total(answers, "held") >= total(answers, "wanted"):
                break
            if time.monotonic() - start > 600:
                raise RuntimeError("the sessions did not all log in in 10 minutes")
            time.sleep(TICK / 4)
        seconds = time.monotonic() - start
        logins = total(answers, "logins_done")
        self.figures["connect"] = {
            "sessions": total(answers, "held"),
            "seconds": seconds,
            "per_second": logins / seconds,
            "daemon_cpu_ms_per_login": 1000 * (self.daemon.cpu() - cpu) / logins,
        }
        self.stage.connecting = False
        self.events.append({"t": self.now(), "what": "connected"})

    def _traffic(self, workers: Workers) -> None:
        """
        Messages flow for the soak's time, with its storms and restarts.
        """
        shape = self.shape
        workers.ask("start_traffic")
        start = time.monotonic()
        self._traffic_start = self.now()
        next_kill = shape.kill_every
        next_storm = shape.storm_every / 2
        while (elapsed := time.monotonic() - start) < shape.seconds:
            self._tick(workers)
            if elapsed >= next_kill and shape.seconds - elapsed >= min(
                30, shape.kill_every / 2
            ):
                next_kill += shape.kill_every
                self._kill(workers)
            elif elapsed >= next_storm:
                next_storm += shape.storm_every
                if not (self.stage.recovering or self.stage.storming):
                    self._storm(workers)
            time.sleep(TICK)
        workers.ask("stop_traffic")
        self.figures["traffic_seconds"] = time.monotonic() - start

    def _kill(self, workers: Workers) -> None:
        self._cpu_before += self.daemon.cpu()
        self.stage.recovering = True
        down = self.daemon.kill_and_restart()
        self._lifetime += 1
        self.events.append({"t": self.now(), "what": "kill -9", "down_s": down})

    def _storm(self, workers: Workers) -> None:
        share = self.shape.storm_size // self.shape.load_processes
        self.stage.storming = True
        cut = workers.ask("storm", count=share)
        self.events.append({"t": self.now(), "what": "storm", "cut": total(cut, "cut")})

    def _drain(self, workers: Workers) -> None:
        """
        Wait for what is still on its way: every session back, every
        command answered, and no push for a while.
        """
        start = last_change = time.monotonic()
        last = -1
        while time.monotonic() - start < DRAIN_MOST:
            answers = self._tick(workers)
            pushes = total(answers, "pushes")
            if pushes != last:
                last, last_change = pushes, time.monotonic()
            settled = total(answers, "held") >= total(answers, "wanted") and not total(
                answers, "pending"
            )
            if settled and time.monotonic() - last_change > DRAIN_QUIET:
                break
            time.sleep(TICK)
        self.figures["drain_seconds"] = time.monotonic() - start


def _say_recipients(
    membership: list[tuple[str, str, int, int]],
) -> dict[str, list[tuple[str, int, int]]]:
    by_room: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for identity, room, joined, left in membership:
        by_room[room].append((identity, joined, left))
    return by_room


def analyse(results: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Every message confirmed with 250 against what was delivered: a direct
    message to its recipient, a SAY to every identity that had a session
    in the room from before it was sent until after it was confirmed
    (the daemon stores it for each); and the logins.
    """
    received: dict[str, set[int]] = defaultdict(set)
    tags: dict[int, str] = {}
    for result in results:
        for identity, ids in result["received"].items():
            received[identity] |= ids
        tags.update(result["tags"])
    rooms = _say_recipients([m for r in results for m in r["membership"]])
    confirmed = [c for r in results for c in r["confirmed"]]
    counts = defaultdict(int)
    lost_examples = []
    for message_id, kind, tag, sender, target, sent, done in confirmed:
        if kind == "MSG":
            owed = {target}
        else:
            owed = {
                identity
                for identity, joined, left in rooms[target]
                if identity != sender and joined < sent and left > done
            }
        counts[f"{kind} confirmed"] += 1
        counts[f"{kind} deliveries owed"] += len(owed)
        missing = [i for i in owed if message_id not in received[i]]
        counts[f"{kind} deliveries missing"] += len(missing)
        if missing and len(lost_examples) < 10:
            lost_examples.append([message_id, kind, tag, sender, target, missing[:3]])
        if message_id in tags and tags[message_id] != tag:
            counts["altered"] += 1
    return {
        "delivery": dict(counts),
        "lost_examples": lost_examples,
        "sent": sum(r["sent"] for r in results),
        "pushes": sum(r["pushes"] for r in results),
        "redelivered": sum(r["redelivered"] for r in results),
        "altered_pushes": sum(r["altered"] for r in results),
        "refused": merge(r["refused"] for r in results),
        "problems": merge(r["problems"] for r in results),
        "closed_by_daemon": merge(r["closed_by_daemon"] for r in results),
        "logins": {
            "needed": sum(r["logins_needed"] for r in results),
            "done": sum(r["logins_done"] for r in results),
            "attempts": sum(r["attempts"] for r in results),
            "failures": merge(r["failures"] for r in results),
        },
        "storm_login": percentiles(
            [s * 1e6 for r in results for s in r["storm_logins"]]
        ),
    }


def merge(counters: Any) -> dict[str, int]:
    merged: dict[str, int] = defaultdict(int)
    for counter in counters:
        for key, value in counter.items():
            merged[key] += value
    return dict(merged)


def scan_log(log: Path) -> dict[str, int]:
    """
    Lines of the daemon's log, over all its lives, that say something went
    wrong.
    """
    lines = log.read_text(errors="replace").splitlines()
    return {
        name: sum(needle in line for line in lines)
        for name, needle in {
            "tracebacks": "Traceback",
            "unhandled": "Unhandled",
            "errors": "#error]",
            "critical": "#critical]",
        }.items()
    }


def memory(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """
    Each life of the daemon with every session held: its resident memory
    when they first all were, at its peak and at its end, per session, and
    how fast it still grew over its last half (a leak keeps growing; an
    allocator that has what it needs levels off).
    """
    base = figures["rss_kib_no_session"]
    lives = []
    for life in sorted({s["lifetime"] for s in figures["samples"]}):
        held = [
            s
            for s in figures["samples"]
            if s["lifetime"] == life
            and s["held"] >= 0.99 * figures["sessions"]
            and s["stage"] != "connecting"
        ]
        if len(held) < 4:
            continue
        half = held[len(held) // 2 :]
        span = (half[-1]["t"] - half[0]["t"]) / 60
        growth = (half[-1]["rss_kib"] - half[0]["rss_kib"]) / 1024
        ends = [e["t"] for e in figures["events"] if e["what"] in PLATEAU_ENDS]
        ends.append(held[-1]["t"] + 1)
        plateaus = []
        for end in ends:
            before = [s for s in held if s["t"] < end]
            if before and before[-1]["rss_kib"] / 1024 not in plateaus[-1:]:
                plateaus.append(before[-1]["rss_kib"] / 1024)
        lives.append(
            {
                "life": life,
                "from_s": held[0]["t"],
                "to_s": held[-1]["t"],
                "first_mib": held[0]["rss_kib"] / 1024,
                "peak_mib": max(s["rss_kib"] for s in held) / 1024,
                "last_mib": held[-1]["rss_kib"] / 1024,
                "kib_per_session": (held[-1]["rss_kib"] - base) / held[-1]["held"],
                "last_half_mib_per_minute": growth / span if span else 0.0,
                "plateaus_mib": plateaus,
            }
        )
    return lives


PLATEAU_ENDS = ("storm", "kill -9")
"""What ends a stretch with every session held and the memory level: the
memory a stretch ends at is read just before each of these."""


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--sessions", type=int, default=10000, help="sessions held")
    add("--seconds", type=float, default=600, help="seconds of traffic")
    add("--per-identity", type=int, default=5, help="sessions of each identity")
    add("--rooms", type=int, default=20, help="rooms")
    add("--room-sessions", type=int, default=50, help="sessions in each room")
    add("--direct-rate", type=float, default=100, help="MSGs a second")
    add("--say-rate", type=float, default=10, help="SAYs a second")
    add("--reload-every", type=float, default=30, help="seconds between RELOADs")
    add("--kill-every", type=float, default=200, help="seconds between kill -9s")
    add("--storm-every", type=float, default=40, help="seconds between storms")
    add("--storm-size", type=int, default=1000, help="sessions cut in a storm")
    add("--load-processes", type=int, default=2, help="client processes")
    add("--concurrency", type=int, default=32, help="logins in flight a process")
    add("--sample-every", type=float, default=5, help="seconds between samples")
    add("--ping-every", type=float, default=0.1, help="seconds between PINGs")
    add("--json", type=Path, help="write every figure here")
    add("--markdown", type=Path, help="rewrite the soak's section of this file")
    add("--plot", type=Path, help="memory over time, as PNG")
    options = parser.parse_args(arguments)
    shape = Shape(
        **{k: v for k, v in vars(options).items() if k in Shape.__dataclass_fields__}
    )
    raise_open_file_limit(shape.sessions + 1000)
    with tempfile.TemporaryDirectory(prefix="secmsg-soak-") as scratch:
        figures = Soak(shape, Path(scratch)).run()
    figures["sessions"] = shape.sessions
    figures["shape"] = shape.__dict__
    figures["memory"] = memory(figures)
    document = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "figures": figures,
    }
    if options.json:
        options.json.write_text(json.dumps(document, indent=1) + "\n")
    summary = "\n".join(markdown(document, options.plot))
    if options.plot:
        plot(figures, options.plot)
    if options.markdown:
        report.replace_generated(options.markdown, summary, BEGIN, END)
    print(summary)
    if problems(figures):
        print("\n".join(f"problem: {p}" for p in problems(figures)), file=sys.stderr)
        sys.exit(1)


def problems(figures: dict[str, Any]) -> list[str]:
    """
    What the soak must not show: a confirmed message lost, a session not
    held at the end, a traceback.
    """
    found = []
    delivery = figures["delivery"]
    for kind in ("MSG", "SAY"):
        if delivery.get(f"{kind} deliveries missing", 0):
            found.append(f"{kind}: {delivery[kind + ' deliveries missing']} lost")
    if figures["held_at_end"] < figures["sessions"]:
        found.append(f"{figures['held_at_end']} sessions held at the end")
    if delivery.get("altered") or figures["altered_pushes"]:
        found.append("a message's text differs from what was sent")
    if figures["daemon_log"]["tracebacks"]:
        found.append(f"{figures['daemon_log']['tracebacks']} tracebacks logged")
    return found


if __name__ == "__main__":
    main()
