"""
The benchmark's client sessions, one kind per protocol, behind one shape so
that every scenario drives secmsg and Mosquitto with the same code.

A session is an asyncio protocol over TLS. What a session receives is fed
to a L{Recorder} that its worker process shares between its sessions: each
message carries the monotonic time it was sent, in nanoseconds
(CLOCK_MONOTONIC is one clock for every process on the machine), so the
receiver knows its latency. Parsing is kept to what the figures need, so
that the client side costs as little as it can.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from bench import mqtt

SERVER_NAME = "localhost"
"""The name the benchmark's servers present certificates for."""

ACK_EVERY = 1.0
"""Seconds between a secmsg receiver's ACK UPTO, when something new came:
a client that keeps its mailbox empty without an ACK per message."""

PRESENCE_PUSHES = (b"JOINED ", b"PARTED ", b"ONLINE ", b"OFFLINE ")
"""The presence pushes a secmsg session may be sent, which are no problem."""

EVERYONE = "everyone"
"""The MQTT topic under rooms/ that stands for secmsg's BROADCAST: every
session subscribes to it."""


def payload(sent_ns: int) -> bytes:
    """
    A message's text: its send time, one token with no spaces.
    """
    return b"t%d" % sent_ns


def sent_at(text: bytes) -> int:
    """
    The send time in a message's text.
    """
    return int(text[1:])


def client_context(certificate: Path, key: Path, ca: Path, tls: str) -> ssl.SSLContext:
    """
    A client context that presents a certificate, trusts only the bench CA,
    checks the server's name, and speaks exactly the TLS version asked for
    ("1.2" or "1.3"), with session resumption off: every connection is a
    full handshake.
    """
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(certificate, key)
    version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[tls]
    context.minimum_version = context.maximum_version = version
    context.options |= ssl.OP_NO_TICKET
    return context


@dataclass
class Recorder:
    """
    What a worker's receiving sessions got: how many messages arrived inside
    the measured window, and the latency of each message sent inside it.
    """

    window_start: int = 0
    window_end: int = 0
    delivered: int = 0
    latencies_us: list[float] = field(default_factory=list)

    confirmed: int = 0

    def arrived(self, now: int, sent: int) -> None:
        if self.window_start <= now < self.window_end:
            self.delivered += 1
        if self.window_start <= sent < self.window_end:
            self.latencies_us.append((now - sent) / 1000)

    def confirmed_at(self, now: int) -> None:
        if self.window_start <= now < self.window_end:
            self.confirmed += 1


class Session(asyncio.Protocol):
    """
    What both protocols' sessions share: a TLS transport, the moment the
    server said it is ready, what this session has received and what the
    server has confirmed, and what went wrong.
    """

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.confirmed = 0
        self.progressed = asyncio.Event()
        self.problems: Counter[str] = Counter()
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - asyncio's promise
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        failure = ConnectionError(f"connection lost: {exc!r}")
        if not self.ready.done():
            self.ready.set_exception(failure)
        if not self.closed.done():
            self.closed.set_result(None)
        self._writable.set()
        self._fail_waiting(failure)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drained(self) -> None:
        """
        Return once the transport takes more (at once if it does now), or
        the session is closed: a writer that awaits this between writes
        sends as fast as the socket takes it and queues nothing more.
        """
        if self._writable.is_set():
            # Let the loop run: its reads and the transport's sends.
            await asyncio.sleep(0)
        else:
            await self._writable.wait()

    def _fail_waiting(self, failure: Exception) -> None:
        """
        Give up on whatever is still waiting for an answer.
        """

    def write(self, data: bytes) -> None:
        assert self.transport is not None  # noqa: S101 - after connection_made
        self.transport.write(data)

    def send(self, frames: list[bytes]) -> None:
        """
        Send messages framed by L{frame_direct} or L{frame_say}, in one write.
        """
        self.write(b"".join(frames))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class HandshakeSession(Session):
    """
    A TLS session that is ready once its handshake is done: for a server
    that says nothing after it, as C{openssl s_server}.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.ready.set_result(None)


class SecmsgSession(Session):
    """
    A session of the secmsg line protocol: waits for the greeting, pipelines
    commands, matches replies to them in order, says ACK UPTO for what
    was pushed to it every L{ACK_EVERY} seconds, and keeps the reason the
    server gave if it closed the session (its C{CLOSED} line).
    """

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.closed_reason: str | None = None
        self._buffer = b""
        self._waiting: deque[asyncio.Future[bytes] | None] = deque()
        self._highest = 0
        self._acked = 0
        self._acker: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if line[:4] in (b"MSG ", b"SAY ") or line.startswith(b"BROADCAST "):
                identifier, text = line.split(b" ", 2)[1], line.rsplit(b" ", 1)[1]
                self.pushed(int(identifier))
                self.received += 1
                self.recorder.arrived(now, sent_at(text))
            elif line[:1].isdigit():
                self._reply(line, now)
            elif line.startswith(PRESENCE_PUSHES):
                # Members joining the room, told to the others: expected.
                continue
            else:
                verb, _, rest = line.partition(b" ")
                if verb == b"CLOSED":
                    self.closed_reason = rest.decode(errors="replace")
                self.problems[verb.decode(errors="replace")] += 1
        self.progressed.set()

    def pushed(self, identifier: int) -> None:
        """
        A message was pushed: the next ACK UPTO covers it.
        """
        self._highest = max(self._highest, identifier)

    def _reply(self, line: bytes, now: int) -> None:
        if not self.ready.done():
            if line.startswith(b"200 "):
                self.ready.set_result(None)
                self._acker = asyncio.get_running_loop().call_later(
                    ACK_EVERY, self._ack
                )
            else:
                self.ready.set_exception(ConnectionError(line.decode(errors="replace")))
            return
        code = line[:3]
        if code == b"250":
            self.confirmed += 1
            self.recorder.confirmed_at(now)
        elif code != b"200":
            self.problems[line[:40].decode(errors="replace")] += 1
        waiter = self._waiting.popleft() if self._waiting else None
        if waiter is not None and not waiter.done():
            waiter.set_result(line)

    def _ack(self) -> None:
        if self._highest > self._acked:
            self._acked = self._highest
            self._waiting.append(None)
            self.write(b"ACK UPTO %d\n" % self._highest)
        self._acker = asyncio.get_running_loop().call_later(ACK_EVERY, self._ack)

    def _fail_waiting(self, failure: Exception) -> None:
        if self._acker is not None:
            self._acker.cancel()
        for waiter in self._waiting:
            if waiter is not None and not waiter.done():
                waiter.set_exception(failure)

    async def _ask(self, line: bytes) -> bytes:
        if self.closed.done():
            raise ConnectionError("the session is closed")
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self.write(line)
        return await waiter

    async def ping(self) -> None:
        """
        PING, and return at its PONG.
        """
        reply = await self._ask(b"PING\n")
        if not reply.startswith(b"200"):
            raise ConnectionError(f"PING refused: {reply!r}")

    async def listen(self, identity: str) -> None:
        """
        Nothing to do: a secmsg session gets its identity's messages.
        """

    async def settle(self) -> None:
        """
        Acknowledge everything pushed so far and wait for the answer, so
        that the next run's sessions of this identity get nothing again.
        """
        if self._highest > self._acked and not self.closed.done():
            self._acked = self._highest
            await self._ask(b"ACK UPTO %d\n" % self._highest)

    async def enter(self, room: str) -> None:
        reply = await self._ask(b"JOIN #%s\n" % room.encode())
        if not reply.startswith(b"200"):
            raise ConnectionError(f"JOIN refused: {reply!r}")

    async def hear_broadcasts(self) -> None:
        """
        Nothing to do: every secmsg session is sent every BROADCAST.
        """

    @staticmethod
    def frame_direct(recipient: str, text: bytes) -> bytes:
        return b"MSG %s %s\n" % (recipient.encode(), text)

    @staticmethod
    def frame_say(room: str, text: bytes) -> bytes:
        return b"SAY #%s %s\n" % (room.encode(), text)

    @staticmethod
    def frame_broadcast(_everyone: str, text: bytes) -> bytes:
        return b"BROADCAST %s\n" % text

    def send(self, frames: list[bytes]) -> None:
        self._waiting.extend([None] * len(frames))
        super().send(frames)

    def close(self) -> None:
        if self._acker is not None:
            self._acker.cancel()
        super().close()


class MqttSession(Session):
    """
    An MQTT 3.1.1 session: CONNECT at once, subscriptions answered by SUBACK,
    PUBLISH at the session's QoS (1 is answered by PUBACK, which counts as
    confirmed), and PUBACK for every QoS 1 message received.
    """

    def __init__(
        self, recorder: Recorder, client_id: str, qos: int, clean: bool = True
    ) -> None:
        super().__init__(recorder)
        self._client_id = client_id
        self._qos = qos
        self._clean = clean
        self._decoder = mqtt.Decoder()
        self._next_id = 0
        self._subscribing: dict[int, asyncio.Future[None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.write(mqtt.connect(self._client_id, clean_session=self._clean))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        for packet in self._decoder.feed(data):
            if packet.kind == mqtt.PUBLISH:
                _, packet_id, text = mqtt.publish_parts(packet)
                if packet_id:
                    self.write(mqtt.puback(packet_id))
                self.received += 1
                self.recorder.arrived(now, sent_at(text))
            elif packet.kind == mqtt.PUBACK:
                self.confirmed += 1
                self.recorder.confirmed_at(now)
            elif packet.kind == mqtt.SUBACK:
                waiter = self._subscribing.pop(mqtt.packet_id_of(packet))
                if packet.body[2:3] == b"\x80":
                    waiter.set_exception(ConnectionError("SUBSCRIBE refused"))
                else:
                    waiter.set_result(None)
            elif packet.kind == mqtt.CONNACK and not self.ready.done():
                if packet.body[1:2] == b"\x00":
                    self.ready.set_result(None)
                else:
                    self.ready.set_exception(
                        ConnectionError(f"CONNACK refused: {packet.body!r}")
                    )
            else:
                self.problems[f"packet type {packet.kind}"] += 1
        self.progressed.set()

    def _fail_waiting(self, failure: Exception) -> None:
        for waiter in self._subscribing.values():
            if not waiter.done():
                waiter.set_exception(failure)

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def _subscribe(self, topic: str) -> None:
        if self.closed.done():
            raise ConnectionError("the session is closed")
        packet_id = self._packet_id()
        waiter = asyncio.get_running_loop().create_future()
        self._subscribing[packet_id] = waiter
        self.write(mqtt.subscribe(packet_id, topic, self._qos))
        await waiter

    async def listen(self, identity: str) -> None:
        await self._subscribe(f"direct/{identity}")

    async def settle(self) -> None:
        """
        Nothing to do: every QoS 1 message received was answered at once.
        """

    async def enter(self, room: str) -> None:
        await self._subscribe(f"rooms/{room}")

    async def hear_broadcasts(self) -> None:
        await self.enter(EVERYONE)

    def _publish(self, topic: str, text: bytes) -> bytes:
        packet_id = self._packet_id() if self._qos else 0
        return mqtt.publish(topic, text, self._qos, packet_id)

    def frame_direct(self, recipient: str, text: bytes) -> bytes:
        return self._publish(f"direct/{recipient}", text)

    def frame_say(self, room: str, text: bytes) -> bytes:
        return self._publish(f"rooms/{room}", text)

    def frame_broadcast(self, everyone: str, text: bytes) -> bytes:
        return self._publish(f"rooms/{everyone}", text)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.write(mqtt.disconnect())
        super().close()
