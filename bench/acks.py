"""
What an ACK costs the daemon: one identity is sent a batch of messages,
has them all, then acknowledges each with its own C{ACK <id>}, pipelined
in one write, while the parent reads the server's CPU time around it.

A client that keeps up says ACK UPTO once in a while (the flows do, every
second); an ACK per message is the dearest way to read a mailbox, and the
one that shows what each acknowledgement costs the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench.clients import Recorder, SecmsgSession, payload
from bench.scenarios import Contexts, Target, open_session


class AckingSession(SecmsgSession):
    """
    A secmsg session that keeps the id of every message pushed to it and
    acknowledges each when asked, never with ACK UPTO on its own.
    """

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.ids: list[int] = []

    def pushed(self, identifier: int) -> None:
        self.ids.append(identifier)

    async def acknowledge_each(self) -> None:
        """
        C{ACK <id>} for every message pushed so far, in one write; return
        once the server has answered the last.
        """
        ids, self.ids = self.ids, []
        *first, last = ids
        self.send([b"ACK %d\n" % identifier for identifier in first])
        reply = await self._ask(b"ACK %d\n" % last)
        if not reply.startswith(b"200"):
            raise ConnectionError(f"ACK refused: {reply!r}")


@dataclass(frozen=True)
class AckPlan:
    """
    The ACK probe: who sends, who receives and acknowledges, and how many.
    """

    target: Target
    sender: str
    receiver: str
    count: int

    def worker(self) -> AckWorker:
        return AckWorker(self)


class AckWorker:
    """
    Sends the batch and waits for all of it (L{deliver}), then
    acknowledges it message by message (L{acknowledge}), each when the
    parent asks, so that the parent's CPU reading holds the ACKs alone.
    """

    def __init__(self, plan: AckPlan) -> None:
        self._plan = plan
        self._contexts = Contexts(plan.target)
        self._recorder = Recorder()
        self._sender: SecmsgSession | None = None
        self._receiver: AckingSession | None = None

    async def prepare(self) -> dict[str, Any]:
        plan = self._plan
        receiver = await open_session(
            plan.target,
            self._contexts,
            plan.receiver,
            self._recorder,
            kind=AckingSession,
        )
        sender = await open_session(
            plan.target, self._contexts, plan.sender, self._recorder
        )
        assert isinstance(receiver, AckingSession)  # noqa: S101 - its kind
        assert isinstance(sender, SecmsgSession)  # noqa: S101 - secmsg's
        self._receiver, self._sender = receiver, sender
        return {}

    def _opened(self) -> tuple[SecmsgSession, AckingSession]:
        if self._sender is None or self._receiver is None:
            raise RuntimeError("the ACK probe was not prepared")
        return self._sender, self._receiver

    async def deliver(self) -> dict[str, Any]:
        sender, receiver = self._opened()
        count = self._plan.count
        now = time.monotonic_ns()
        sender.send([sender.frame_direct(self._plan.receiver, payload(now))] * count)
        while len(receiver.ids) < count and not receiver.closed.done():
            receiver.progressed.clear()
            await receiver.progressed.wait()
        return {"pushed": len(receiver.ids)}

    async def acknowledge(self) -> dict[str, Any]:
        sender, receiver = self._opened()
        started = time.monotonic_ns()
        await receiver.acknowledge_each()
        seconds = (time.monotonic_ns() - started) / 1e9
        problems = receiver.problems + sender.problems
        sessions = (receiver, sender)
        lost = sum(s.closed.done() for s in sessions)
        for session in sessions:
            session.close()
        return {"seconds": seconds, "problems": dict(problems), "lost_sessions": lost}
