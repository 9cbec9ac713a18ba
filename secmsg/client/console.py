"""
The interactive terminal of C{secmsg connect}, on prompt_toolkit.

prompt_toolkit keeps the input line usable while messages arrive: anything
printed while a prompt is open goes above it.  It runs on asyncio's loop,
which is why C{secmsg connect} runs Twisted on the asyncio reactor.  What
is printed comes from L{secmsg.client.display}, escaped; what the user types is
sent as a command line, and C{/quit} or Ctrl-D leaves.  When the server
shuts down or the connection drops, the prompt stays and says it is
connecting again (L{secmsg.client.reconnecting}); Ctrl-C then leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from secmsg import wire
from secmsg.client.completion import IDENTITY, ROOM, CommandCompleter, Names
from secmsg.client.display import (
    help_commands,
    show_offer,
    show_push,
    show_reply,
)
from secmsg.client.protocol import ClientProtocol, ExitStatus, Greeting, SessionEnded
from secmsg.client.reconnecting import NotConnected, ReconnectingSession
from secmsg.errors import CommandError
from secmsg.wire import PushLine, escape_controls

QUIT_WORDS = ("/quit",)

KEEPALIVE_INTERVAL = 60.0
"""Seconds between the PINGs that keep a quiet session open: the server
closes one that sends nothing for its idle timeout (15 minutes unless the
operator says otherwise), and a person reading a room sends nothing."""

NAMES_REFRESH = 30.0
"""Seconds that a WHO or ROOMS answer serves completion before Tab asks
again: who is online changes, but not with every key pressed."""

INTERRUPTED = SessionEnded(ExitStatus.INTERRUPTED, "interrupted")

T = TypeVar("T")


async def run_console(
    session: ClientProtocol,
    greeting: Greeting,
    dial: Callable[[], defer.Deferred[ClientProtocol]],
    clock: IReactorTime,
    now: Callable[[], datetime],
) -> ExitStatus:
    """
    Talk to the server until the user leaves or the session ends in a way
    that connecting again would not mend (L{ReconnectingSession}).

    @param dial: connects again, after a shutdown or a lost connection.
    @param now: the local time, to stamp what arrives.
    @return: how the session ended, for the exit status.
    """
    loop = asyncio.get_running_loop()
    print(escape_controls(greeting.text))
    print(show_offer(greeting.offer))
    console = _Console(dial, clock, now)
    try:
        began = console.session.attach(session, greeting)
        await _wait(defer.Deferred.fromCoroutine(began), loop)
    except SessionEnded as early:
        print(escape_controls(early.words))
        return early.status
    return await console.run(greeting.identity, loop)


class _Console:
    """
    The prompt and what it knows (the commands HELP granted, the names to
    complete) over a L{ReconnectingSession}.
    """

    def __init__(
        self,
        dial: Callable[[], defer.Deferred[ClientProtocol]],
        clock: IReactorTime,
        now: Callable[[], datetime],
    ) -> None:
        self.session = ReconnectingSession(
            dial, clock, self._greeted, self._shown, print
        )
        self._now = now
        self._names = Names()
        self._commands: list[str] = []

    async def _greeted(self, session: ClientProtocol, _: Greeting) -> list[str]:
        """
        Ask what the session may use, keep it open, and say what it may
        use before what waited for us follows.
        """
        self._commands = help_commands(await session.command(b"HELP"))
        if "PING" in self._commands:
            session.keep_alive(KEEPALIVE_INTERVAL)
        print(
            escape_controls(" ".join(["commands:", *self._commands]))
            + "; /quit or Ctrl-D to leave"
        )
        return self._commands

    def _shown(self, push: PushLine) -> None:
        self._names.saw(push)
        print(show_push(push, self._now()))

    async def run(self, identity: str, loop: asyncio.AbstractEventLoop) -> ExitStatus:
        """
        Read and send what the user types until the terminal's session is
        over; Ctrl-C while connecting again ends it too.
        """
        refresher = _Refresher(self.session, self._names, self._commands, self._now)
        prompt: PromptSession[str] = PromptSession(
            completer=CommandCompleter(
                [*self._commands, *QUIT_WORDS], self._names, refresher
            ),
            complete_while_typing=False,
        )
        refresher(frozenset([IDENTITY, ROOM]))
        over = self.session.over
        over.addCallback(lambda ending: _leave_prompt(prompt, ending))
        with patch_stdout(raw=True):
            while not over.called:
                try:
                    line = await prompt.prompt_async(lambda: self._label(identity))
                except EOFError:
                    line = QUIT_WORDS[0]
                except KeyboardInterrupt:
                    if not self.session.connected:
                        self.session.stop(INTERRUPTED)
                    continue
                if over.called or await _one_command(
                    self.session, line, self._names, loop
                ):
                    break
        ending = await _wait(over, loop)
        return ending.status

    def _label(self, identity: str) -> str:
        if self.session.connected:
            return f"{identity}> "
        return f"{identity} (connecting again)> "


async def _one_command(
    session: ReconnectingSession,
    line: str,
    names: Names,
    loop: asyncio.AbstractEventLoop,
) -> bool:
    """
    Send what the user typed and show the reply; a line typed while
    connecting again is refused in words.

    @return: whether the user quit.
    """
    if line.strip().lower() in QUIT_WORDS:
        line = "QUIT"
    raw = line.encode("utf-8", "surrogateescape")
    try:
        wire.decode_line(raw)
    except CommandError as error:
        # A pasted newline would be a second command, sent unseen.
        print(f"not sent: {error.text}")
        return False
    if wire.is_blank(line):
        return False
    try:
        replies = await _wait(session.command(raw), loop)
    except NotConnected as refused:
        print(refused.words)
        return False
    except SessionEnded:
        # Whether it is over, or connecting again, the session says.
        return False
    for shown in show_reply(replies, replies.cut):
        print(shown)
    _learn(names, line, replies)
    return replies[-1].code == 221


def _learn(names: Names, line: str, replies: list[wire.ReplyLine]) -> None:
    """
    Keep what the user's own WHO, ROOMS or JOIN told of names to complete.
    """
    if replies[-1].code >= 400:
        return
    verb, _, rest = line.strip(" ").partition(" ")
    verb = verb.upper()
    if verb == "WHO" and not rest.strip(" "):
        names.take_who(replies)
    elif verb == "ROOMS":
        names.take_rooms(replies)
    elif verb == "JOIN":
        names.joined(rest.strip(" "))


class _Refresher:
    """
    Asks the server for the names completion offers: WHO for identities,
    ROOMS for rooms, each if the policy grants it, at the start and again
    when one of them is about to be completed and its last answer is older
    than L{NAMES_REFRESH} seconds.
    """

    def __init__(
        self,
        session: ReconnectingSession,
        names: Names,
        commands: list[str],
        now: Callable[[], datetime],
    ) -> None:
        self._session = session
        self._names = names
        self._now = now
        self._lines = {
            kind: line
            for kind, verb, line in (
                (IDENTITY, "WHO", b"WHO"),
                (ROOM, "ROOMS", b"ROOMS"),
            )
            if verb in commands
        }
        self._asked: dict[str, datetime] = {}

    def __call__(self, kinds: frozenset[str]) -> None:
        now = self._now()
        for kind in kinds & self._lines.keys():
            last = self._asked.get(kind)
            if last is not None and (now - last).total_seconds() < NAMES_REFRESH:
                continue
            self._asked[kind] = now
            asking = self._session.command(self._lines[kind])
            asking.addCallback(self._answered, kind)
            asking.addErrback(lambda failure: failure.trap(SessionEnded))

    def _answered(self, replies: list[wire.ReplyLine], kind: str) -> None:
        if replies[-1].code >= 400:
            return
        if kind == IDENTITY:
            self._names.take_who(replies)
        else:
            self._names.take_rooms(replies)


def _leave_prompt(prompt: PromptSession[str], ending: SessionEnded) -> SessionEnded:
    """
    End an open prompt when the terminal's session is over under it
    (KICKED, a refused certificate), so that the user is told at once, not
    at next Enter.
    """
    if prompt.app.is_running:
        prompt.app.exit(result="")
    return ending


async def _wait(deferred: defer.Deferred[T], loop: asyncio.AbstractEventLoop) -> T:
    return await deferred.asFuture(loop)
