"""
The interactive terminal of C{secmsg connect}, on prompt_toolkit.

prompt_toolkit keeps the input line usable while messages arrive: anything
printed while a prompt is open goes above it.  It runs on asyncio's loop,
which is why C{secmsg connect} runs Twisted on the asyncio reactor.  What
is printed comes from L{secmsg.client.display}, escaped; what the user types is
sent as a command line, and C{/quit} or Ctrl-D leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout
from twisted.internet import defer

from secmsg import wire
from secmsg.client.completion import IDENTITY, ROOM, CommandCompleter, Names
from secmsg.client.display import (
    acknowledgeable,
    help_commands,
    show_offer,
    show_push,
    show_reply,
)
from secmsg.client.protocol import ClientProtocol, ExitStatus, Greeting, SessionEnded
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

T = TypeVar("T")


async def run_console(
    session: ClientProtocol, greeting: Greeting, now: Callable[[], datetime]
) -> ExitStatus:
    """
    Talk to the server until the user leaves or the session ends.

    @param now: the local time, to stamp what arrives.
    @return: how the session ended, for the exit status.
    """
    loop = asyncio.get_running_loop()
    print(escape_controls(greeting.text))
    print(show_offer(greeting.offer))
    announced: list[PushLine] = []
    names = Names()
    try:
        helped = await _wait(session.command(b"HELP"), loop)
        commands = help_commands(helped)
    except SessionEnded as early:
        print(escape_controls(early.words))
        return early.status

    def shown(push: PushLine) -> None:
        if push.kind in ("KICKED", "CLOSED"):
            announced.append(push)
        names.saw(push)
        print(show_push(push, now()))
        message_id = acknowledgeable(push)
        if message_id is not None and "ACK" in commands:
            _acknowledge(session, message_id)

    if "PING" in commands:
        session.keep_alive(KEEPALIVE_INTERVAL)
    refresher = _Refresher(session, names, commands, now)
    prompt: PromptSession[str] = PromptSession(
        completer=CommandCompleter([*commands, *QUIT_WORDS], names, refresher),
        complete_while_typing=False,
    )
    print(
        escape_controls(" ".join(["commands:", *commands]))
        + "; /quit or Ctrl-D to leave"
    )
    # Messages that waited for us follow the banner, not split it; the
    # session holds them until there is a listener.
    session.listen(shown)
    refresher(frozenset([IDENTITY, ROOM]))
    session.ended.addCallback(lambda ending: _leave_prompt(prompt, ending))
    with patch_stdout(raw=True):
        while not session.ended.called:
            try:
                line = await prompt.prompt_async(f"{greeting.identity}> ")
            except EOFError:
                line = QUIT_WORDS[0]
            except KeyboardInterrupt:
                continue
            if session.ended.called or await _one_command(session, line, names, loop):
                break
    ending = await _wait(session.ended, loop)
    if ending.status is not ExitStatus.OK and not announced:
        print(escape_controls(ending.words))
    return ending.status


async def _one_command(
    session: ClientProtocol, line: str, names: Names, loop: asyncio.AbstractEventLoop
) -> bool:
    """
    Send what the user typed and show the reply.

    @return: whether the session is over (the user quit).
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
    except SessionEnded:
        return True
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
        session: ClientProtocol,
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


def _acknowledge(session: ClientProtocol, message_id: str) -> None:
    """
    Say ACK for a message once it has been shown, so that a person at a
    terminal never has to: the server keeps a message until then, and
    sends it again at the next login if the session ends first.
    """
    session.command(b"ACK " + message_id.encode()).addErrback(
        lambda failure: failure.trap(SessionEnded)
    )


def _leave_prompt(prompt: PromptSession[str], ending: SessionEnded) -> SessionEnded:
    """
    End an open prompt when the session ends under it (KICKED, CLOSED, a
    lost connection), so that the user is told at once, not at next Enter.
    """
    if prompt.app.is_running:
        prompt.app.exit(result="")
    return ending


async def _wait(deferred: defer.Deferred[T], loop: asyncio.AbstractEventLoop) -> T:
    return await deferred.asFuture(loop)
