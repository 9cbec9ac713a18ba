"""
The blank-line flood's client workers: flooding sessions that log in and
write blank lines as fast as their sockets take them, and the probes that
measure what that does to everyone else, a PING on a session of its own
and a fresh login now and then.

A flooder the server closes comes back after a pause that doubles, and
only so many times: the flood is one of lines, not of handshakes, which
are a budget of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.clients import Recorder, SecmsgSession
from bench.scenarios import Contexts, Target, Timing, open_session, until, window_cpu

BLANK_LINES = b"\n" * 16384
"""What a flooder writes at a time."""

RECONNECT_PAUSE = 0.1
"""Seconds a flooder waits after its first close before it logs in again."""

RECONNECT_PAUSE_MAX = 1.0
"""The pause doubles after each close up to this, in seconds."""

MOST_RECONNECTS = 50
"""Times a flooder logs in again in one run, at most."""

PROBE_TIMEOUT = 15.0
"""Seconds a PONG or a greeting may take before it counts as a failure; past
the daemon's handshake timeout, so that the daemon gives up first."""


def _reason(failure: BaseException) -> str:
    return f"{type(failure).__name__}: {str(failure)[:80]}"


@dataclass(frozen=True)
class FloodPlan:
    """
    One worker's share of the flooders: an identity each.
    """

    target: Target
    identities: list[str]

    def worker(self) -> FloodWorker:
        return FloodWorker(self)


class FloodWorker:
    """
    Each of its identities logs in and writes L{BLANK_LINES} until the
    window ends, logging in again when the server closes it, and counts
    what the server said.
    """

    def __init__(self, plan: FloodPlan) -> None:
        self._plan = plan
        self._contexts = Contexts(plan.target)
        self._recorder = Recorder()
        self._written_in_window = 0
        self._sessions = 0
        self._reconnects = 0
        self._closed: Counter[str] = Counter()
        self._replies: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()

    async def prepare(self) -> dict[str, Any]:
        for name in self._plan.identities:
            self._contexts[name]
        return {}

    async def run(self, timing: Timing) -> dict[str, Any]:
        await until(timing.start_ns)
        floods = [
            asyncio.create_task(self._flood(name, timing))
            for name in self._plan.identities
        ]
        cpu = await window_cpu(timing)
        await asyncio.gather(*floods)
        return {
            "blank_lines": self._written_in_window,
            "sessions": self._sessions,
            "reconnects": self._reconnects,
            "closed_by_server": dict(self._closed),
            "replies": dict(self._replies),
            "logins_refused": dict(self._refused),
            "cpu_seconds": cpu,
        }

    async def _flood(self, name: str, timing: Timing) -> None:
        pause = RECONNECT_PAUSE
        for attempt in range(MOST_RECONNECTS + 1):
            if time.monotonic_ns() >= timing.window_end:
                return
            if attempt:
                self._reconnects += 1
            try:
                session = await asyncio.wait_for(
                    open_session(
                        self._plan.target, self._contexts, name, self._recorder
                    ),
                    PROBE_TIMEOUT,
                )
            except OSError as failure:
                self._refused[_reason(failure)] += 1
            else:
                assert isinstance(session, SecmsgSession)  # noqa: S101 - its protocol
                self._sessions += 1
                closed = await self._write_blanks(session, timing)
                self._replies.update(session.problems)
                if not closed:
                    session.close()
                    return
                self._closed[session.closed_reason or "no CLOSED line"] += 1
            await asyncio.sleep(pause)
            pause = min(2 * pause, RECONNECT_PAUSE_MAX)

    async def _write_blanks(self, session: SecmsgSession, timing: Timing) -> bool:
        """
        Write blank lines as fast as the socket takes them until the window
        ends; whether the server closed the session first.

        What is written fills the socket's buffers first, megabytes of them
        on loopback, and then goes at the pace the server reads: the lines
        counted in the window are that pace once the warm-up has filled
        them, and may be none in a window shorter than the server takes to
        read what they hold.
        """
        assert session.transport is not None  # noqa: S101 - it is logged in
        while (now := time.monotonic_ns()) < timing.window_end:
            if session.closed.done() or session.transport.is_closing():
                return True
            session.write(BLANK_LINES)
            if timing.window_start <= now:
                self._written_in_window += len(BLANK_LINES)
            try:
                await asyncio.wait_for(
                    session.drained(), (timing.window_end - now) / 1e9
                )
            except TimeoutError:
                break
        return session.closed.done()


@dataclass(frozen=True)
class ProbePlan:
    """
    A probe: every C{every} seconds, a PING on its one session and the
    wait for its PONG, or, with C{login}, a new session to its greeting.
    """

    target: Target
    identity: str
    every: float
    login: bool = False

    def worker(self) -> ProbeWorker:
        return ProbeWorker(self)


class ProbeWorker:
    """
    Times each round trip begun inside the window; one PING or login at a
    time, so that the probe is a user waiting for an answer, not a load.
    """

    def __init__(self, plan: ProbePlan) -> None:
        self._plan = plan
        self._contexts = Contexts(plan.target)
        self._recorder = Recorder()
        self._session: SecmsgSession | None = None
        self._latencies_us: list[float] = []
        self._failures: Counter[str] = Counter()

    async def prepare(self) -> dict[str, Any]:
        plan = self._plan
        self._contexts[plan.identity]
        if not plan.login:
            session = await open_session(
                plan.target, self._contexts, plan.identity, self._recorder
            )
            assert isinstance(session, SecmsgSession)  # noqa: S101 - its protocol
            self._session = session
        return {}

    async def run(self, timing: Timing) -> dict[str, Any]:
        await until(timing.start_ns)
        probing = asyncio.create_task(self._probe(timing))
        cpu = await window_cpu(timing)
        await probing
        if self._session is not None:
            self._session.close()
        return {
            "latencies_us": self._latencies_us,
            "failures": dict(self._failures),
            "cpu_seconds": cpu,
        }

    async def _probe(self, timing: Timing) -> None:
        every_ns = int(self._plan.every * 1e9)
        while (start := time.monotonic_ns()) < timing.window_end:
            try:
                await asyncio.wait_for(self._round_trip(), PROBE_TIMEOUT)
            except OSError as failure:
                self._failures[_reason(failure)] += 1
                if self._session is not None:
                    return
            else:
                if timing.window_start <= start:
                    self._latencies_us.append((time.monotonic_ns() - start) / 1000)
            await until(start + every_ns)

    async def _round_trip(self) -> None:
        if self._session is not None:
            await self._session.ping()
            return
        session = await open_session(
            self._plan.target, self._contexts, self._plan.identity, self._recorder
        )
        session.close()
