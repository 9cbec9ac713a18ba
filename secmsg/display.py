"""
How the terminal client shows what the server sends: who, where and when,
rather than raw protocol lines.

Everything a peer or the server wrote is escaped with
L{secmsg.wire.escape_controls} before it is returned, so that nothing
shown here can move the cursor, change colours or retitle the terminal.
"""

from __future__ import annotations

from datetime import datetime

from secmsg.wire import PushLine, ReplyLine, escape_controls


def show_push(push: PushLine, when: datetime) -> str:
    """
    One line for a push, stamped with the local time it arrived.
    """
    fields = [escape_controls(field) for field in push.fields]
    stamp = f"[{when:%H:%M:%S}]"
    if push.kind == "MSG":
        _, sender, text = fields
        return f"{stamp} {sender} to you: {text}"
    if push.kind == "SAY":
        _, room, sender, text = fields
        return f"{stamp} {room} <{sender}> {text}"
    if push.kind == "BROADCAST":
        _, sender, text = fields
        return f"{stamp} {sender} to everyone: {text}"
    if push.kind == "KICKED":
        by, reason = fields
        return f"{stamp} kicked by {by}: {reason or 'no reason'}"
    if push.kind == "CLOSED":
        (reason,) = fields
        return f"{stamp} the server closed the session: {reason}"
    return f"{stamp} {fields[0]}"


def show_reply(lines: list[ReplyLine]) -> list[str]:
    """
    The lines of a reply as a person wants to read them: a listing's items
    indented under its summary, a message's id, an error with its code.
    """
    final = lines[-1]
    text = escape_controls(final.text)
    if final.code >= 400:
        return [f"error {final.code}: {text}"]
    if final.code == 250:
        return [f"sent (id {text})"]
    items = [f"  {escape_controls(line.text)}" for line in lines[:-1]]
    return [text, *items] if items else [text]


def help_commands(lines: list[ReplyLine]) -> list[str]:
    """
    The command names a HELP reply lists, for completing what the user types.
    """
    return [
        line.text.split(" ", 1)[0] for line in lines if not line.final and line.text
    ]
