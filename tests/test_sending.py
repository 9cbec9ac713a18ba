"""
The daemon's TLS connections send at once (L{secmsg.daemon.sending}): a
turn's writes to every peer are flushed under one delayed call, and the
records go straight to the socket when nothing is queued before them,
the rest queued in order behind.  That a turn's writes to one peer leave
as one TLS record is pinned by L{tests.test_reply_writes}.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from secmsg.client.tls import client_tls_options
from secmsg.daemon.sending import PromptTransport, TurnFlush, send_now
from tests.harness import POLICY, Instance, LineClient
from tests.test_nodelay import accept

MEMBERS = 5


class TurnFlushTests(SynchronousTestCase):
    def test_one_delayed_call_flushes_every_peer_of_a_turn(self) -> None:
        """
        A room message pushed to several members schedules one flush for
        them all and the speaker's 250, not one each (as Twisted's
        buffering TLS transport did), and each member gets its push.
        """
        names = [f"m{n}" for n in range(MEMBERS)]
        granted = "\n".join(f'{name} = ["user"]' for name in [*names, "speaker"])
        instance = Instance(self, policy=f"{POLICY}{granted}\n")
        members = [self.joined(instance, name) for name in names]
        speaker = self.joined(instance, "speaker")
        for member in members:
            member.take()  # the others' joins
        flushes = self.flushes_scheduled(instance)
        speaker.send("SAY #lobby hello")
        instance.flush()
        self.assertEqual(flushes, [instance.daemon.factory.turn_flush])
        for member in members:
            [push] = member.take()
            self.assertTrue(push.endswith(" hello"), push)

    def flushes_scheduled(self, instance: Instance) -> list[object]:
        """
        The list that each turn's flush scheduled on the daemon's clock
        adds its L{TurnFlush} to, from now on.
        """
        scheduled: list[object] = []
        schedule = instance.clock.callLater

        def counted(delay: float, f: Callable[..., object], *a: object) -> Any:
            if isinstance(getattr(f, "__self__", None), TurnFlush):
                scheduled.append(f.__self__)  # type: ignore[attr-defined]
            return schedule(delay, f, *a)

        instance.clock.callLater = counted  # type: ignore[method-assign]
        return scheduled

    def joined(self, instance: Instance, name: str) -> LineClient:
        pair = instance.ca.issue(name)
        client = LineClient(())
        instance.connect_protocol(
            client,
            client_tls_options(
                "localhost", instance.ca.pem, pair.certificate_pem, pair.key_pem
            ),
        )
        instance.flush()
        client.take()
        client.send("JOIN #lobby")
        instance.flush()
        self.assertEqual(client.take(), ["200 joined #lobby"])
        return client


class SendNowTests(SynchronousTestCase):
    def connected(self) -> tuple[tcp.Server, socket.socket]:
        """
        A real loopback TCP connection accepted on a memory reactor: the
        daemon side's transport, and the client's socket.
        """
        reactor = MemoryReactorClock()
        port = tcp.Port(
            0, Factory.forProtocol(Protocol), interface="127.0.0.1", reactor=reactor
        )
        server, client = accept(self, port)
        # Bytes not in the socket's buffer fail a read at once.
        client.setblocking(False)
        return server, client

    def test_sent_at_once_when_nothing_is_queued(self) -> None:
        """
        With nothing queued, the bytes are in the socket when C{send_now}
        returns, and the reactor is not asked to watch for writing.
        """
        server, client = self.connected()
        send_now(server, b"200 PONG\n")
        self.assertEqual(client.recv(100), b"200 PONG\n")
        self.assertNotIn(server, server.reactor.writers)

    def test_what_the_socket_does_not_take_is_queued_in_order(self) -> None:
        """
        Past what the socket takes, the rest is queued, and what follows
        is queued behind it, not sent ahead: the peer reads it all in order.
        """
        server, client = self.connected()
        first = bytes(range(256)) * 40_000
        send_now(server, first)
        self.assertIn(server, server.reactor.writers)
        send_now(server, b"last")
        received = bytearray()
        while len(received) < len(first) + 4:
            server.doWrite()
            with contextlib.suppress(BlockingIOError):
                received += client.recv(1 << 20)
        self.assertEqual(bytes(received), first + b"last")
        self.assertNotIn(server, server.reactor.writers)

    def test_a_protocol_s_own_writes_are_sent_at_once(self) -> None:
        """
        Through L{PromptTransport} (the cluster's publisher writes through
        one), a protocol's writes are in the socket at once; the rest of
        the transport is its own.
        """
        server, client = self.connected()
        prompt = PromptTransport(server)
        prompt.writeSequence([b"PUBLISH ", b"segment\r\n"])
        self.assertEqual(client.recv(100), b"PUBLISH segment\r\n")
        self.assertNotIn(server, server.reactor.writers)
        self.assertEqual(prompt.getPeer(), server.getPeer())

    def test_other_transports_are_written_as_before(self) -> None:
        """
        A transport that is not a socket's (a test's, say) is written to.
        """
        transport = StringTransport()
        send_now(transport, b"line\n")
        self.assertEqual(transport.value(), b"line\n")
