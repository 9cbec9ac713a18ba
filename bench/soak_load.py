"""
The soak's load: one client process's share of the sessions, each held
for the whole soak and logged in again whenever it is lost (the daemon
killed, a reconnect storm), while direct messages and room SAYs flow
between them and every receiver acknowledges what it got.

One asyncio loop holds thousands of TLS sessions (L{bench.clients}'s
transport), so that the load costs the machine as little as it can: a
session does nothing but parse the lines it is sent, and a message is
a line with a tag in it, by which what was confirmed is matched with
what was delivered, across the daemon's restarts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from bench.clients import SERVER_NAME, Recorder, Session
from bench.scenarios import Contexts, Target

CONNECT_TIMEOUT = 30.0
"""Seconds from connecting to the greeting before a login is retried."""

RETRY_FIRST = 0.2
RETRY_MOST = 2.0
"""Seconds between a session's failed logins: doubling, with jitter."""

ACK_EVERY = 2.0
"""Seconds between a session's ACK UPTO, when something new came."""

TICK = 0.02
"""Seconds between a sender's batches."""

MOST_PENDING = 50
"""Commands a session may have unanswered before no more are sent on it."""


@dataclass(frozen=True)
class LoadPlan:
    """
    One load process's share: an identity per session it holds (an
    identity holds several), the room each session joins (or none), every
    identity it may send to, and its rates.
    """

    target: Target
    identities: list[str]
    rooms: list[str | None]
    recipients: list[str]
    direct_rate: float
    say_rate: float
    concurrency: int
    seed: int

    def worker(self) -> SoakWorker:
        return SoakWorker(self)


@dataclass
class Tally:
    """
    What a load process counted: logins, messages confirmed and
    delivered, and the room membership of its sessions over time.
    """

    logins_needed: int = 0
    logins_done: int = 0
    attempts: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    storm_logins: list[float] = field(default_factory=list)
    confirmed: list[tuple[int, str, str, str, str, int, int]] = field(
        default_factory=list
    )
    """(id, kind, tag, sender, recipient or room, sent ns, confirmed ns)"""
    refused: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    received: defaultdict[str, set[int]] = field(
        default_factory=lambda: defaultdict(set)
    )
    tags: dict[int, str] = field(default_factory=dict)
    altered: int = 0
    pushes: int = 0
    redelivered: int = 0
    membership: list[tuple[str, str, int, int]] = field(default_factory=list)
    """(identity, room, joined ns, left ns)"""
    problems: Counter[str] = field(default_factory=Counter)
    closed_by_daemon: Counter[str] = field(default_factory=Counter)


class SoakSession(Session):
    """
    A session of the line protocol that matches replies to its commands
    in order and files every message pushed to it by id and tag.
    """

    def __init__(self, identity: str, tally: Tally) -> None:
        super().__init__(Recorder())
        self.identity = identity
        self.tally = tally
        self.pending: deque[tuple[str, str, str, int]] = deque()
        self.joined: int | None = None
        self.highest = 0
        self.acked = 0
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            self._line(line.decode(errors="replace"), time.monotonic_ns())

    def _line(self, line: str, now: int) -> None:
        if line[:1].isdigit():
            self._reply(line, now)
            return
        if line.startswith("REDELIVERED "):
            self.tally.redelivered += 1
            line = line.removeprefix("REDELIVERED ")
        verb = line.split(" ", 1)[0]
        if verb in ("MSG", "SAY"):
            self._push(line)
        elif verb == "CLOSED":
            self.tally.closed_by_daemon[line[7:40]] += 1
        elif verb not in ("JOINED", "PARTED", "ONLINE", "OFFLINE", "NOTICE"):
            self.tally.problems[f"push {verb[:20]}"] += 1

    def _push(self, line: str) -> None:
        """
        A message: its id, and its tag (the last word of its text).
        """
        message_id = int(line.split(" ", 2)[1])
        tag = line.rsplit(" ", 1)[1]
        self.tally.pushes += 1
        self.tally.received[self.identity].add(message_id)
        known = self.tally.tags.setdefault(message_id, tag)
        if known != tag:
            self.tally.altered += 1
        self.highest = max(self.highest, message_id)

    def _reply(self, line: str, now: int) -> None:
        if not self.ready.done():
            if line.startswith("200 "):
                self.ready.set_result(None)
            else:
                self.ready.set_exception(ConnectionError(line[:60]))
            return
        if not self.pending:
            self.tally.problems[f"unasked {line[:20]}"] += 1
            return
        verb, tag, target, sent = self.pending.popleft()
        code = line[:3]
        if verb in ("MSG", "SAY") and code == "250":
            self.tally.confirmed.append(
                (int(line[4:]), verb, tag, self.identity, target, sent, now)
            )
        elif verb == "JOIN" and code == "200":
            self.joined = now
        elif code != "200":
            self.tally.refused[f"{verb} {line[:40]}"] += 1

    def command(self, verb: str, line: str, tag: str = "", target: str = "") -> None:
        """
        Send a command, remembering what it was so that its reply is
        matched to it.
        """
        now = time.monotonic_ns()
        self.pending.append((verb, tag, target, now))
        self.write(line.encode() + b"\n")


@dataclass
class Slot:
    """
    A session the soak holds: whose, in which room, the connection now
    carrying it (if any), and whether the next login is a storm's.
    """

    identity: str
    room: str | None
    session: SoakSession | None = None
    storming: bool = False


class SoakWorker:
    """
    Holds a load process's sessions and sends its share of the traffic,
    as the parent asks: connect, start and stop the traffic, storm,
    status, results.
    """

    def __init__(self, plan: LoadPlan) -> None:
        self._plan = plan
        self._contexts = Contexts(plan.target)
        self._tally = Tally()
        self._slots = [
            Slot(identity, room)
            for identity, room in zip(plan.identities, plan.rooms, strict=True)
        ]
        self._gate = asyncio.Semaphore(plan.concurrency)
        # Which session sends, to whom, need only vary.
        self._rng = random.Random(plan.seed)  # noqa: S311
        self._holding: list[asyncio.Task[None]] = []
        self._traffic: list[asyncio.Task[None]] = []
        self._stopping = False
        self._sequence = 0

    async def prepare(self) -> dict[str, Any]:
        for name in set(self._plan.identities):
            self._contexts[name]
        return {"sessions": len(self._slots)}

    async def connect(self) -> dict[str, Any]:
        """
        Start holding every session; return at once (the parent watches
        them come up through L{status}).
        """
        self._holding = [asyncio.create_task(self._hold(s)) for s in self._slots]
        self._traffic.append(asyncio.create_task(self._ack_loop()))
        return {}

    async def start_traffic(self) -> dict[str, Any]:
        self._traffic += [
            asyncio.create_task(self._pace(self._plan.direct_rate, self._direct)),
            asyncio.create_task(self._pace(self._plan.say_rate, self._say)),
        ]
        return {}

    async def stop_traffic(self) -> dict[str, Any]:
        """
        Send no more messages; acknowledgements go on.
        """
        for task in self._traffic[1:]:
            task.cancel()
        del self._traffic[1:]
        return {}

    async def storm(self, count: int) -> dict[str, Any]:
        """
        Cut C{count} held sessions at once, as a network blip would (no
        QUIT, a reset), and log them all in again at once.
        """
        held = [s for s in self._slots if self._live(s)]
        chosen = self._rng.sample(held, min(count, len(held)))
        for slot in chosen:
            slot.storming = True
            assert slot.session is not None  # noqa: S101 - live
            assert slot.session.transport is not None  # noqa: S101 - live
            slot.session.transport.abort()
        return {"cut": len(chosen)}

    async def status(self) -> dict[str, Any]:
        tally = self._tally
        return {
            "held": sum(self._live(s) for s in self._slots),
            "wanted": len(self._slots),
            "logins_needed": tally.logins_needed,
            "logins_done": tally.logins_done,
            "confirmed": len(tally.confirmed),
            "pushes": tally.pushes,
            "pending": sum(
                len(s.session.pending) for s in self._slots if self._live(s)
            ),
        }

    async def results(self) -> dict[str, Any]:
        """
        QUIT every session and hand back everything counted.
        """
        self._stopping = True
        for task in self._traffic:
            task.cancel()
        now = time.monotonic_ns()
        for slot in self._slots:
            if self._live(slot):
                assert slot.session is not None  # noqa: S101 - live
                self._left(slot, slot.session, now)
                slot.session.command("QUIT", "QUIT")
        await asyncio.sleep(1)
        for task in self._holding:
            task.cancel()
        for slot in self._slots:
            if slot.session is not None:
                slot.session.close()
        tally = self._tally
        return {
            "logins_needed": tally.logins_needed,
            "logins_done": tally.logins_done,
            "attempts": tally.attempts,
            "failures": dict(tally.failures),
            "storm_logins": tally.storm_logins,
            "sent": tally.sent,
            "confirmed": tally.confirmed,
            "refused": dict(tally.refused),
            "received": dict(tally.received),
            "tags": tally.tags,
            "altered": tally.altered,
            "pushes": tally.pushes,
            "redelivered": tally.redelivered,
            "membership": tally.membership,
            "problems": dict(tally.problems),
            "closed_by_daemon": dict(tally.closed_by_daemon),
        }

    @staticmethod
    def _live(slot: Slot) -> bool:
        return slot.session is not None and not slot.session.closed.done()

    async def _hold(self, slot: Slot) -> None:
        """
        Keep the slot's session logged in (and in its room) for the whole
        soak: log in, wait for the session to end, and again.
        """
        while not self._stopping:
            self._tally.logins_needed += 1
            session = await self._login(slot)
            if session is None:
                return
            slot.session = session
            if slot.room is not None:
                session.command("JOIN", f"JOIN #{slot.room}")
            await session.closed
            if slot.room is not None:
                self._left(slot, session, time.monotonic_ns())

    def _left(self, slot: Slot, session: SoakSession, now: int) -> None:
        """
        Note the span a session was in its room, once, when it ends.
        """
        if slot.room is not None and session.joined is not None:
            self._tally.membership.append(
                (slot.identity, slot.room, session.joined, now)
            )
            session.joined = None

    async def _login(self, slot: Slot) -> SoakSession | None:
        """
        Log the slot in, retrying after a pause that doubles until it is
        in; a storm's logins go all at once, the others a few at a time.
        """
        pause = RETRY_FIRST * self._rng.random()
        storm_start = time.monotonic() if slot.storming else None
        while not self._stopping:
            if slot.storming:
                slot.storming = False
                session = await self._attempt(slot)
            else:
                await asyncio.sleep(pause)
                async with self._gate:
                    session = await self._attempt(slot)
            if session is not None:
                self._tally.logins_done += 1
                if storm_start is not None:
                    self._tally.storm_logins.append(time.monotonic() - storm_start)
                return session
            pause = min(RETRY_MOST, pause * 2 + RETRY_FIRST) * (
                0.5 + self._rng.random()
            )
        return None

    async def _attempt(self, slot: Slot) -> SoakSession | None:
        self._tally.attempts += 1
        loop = asyncio.get_running_loop()
        session: SoakSession | None = None
        try:
            _, session = await asyncio.wait_for(
                loop.create_connection(
                    lambda: SoakSession(slot.identity, self._tally),
                    "127.0.0.1",
                    self._plan.target.port,
                    ssl=self._contexts[slot.identity],
                    server_hostname=SERVER_NAME,
                ),
                CONNECT_TIMEOUT,
            )
            await asyncio.wait_for(session.ready, CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ConnectionError) as failure:
            self._tally.failures[f"{type(failure).__name__}: {str(failure)[:60]}"] += 1
            if session is not None:
                session.close()
            return None
        return session

    async def _pace(self, rate: float, send: Any) -> None:
        """
        Call C{send} C{rate} times a second, in batches every L{TICK}.
        """
        if rate <= 0:
            return
        started = time.monotonic()
        done = 0
        while True:
            await asyncio.sleep(TICK)
            due = int((time.monotonic() - started) * rate) - done
            for _ in range(due):
                send()
            done += due

    def _sender(self, in_room: bool) -> Slot | None:
        """
        A slot drawn at random whose session is held and has room for
        another command (and is in its room, for a SAY), or L{None} if the
        one drawn is not.
        """
        slot = self._slots[self._rng.randrange(len(self._slots))]
        session = slot.session
        if not self._live(slot) or session is None:
            return None
        if len(session.pending) >= MOST_PENDING or not session.ready.done():
            return None
        if in_room and (slot.room is None or session.joined is None):
            return None
        return slot

    def _tag(self) -> str:
        self._sequence += 1
        return f"w{self._plan.seed}n{self._sequence}"

    def _direct(self) -> None:
        slot = self._sender(in_room=False)
        if slot is None or slot.session is None:
            return
        recipient = self._rng.choice(self._plan.recipients)
        tag = self._tag()
        self._tally.sent += 1
        slot.session.command("MSG", f"MSG {recipient} soak {tag}", tag, recipient)

    def _say(self) -> None:
        # Only some sessions are in a room: draw until one is.
        for _ in range(100):
            slot = self._sender(in_room=True)
            if slot is not None and slot.session is not None and slot.room:
                tag = self._tag()
                self._tally.sent += 1
                slot.session.command(
                    "SAY", f"SAY #{slot.room} soak {tag}", tag, slot.room
                )
                return

    async def _ack_loop(self) -> None:
        """
        ACK UPTO what each session has, every L{ACK_EVERY} seconds, a
        slice of the sessions at a time so that the ACKs do not all come
        at once.
        """
        slices = 20
        while True:
            for part in range(slices):
                await asyncio.sleep(ACK_EVERY / slices)
                for slot in self._slots[part::slices]:
                    session = slot.session
                    if (
                        session is not None
                        and self._live(slot)
                        and session.ready.done()
                        and session.highest > session.acked
                    ):
                        session.acked = session.highest
                        session.command("ACK", f"ACK UPTO {session.highest}")
