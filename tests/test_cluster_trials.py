"""
The cluster's kill trials (L{bench.cluster_trials}) and the judging of its
figures (L{bench.cluster}): how replies are counted, that a loss fails
the run, that a missed target is said, and one trial of each fault run for
real, on the PostgreSQL and Redis that L{tests.servers} starts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import cluster
from bench.cluster_trials import Outcome, Stream, summary

ROOT = Path(__file__).parent.parent


class StreamTests(SynchronousTestCase):
    """
    Only a 250 confirms a message; any other reply answers it.
    """

    def test_250_confirms_and_503_only_answers(self) -> None:
        seen = Stream()
        seen.read([b"250 7", b"503 not done, the database", b"ONLINE x"], False)
        seen.read([b"250 9"], True)
        self.assertEqual(seen.confirmed, {7, 9})
        self.assertEqual((seen.answered, seen.unconfirmed), (3, 1))
        self.assertEqual(seen.after_fault, 1)


class SummaryTests(SynchronousTestCase):
    """
    The exit status fails a run that lost a confirmed message, or whose
    trial did not end, and passes one that did neither.
    """

    def outcome(self, lost: int = 0, finished: bool = True) -> Outcome:
        return Outcome("kill", "kill -9 of A", 200, 0, lost, finished, 1.0)

    def test_a_loss_or_a_trial_that_did_not_end_fails(self) -> None:
        self.assertEqual(summary([self.outcome(), self.outcome()]), 0)
        self.assertEqual(summary([self.outcome(), self.outcome(lost=1)]), 1)
        self.assertEqual(summary([self.outcome(finished=False)]), 1)


class TargetsTests(SynchronousTestCase):
    """
    The cluster's figures are judged against their targets: each one
    missed is named.
    """

    def results(self, **changed: Any) -> dict[str, Any]:
        return {
            "two_over_one": 0.9,
            "steady": {"p99_ms": 4.0},
            "presence_max_seconds": 2.5,
            **changed,
        }

    def test_each_missed_target_is_said(self) -> None:
        self.assertEqual(cluster.targets_missed(self.results()), [])
        missed = cluster.targets_missed(
            self.results(two_over_one=0.5, presence_max_seconds=None)
        )
        self.assertEqual(len(missed), 2)
        self.assertIn("0.5", missed[0])
        self.assertIn("OFFLINE", missed[1])


class TrialsTests(SynchronousTestCase):
    """
    C{python -m bench.cluster_trials} with one trial of each fault: every
    trial ends, and nothing confirmed is lost.
    """

    def test_one_trial_of_each_fault_loses_nothing(self) -> None:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.cluster_trials",
                "--kills",
                "1",
                "--redis",
                "1",
                "--postgres",
                "1",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("total: 3 trials, 0 lost, 0 did not end", run.stdout)
        for kind in ("kill", "redis", "postgres"):
            self.assertIn(f"{kind}: 1 trials,", run.stdout)
