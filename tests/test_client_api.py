"""
The client API for programs (L{secmsg.client}) against the real daemon in
memory: sending, saying, joining, the messages that arrive, acknowledging,
refusals in words; and the echo bot of docs/bots.md, whose documented code
is the code tested here.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from secmsg.client import Client, Message, Refused, example_bot
from secmsg.client.api import start
from secmsg.client.protocol import ClientProtocol
from secmsg.client.tls import client_tls_options
from secmsg.errors import Malformed
from tests.harness import POLICY, Instance

T = TypeVar("T")

DOCS = Path(__file__).resolve().parent.parent / "docs"


class Programs:
    """
    Programs logged in to an in-memory daemon through the client API, and
    the means to run their coroutines with the bytes moved.
    """

    def __init__(self, testcase: SynchronousTestCase, instance: Instance) -> None:
        self.testcase = testcase
        self.instance = instance

    def client(self, name: str) -> Client:
        pair = self.instance.ca.issue(name)
        session = ClientProtocol(self.instance.clock, "localhost")
        options = client_tls_options(
            "localhost", self.instance.ca.pem, pair.certificate_pem, pair.key_pem
        )
        self.instance.connect_protocol(session, options)
        started = self.run(start(self.instance.clock, session, 30.0))
        return self.testcase.successResultOf(started)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> defer.Deferred[T]:
        running = defer.Deferred.fromCoroutine(coroutine)
        self.instance.flush()
        return running

    def arrived(self, client: Client) -> list[Message]:
        """
        The messages that arrive for C{client}, taken as a program takes
        them, from now until its session ends.
        """
        taken: list[Message] = []

        async def take() -> None:
            async for message in client.messages():
                taken.append(message)

        defer.Deferred.fromCoroutine(take())
        return taken


class ClientApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.instance = Instance(self)
        self.programs = Programs(self, self.instance)
        self.client = self.programs.client
        self.run = self.programs.run
        self.arrived = self.programs.arrived

    def test_send_say_join_and_messages(self) -> None:
        """
        A direct message and a room message arrive as messages with their
        id, kind, sender and room; send and say return the id.
        """
        alice, bob = self.client("alice"), self.client("bob")
        self.assertEqual(bob.identity, "bob")
        taken = self.arrived(bob)
        self.successResultOf(self.run(bob.join("#ops")))
        self.successResultOf(self.run(alice.join("#OPS")))
        self.assertEqual(self.successResultOf(self.run(alice.send("bob", "hi"))), 1)
        self.assertEqual(self.successResultOf(self.run(alice.say("#ops", "all"))), 2)
        self.assertEqual(
            [(m.id, m.kind, m.sender, m.room, m.text) for m in taken],
            [(1, "direct", "alice", None, "hi"), (2, "room", "alice", "#ops", "all")],
        )
        self.assertFalse(taken[0].redelivered)

    def test_unacknowledged_messages_come_again(self) -> None:
        """
        A message not acknowledged comes again at the next login, marked
        redelivered; one acknowledged does not.
        """
        alice, bob = self.client("alice"), self.client("bob")
        self.successResultOf(self.run(alice.send("bob", "one")))
        self.successResultOf(self.run(alice.send("bob", "two")))
        self.successResultOf(self.run(bob.ack(1)))
        self.successResultOf(self.run(bob.close()))
        again = self.client("bob")
        taken = self.arrived(again)
        self.assertEqual([(m.id, m.redelivered) for m in taken], [(2, True)])

    def test_refusals_are_said_in_words(self) -> None:
        """
        An error reply fails with its code and words; text the server
        would refuse is refused before anything is sent.
        """
        alice = self.client("alice")
        refused = self.failureResultOf(self.run(alice.send("zed", "hi")), Refused)
        self.assertEqual(refused.value.code, 404)
        self.assertIn("zed", str(refused.value))
        for bad in [
            alice.send("bob", "two\nlines"),
            alice.send("bob hi", "x"),
            alice.say("ops", "x"),
            alice.send("bob", "x" * 5000),
            alice.send("bob", "  "),
        ]:
            self.failureResultOf(self.run(bad), Malformed)

    def test_commands_past_the_rate_are_sent_again(self) -> None:
        """
        A command answered 429 is sent again after the wait the server
        names, and succeeds then.
        """
        slow = POLICY.replace("rate = 1000000", "rate = 1\nburst = 1")
        self.instance = self.programs.instance = Instance(self, slow)
        alice = self.client("alice")
        first = self.run(alice.send("bob", "one"))
        second = self.run(alice.send("bob", "two"))
        self.assertEqual(self.successResultOf(first), 1)
        self.assertNoResult(second)
        self.instance.clock.advance(1.5)
        self.instance.flush()
        self.assertEqual(self.successResultOf(second), 2)

    def test_close_ends_the_session_and_the_messages(self) -> None:
        """
        close says QUIT; the session ends as the program wanted, and the
        loop over messages ends with it.
        """
        bob = self.client("bob")
        loop = self.run(_drain(bob))
        self.successResultOf(self.run(bob.close()))
        self.assertEqual(self.successResultOf(bob.ended()).words, "bye")
        self.assertIsNone(self.successResultOf(loop))


async def _drain(client: Client) -> None:
    async for _ in client.messages():
        pass


class ExampleBotTests(SynchronousTestCase):
    def test_docs_show_the_example_bot_as_it_is(self) -> None:
        """
        docs/bots.md shows the echo bot's file whole, so that what it
        documents is what the next test runs.
        """
        shown = re.findall(
            r"```python\n(.*?)```", (DOCS / "bots.md").read_text(), re.DOTALL
        )
        source = Path(example_bot.__file__).read_text()
        self.assertIn(source, shown)

    def test_echo_bot_answers_and_acknowledges(self) -> None:
        """
        The echo bot answers a direct message with its text, and
        acknowledges it: its next login is not sent it again.
        """
        api = Programs(self, Instance(self))
        alice, bot = api.client("alice"), api.client("bob")
        heard = api.arrived(alice)
        echoing = api.run(example_bot.echo(bot))
        self.successResultOf(api.run(alice.send("bob", "hello ❤️")))
        self.assertEqual([(m.sender, m.text) for m in heard], [("bob", "hello ❤️")])
        self.successResultOf(api.run(bot.close()))
        self.assertIsNone(self.successResultOf(echoing))
        self.assertEqual(api.arrived(api.client("bob")), [])
