"""
How the terminal client shows what the server sends: who, where and when,
rather than raw protocol lines.

Everything a peer or the server wrote is escaped with
L{secmsg.wire.escape_controls} before it is returned, so that nothing
shown here can move the cursor, change colours or retitle the terminal,
nor hide in what it shows (a zero width space, a tag character).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from secmsg.capabilities import Offer
from secmsg.wire import PushLine, ReplyLine, escape_controls

USED_CAPABILITIES = ("store", "presence")
"""What the terminal client makes use of, of what a server may offer: it
acknowledges each stored message once shown (store), and shows who joins,
leaves, comes online and goes offline in words (presence)."""

_PRESENCE = {
    "JOINED": "{1} joined {0}",
    "PARTED": "{1} left {0}",
    "ONLINE": "{0} is online",
    "OFFLINE": "{0} went offline",
}
"""How each presence push is shown, by its fields."""


def show_push(push: PushLine, arrived: datetime) -> str:
    """
    One line for a push, stamped with the local time of the message (or,
    for a notice, of its arrival); a message sent on an earlier day shows
    its date, and a repeat says so.
    """
    fields = [escape_controls(field) for field in push.fields]
    if push.kind in ("MSG", "SAY", "BROADCAST"):
        stamp = _stamp(push.fields[1], arrived)
        again = " (again)" if push.redelivery else ""
        if push.kind == "MSG":
            _, _, sender, text = fields
            return f"{stamp} {sender} to you: {text}{again}"
        if push.kind == "SAY":
            _, _, room, sender, text = fields
            return f"{stamp} {room} <{sender}> {text}{again}"
        _, _, sender, text = fields
        return f"{stamp} {sender} to everyone: {text}{again}"
    stamp = f"[{arrived:%H:%M:%S}]"
    if push.kind == "KICKED":
        by, reason = fields
        return f"{stamp} kicked by {by}: {reason or 'no reason'}"
    if push.kind == "CLOSED":
        (reason,) = fields
        return f"{stamp} the server closed the session: {reason}"
    if push.kind in _PRESENCE:
        return f"{stamp} {_PRESENCE[push.kind].format(*fields)}"
    return f"{stamp} {fields[0]}"


def show_offer(offer: Offer | None) -> str:
    """
    One line on what the server speaks and which of it this client uses,
    shown on connecting.
    """
    if offer is None:
        return "the server names no protocol version; using no capabilities"
    used = [name for name in USED_CAPABILITIES if name in offer.capabilities]
    return (
        f"protocol {offer.version}; this client uses "
        f"{', '.join(used) or 'no capabilities'}"
    )


def _stamp(sent: str, arrived: datetime) -> str:
    try:
        moment = datetime.strptime(sent, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        local = moment.astimezone(arrived.tzinfo)
    except (ValueError, OverflowError):
        # Not a time, or one at an end of the calendar that the local zone
        # would move past it (a hostile server's 0001-01-01 west of UTC).
        return f"[{arrived:%H:%M:%S}]"
    if local.date() == arrived.date():
        return f"[{local:%H:%M:%S}]"
    return f"[{local:%Y-%m-%d %H:%M:%S}]"


def acknowledgeable(push: PushLine) -> str | None:
    """
    The id of a message push, for the ACK that says it was shown, or
    L{None} for a notice.
    """
    if push.kind in ("MSG", "SAY", "BROADCAST") and push.fields[0].isdigit():
        return push.fields[0]
    return None


def show_reply(lines: list[ReplyLine], cut: int = 0) -> list[str]:
    """
    The lines of a reply as a person wants to read them: a listing's items
    indented under its summary, a message's id, an error with its code.

    @param cut: the listing's items that were dropped, too many to keep.
    """
    final = lines[-1]
    text = escape_controls(final.text)
    if final.code >= 400:
        return [f"error {final.code}: {text}"]
    if final.code == 250:
        return [f"sent (id {text})"]
    items = [f"  {escape_controls(line.text)}" for line in lines[:-1]]
    if cut:
        items.append(f"  ({cut} more lines not shown)")
    return [text, *items] if items else [text]


def help_commands(lines: list[ReplyLine]) -> list[str]:
    """
    The command names a HELP reply lists, for completing what the user
    types; a word that is not a command name (a hostile server's escape
    sequence, say) is left out.
    """
    words = [line.text.split(" ", 1)[0] for line in lines if not line.final]
    return [word for word in words if _COMMAND_NAME.fullmatch(word)]


_COMMAND_NAME = re.compile(r"[A-Z]{1,32}")
