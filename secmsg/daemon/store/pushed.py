"""
What was pushed to whom and is not yet written, kept on the reactor's
thread until a store job carries it to the cursors' C{sent} positions.

A room message to a hundred members is a hundred marks; written with each
message that follows, a steady room cost the store a statement per
delivery.  Kept here, a member's marks of many messages fold into one
position a stream, and each job takes only the marks it may read.
"""

from __future__ import annotations

from collections.abc import Iterable

from secmsg.messages import Stored, Stream, stream_of

Mark = tuple[str, Stream, int]
"""An identity, a stream, and the id up to which the stream was pushed
to it."""


class PushedMarks:
    """
    For each identity, how far each stream was pushed to it, not yet
    written.
    """

    def __init__(self) -> None:
        self._pushed: dict[str, dict[Stream, int]] = {}

    def __bool__(self) -> bool:
        return bool(self._pushed)

    def note(self, deliveries: Iterable[tuple[str, Stored]]) -> None:
        """
        Each C{(identity, message)} was pushed.
        """
        for identity, message in deliveries:
            pushed = self._pushed.setdefault(identity, {})
            stream = stream_of(message)
            if pushed.get(stream, 0) < message.id:
                pushed[stream] = message.id

    def take(self, reader: str | None) -> list[Mark]:
        """
        Forget and return the marks of C{reader}, or everyone's for
        L{None}.
        """
        if reader is None:
            taken, self._pushed = self._pushed, {}
        elif reader in self._pushed:
            taken = {reader: self._pushed.pop(reader)}
        else:
            return []
        return [
            (identity, stream, position)
            for identity, pushed in taken.items()
            for stream, position in pushed.items()
        ]
