"""
The soak (C{make soak}, L{bench.soak}) in small: 50 sessions held on the
real daemon for a few seconds of traffic, with a storm, a RELOAD and a
kill -9 and restart, must lose no confirmed message and get every session
back; and its check of delivery must see a message that was lost.
Nothing here times anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bench import soak
from bench.soak_plot import BEGIN, END
from tests.harness import temporary_directory

ROOT = Path(__file__).parent.parent


def _result(**changes: object) -> dict[str, object]:
    """
    One load process's results, with nothing in them but C{changes}.
    """
    result: dict[str, object] = {
        "received": {},
        "tags": {},
        "membership": [],
        "confirmed": [],
        "sent": 0,
        "pushes": 0,
        "redelivered": 0,
        "altered": 0,
        "refused": {},
        "problems": {},
        "closed_by_daemon": {},
        "logins_needed": 0,
        "logins_done": 0,
        "attempts": 0,
        "failures": {},
        "storm_logins": [],
    }
    result.update(changes)
    return result


class DeliveryCheckTests(SynchronousTestCase):
    """
    What the soak counts as owed and as lost.
    """

    def test_confirmed_message_not_received_is_lost(self) -> None:
        """
        A MSG confirmed with 250 that its recipient never got is lost; one
        it got, in either process, is not.
        """
        sender = _result(
            confirmed=[
                (7, "MSG", "w0n1", "u1", "u2", 10, 20),
                (8, "MSG", "w0n2", "u1", "u3", 11, 21),
            ]
        )
        receiver = _result(received={"u2": {7}}, tags={7: "w0n1"})
        delivery = soak.analyse([sender, receiver])["delivery"]
        self.assertEqual(delivery["MSG deliveries owed"], 2)
        self.assertEqual(delivery["MSG deliveries missing"], 1)

    def test_say_is_owed_to_members_in_the_room_throughout(self) -> None:
        """
        A SAY is owed to every other identity whose session was in the
        room from before it was sent until after its 250, and to no one
        who joined after it was sent or left before it was confirmed.
        """
        membership = [
            ("u2", "r", 5, 100),
            ("u3", "r", 15, 100),
            ("u4", "r", 5, 18),
            ("u1", "r", 5, 100),
        ]
        result = _result(
            confirmed=[(9, "SAY", "w0n1", "u1", "r", 10, 20)],
            membership=membership,
            received={"u3": {9}},
        )
        delivery = soak.analyse([result])["delivery"]
        self.assertEqual(delivery["SAY deliveries owed"], 1)
        self.assertEqual(delivery["SAY deliveries missing"], 1)


class SmokeTests(SynchronousTestCase):
    """
    C{python -m bench.soak} with 50 sessions and a few seconds of traffic.
    """

    def test_nothing_confirmed_is_lost_across_a_kill(self) -> None:
        """
        Through a storm, RELOADs and a kill -9 and restart, every message
        confirmed is delivered, every session is held again at the end,
        and the soak writes its section between its markers.
        """
        directory = temporary_directory(self)
        figures_path = directory / "soak.json"
        page = directory / "benchmarks.md"
        page.write_text(f"before\n{BEGIN}\nold\n{END}\nafter\n")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.soak",
                *("--sessions", "50", "--seconds", "12", "--per-identity", "5"),
                *("--rooms", "2", "--room-sessions", "10"),
                *("--direct-rate", "20", "--say-rate", "4"),
                *("--reload-every", "3", "--kill-every", "6"),
                *("--storm-every", "8", "--storm-size", "10"),
                *("--load-processes", "1", "--sample-every", "1"),
                *("--json", str(figures_path), "--markdown", str(page)),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        figures = json.loads(figures_path.read_text())["figures"]
        delivery = figures["delivery"]
        self.assertGreater(delivery["MSG confirmed"], 0)
        self.assertGreater(delivery["SAY confirmed"], 0)
        self.assertEqual(delivery["MSG deliveries missing"], 0)
        self.assertEqual(delivery["SAY deliveries missing"], 0)
        self.assertEqual(figures["held_at_end"], 50)
        logins = figures["logins"]
        self.assertEqual(logins["needed"], logins["done"])
        events = [event["what"] for event in figures["events"]]
        self.assertEqual(events.count("kill -9"), 1)
        self.assertIn("recovered", events)
        self.assertGreaterEqual(figures["reloads"]["done"], 1)
        self.assertEqual(figures["daemon_log"]["tracebacks"], 0)
        text = page.read_text()
        self.assertTrue(text.startswith(f"before\n{BEGIN}\n"), text[:200])
        self.assertTrue(text.endswith(f"{END}\nafter\n"), text[-200:])
        self.assertIn("| MSGs confirmed / deliveries owed / lost |", text)
