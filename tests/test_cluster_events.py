"""
The cluster's bus messages: each event read back as it was written, and
nothing read that is not one, whole and well-typed.
"""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon.cluster import events
from secmsg.daemon.store.shared_database import Segment
from secmsg.messages import Stored
from tests.test_store import broadcast, direct, said

EVENTS = [
    events.Committed(
        "node1",
        Segment(
            4,
            7,
            (
                Stored.of(5, direct("alice", "bob", "héllo")),
                Stored.of(6, said("alice", "#ops", "tab\there")),
                Stored.of(7, broadcast("admin", "all")),
            ),
        ),
    ),
    events.Changed("node1", "bob"),
    events.Present("node1", {"bob": 2, "carol": 1}, 7),
    events.Announced("node1", "JOINED", "bob", "#ops"),
    events.Announced("node1", "ONLINE", "bob", None),
    events.Kicked("node1", "bob", "admin", "enough"),
    events.Leaving("node1"),
]


class EventTests(SynchronousTestCase):
    def test_every_event_reads_back_as_written(self) -> None:
        for event in EVENTS:
            self.assertEqual(events.decode(events.encode(event)), event)

    def test_what_is_not_an_event_is_refused(self) -> None:
        good = events.encode(EVENTS[0])
        for text in [
            "",
            "{",
            "[]",
            "[" * 100,
            '{"event": "Unknown", "node": "x"}',
            '{"event": "Changed", "node": "x"}',
            '{"event": "Changed", "node": "x y", "identity": "bob"}',
            '{"event": "Present", "node": "x", "sessions": {"bob": -1}, "head": 0}',
            '{"event": "Present", "node": "x", "sessions": [], "head": 0}',
            '{"event": "Announced", "node": "x", "word": "RM", "identity": "b",'
            ' "room": null}',
            good.replace('"#ops"', '"ops"'),
            good.replace('"previous":4', '"previous":6'),
            good.replace("h\\u00e9llo", "\\u001b[2J"),
            good.replace("h\\u00e9llo", "\\u202e"),
        ]:
            with self.assertRaises(events.BadEvent, msg=text[:60]):
                events.decode(text)

    @given(st.text(max_size=200))
    def test_no_text_makes_decode_fail_otherwise(self, text: str) -> None:
        with contextlib.suppress(events.BadEvent):
            events.decode(text)
