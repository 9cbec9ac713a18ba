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
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.patch_stdout import patch_stdout
from twisted.internet import defer

from secmsg import wire
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

    acknowledger = _Acknowledger(session)

    def shown(push: PushLine) -> None:
        if push.kind in ("KICKED", "CLOSED"):
            announced.append(push)
        print(show_push(push, now()))
        message_id = acknowledgeable(push)
        if message_id is not None:
            acknowledger.shown(message_id)

    session.listen(shown)
    try:
        commands = help_commands(await _wait(session.command(b"HELP"), loop))
    except SessionEnded as early:
        if not announced:
            print(escape_controls(early.words))
        return early.status
    acknowledger.decide("ACK" in commands)
    if "PING" in commands:
        session.keep_alive(KEEPALIVE_INTERVAL)
    prompt: PromptSession[str] = PromptSession(
        completer=WordCompleter([*commands, *QUIT_WORDS], ignore_case=True),
        complete_while_typing=False,
    )
    print(
        escape_controls(" ".join(["commands:", *commands]))
        + "; /quit or Ctrl-D to leave"
    )
    session.ended.addCallback(lambda ending: _leave_prompt(prompt, ending))
    with patch_stdout(raw=True):
        while not session.ended.called:
            try:
                line = await prompt.prompt_async(f"{greeting.identity}> ")
            except EOFError:
                line = QUIT_WORDS[0]
            except KeyboardInterrupt:
                continue
            if session.ended.called or await _one_command(session, line, loop):
                break
    ending = await _wait(session.ended, loop)
    if ending.status is not ExitStatus.OK and not announced:
        print(escape_controls(ending.words))
    return ending.status


async def _one_command(
    session: ClientProtocol, line: str, loop: asyncio.AbstractEventLoop
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
    for shown in show_reply(replies):
        print(shown)
    return replies[-1].code == 221


class _Acknowledger:
    """
    Says ACK for each message once it has been shown, so that a person at a
    terminal never has to: the server keeps a message until then, and sends
    it again at the next login if the session ends first.  Messages shown
    before HELP has said whether ACK is allowed wait for that answer.
    """

    def __init__(self, session: ClientProtocol) -> None:
        self._session = session
        self._allowed: bool | None = None
        self._waiting: list[str] = []

    def shown(self, message_id: str) -> None:
        if self._allowed is None:
            self._waiting.append(message_id)
        elif self._allowed:
            self._acknowledge(message_id)

    def decide(self, allowed: bool) -> None:
        self._allowed = allowed
        waiting, self._waiting = self._waiting, []
        if allowed:
            for message_id in waiting:
                self._acknowledge(message_id)

    def _acknowledge(self, message_id: str) -> None:
        self._session.command(b"ACK " + message_id.encode()).addErrback(
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
