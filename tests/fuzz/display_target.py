"""
The client's display of hostile text: whatever lines a server sends, as
the terminal client shows them (secmsg.client.display, and
secmsg.client.received for C{secmsg listen}) and as the JSON lines of
C{secmsg connect --json} and C{secmsg listen --json} write them
(secmsg.client.jsonlines).

Properties: nothing shown or written holds a character that
L{wire.escape_controls} would escape (hence no control character, no line
break, nothing invisible), and never fails, whatever the server sent and
whatever the local time zone; a JSON line parses back to the record it was
made from; and the commands a HELP reply offers for completion are command
names.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from secmsg import wire
from secmsg.client.display import help_commands, show_push, show_reply
from secmsg.client.jsonlines import json_line, message_record, server_line_record
from secmsg.client.received import message_from_push, show_message
from tests.fuzz.fields import Fields

_COMMAND_NAME = re.compile(r"[A-Z]{1,32}")


def one_input(data: bytes) -> None:
    """
    Show every line of C{data} as a server's, at a fuzzed local time.
    """
    fields = Fields(data)
    zone = timezone(timedelta(minutes=(fields.byte() - 128) * 11))
    arrived = datetime(2026, 6, 1, tzinfo=UTC).astimezone(zone) + timedelta(
        hours=fields.byte()
    )
    framer = wire.LineFramer(1 << 20)
    frames = [*framer.feed(fields.rest()), *framer.finish()]
    replies: list[wire.ReplyLine] = []
    for frame in frames:
        if frame is wire.OVERLONG:
            continue
        text = frame.decode("utf-8", "replace")
        _check_json(server_line_record(text))
        line = wire.parse_server_line(text)
        if isinstance(line, wire.PushLine):
            _check_push(line, arrived)
            continue
        replies.append(line)
        if line.final:
            _check_reply(replies)
            replies = []


def _check_push(push: wire.PushLine, arrived: datetime) -> None:
    _check_shown(show_push(push, arrived))
    message = message_from_push(push)
    if message is not None:
        _check_shown(show_message(message, arrived))
        _check_json(message_record(message))


def _check_reply(replies: list[wire.ReplyLine]) -> None:
    for shown in show_reply(replies):
        _check_shown(shown)
    for command in help_commands(replies):
        assert _COMMAND_NAME.fullmatch(command), command


def _check_json(record: dict[str, Any]) -> None:
    line = json_line(record)
    _check_shown(line)
    assert json.loads(line) == record, (line, record)


def _check_shown(shown: str) -> None:
    assert wire.escape_controls(shown) == shown, shown
