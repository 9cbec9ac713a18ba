"""
The benchmark's own parts: its MQTT encoder against the standard's
examples and any cut of a stream, and a smoke run of every scenario with
tiny counts, which must produce well-formed results. Nothing here times
anything: the smoke run checks that the benchmark works, not how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bench import mqtt, paths, report, scenarios, targets
from bench.servers import SecmsgServer, secmsg_from
from tests.harness import temporary_directory
from tests.test_wire import chunked

ROOT = Path(__file__).parent.parent


class RemainingLengthTests(SynchronousTestCase):
    """
    The fixed header's length, as the examples of MQTT 3.1.1 (2.2.3) give it.
    """

    def test_examples(self) -> None:
        for length, encoded in [
            (0, b"\x00"),
            (127, b"\x7f"),
            (128, b"\x80\x01"),
            (16_383, b"\xff\x7f"),
            (16_384, b"\x80\x80\x01"),
            (2_097_151, b"\xff\xff\x7f"),
            (268_435_455, b"\xff\xff\xff\x7f"),
        ]:
            self.assertEqual(mqtt.remaining_length(length), encoded, length)

    def test_too_long(self) -> None:
        with self.assertRaises(ValueError):
            mqtt.remaining_length(268_435_456)

    def test_connect(self) -> None:
        """
        CONNECT for protocol level 4 with a clean session and a client id.
        """
        self.assertEqual(
            mqtt.connect("c1", clean_session=True),
            b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x00\x00\x02c1",
        )


packets = st.lists(
    st.one_of(
        st.builds(
            lambda topic, body: mqtt.publish(topic, body),
            st.text(min_size=1, max_size=20),
            st.binary(max_size=300),
        ),
        st.builds(
            lambda topic, body, packet_id: mqtt.publish(topic, body, 1, packet_id),
            st.text(min_size=1, max_size=20),
            st.binary(max_size=300),
            st.integers(1, 65535),
        ),
        st.builds(mqtt.puback, st.integers(1, 65535)),
    ),
    max_size=10,
)


class DecoderTests(SynchronousTestCase):
    """
    The decoder finds the same packets however the stream is cut.
    """

    @given(packets, st.lists(st.integers(1, 40), max_size=40))
    def test_any_cut(self, sent: list[bytes], sizes: list[int]) -> None:
        decoder = mqtt.Decoder()
        stream = b"".join(sent)
        received = [p for piece in chunked(stream, sizes) for p in decoder.feed(piece)]
        self.assertEqual(len(received), len(sent))
        for packet, original in zip(received, sent, strict=True):
            self.assertEqual(packet.kind, original[0] >> 4)
            self.assertTrue(original.endswith(packet.body))

    def test_publish_parts(self) -> None:
        decoder = mqtt.Decoder()
        stream = mqtt.publish("rooms/a", b"hello", 1, 7) + mqtt.publish("d/b", b"x")
        first, second = decoder.feed(stream)
        self.assertEqual(mqtt.publish_parts(first), ("rooms/a", 7, b"hello"))
        self.assertEqual(mqtt.publish_parts(second), ("d/b", 0, b"x"))

    def test_length_past_four_bytes(self) -> None:
        with self.assertRaises(mqtt.ProtocolError):
            list(mqtt.Decoder().feed(b"\x30\xff\xff\xff\xff\x01"))


class PacingTests(SynchronousTestCase):
    """
    A paced sender charges the server for messages it held back, and only
    for those.
    """

    def test_held_back_carry_when_due(self) -> None:
        """
        At 1,000 a second from 0 ns, messages 0-2 were due at 1, 2 and
        3 ms; the sender's last turn was at 3.5 ms and it sends at 4 ms: the
        three it held back carry when they were due, the one due at 4 ms
        (since its last turn) carries now.
        """
        self.assertEqual(
            scenarios._stamps(0, 4, 1000.0, 0, 3_500_000, 4_200_000),
            [1_000_000, 2_000_000, 3_000_000, 4_200_000],
        )


class WarningTests(SynchronousTestCase):
    """
    Whatever went wrong anywhere in the results is reported, with where.
    """

    def test_found_at_any_depth(self) -> None:
        results = {
            "direct": {"secmsg": {"sweep": [{"problems": {}}, {"lost_sessions": 2}]}},
            "idle": {"mosquitto": {"log_tracebacks": 0, "failures": {"x": 1}}},
        }
        self.assertEqual(
            report.warnings(results),
            [
                "/direct/secmsg/sweep/1: lost_sessions 2",
                "/idle/mosquitto: failures {'x': 1}",
            ],
        )


def _flood_results(p99_ms: float | None, target_ms: float | None) -> dict[str, Any]:
    return {
        "flood": {
            "secmsg": {
                "flooders": 8,
                "target_p99_ms": target_ms,
                "flood": {"ping": {"p99_ms": p99_ms}},
            }
        }
    }


class TargetTests(SynchronousTestCase):
    """
    A run whose blank-line flood slows another session's PING past the
    target says so; one that sets no target (a smoke run) judges nothing.
    """

    def test_ping_p99_over_target_warns(self) -> None:
        self.assertEqual(
            report.targets_missed(_flood_results(618.0, 20.0)),
            [
                "/flood/secmsg: another session's PING p99 was 618 ms with 8 "
                "sessions flooding blank lines, over the 20 ms target"
            ],
        )

    def test_no_ping_answered_warns(self) -> None:
        """
        A flood during which no PING was answered has no p99 to meet it.
        """
        self.assertEqual(len(report.targets_missed(_flood_results(None, 20.0))), 1)

    def test_within_target_or_none_set_is_quiet(self) -> None:
        self.assertEqual(report.targets_missed(_flood_results(19.9, 20.0)), [])
        self.assertEqual(report.targets_missed(_flood_results(618.0, None)), [])
        self.assertEqual(report.targets_missed({"direct": {}}), [])


class GoalTests(SynchronousTestCase):
    """
    A target is judged against its bound, or against Mosquitto's figure of
    the same run, and not at all where the run has no figure for it.
    """

    def test_absolute_bounds(self) -> None:
        at_most = targets.Goal("cost", lambda *_: None, 35, at_least=False)
        self.assertEqual(at_most.verdict(35.0, None), "met")
        self.assertEqual(at_most.verdict(35.1, None), "missed")
        at_least = targets.Goal("rate", lambda *_: None, 30_000, at_least=True)
        self.assertEqual(at_least.verdict(29_999.0, 1.0), "missed")
        self.assertEqual(at_least.stated(), "≥ 30,000")

    def test_bound_of_mosquitto(self) -> None:
        goal = targets.Goal(
            "rate", lambda *_: None, 1, at_least=True, of_mosquitto=True
        )
        self.assertEqual(goal.verdict(500.0, 400.0), "met")
        self.assertEqual(goal.verdict(300.0, 400.0), "missed")
        self.assertIsNone(goal.verdict(300.0, None))
        self.assertEqual(goal.stated(), "≥ Mosquitto's")

    def test_not_measured(self) -> None:
        """
        A run whose parameters are not the target's (a smoke run's two
        pairs) has no figure for it: "-", neither met nor missed.
        """
        results = {
            "direct": {
                server: {"saturation": {"delivered_per_second": 40_000.0}}
                for server in ("secmsg", "mosquitto")
            }
        }
        parameters = {"pairs": 2, "steady": 2000}
        rows = paths.against_targets(results, parameters)
        first = next(row for row in rows if row.startswith("| direct, 4 pairs"))
        self.assertTrue(first.endswith("| - | - | - | - |"), first)
        parameters["pairs"] = 4
        rows = paths.against_targets(results, parameters)
        first = next(row for row in rows if row.startswith("| direct, 4 pairs"))
        self.assertTrue(first.endswith("| 40,000 | 40,000 | 1.00 | met |"), first)

    def test_another_checkout_has_a_column(self) -> None:
        """
        With --compare, the other checkout's figure stands beside secmsg's.
        """
        results = {
            "handshakes": {
                "1.3": {
                    name: {"server_cpu_ms_each": cost, "per_second": 300.0}
                    for name, cost in (
                        ("secmsg (old)", 3.0),
                        ("secmsg", 1.5),
                        ("mosquitto", 1.8),
                    )
                }
            }
        }
        rows = paths.against_targets(results, {})
        self.assertIn("| target | bound | secmsg (old) | secmsg | Mosquitto |", rows[4])
        login = next(row for row in rows if "per login" in row)
        self.assertIn("| ≤ 1.7 | 3 | 1.5 | 1.8 | 0.83 | met |", login)


class CompareTests(SynchronousTestCase):
    """
    --compare runs another checkout's daemon: its code comes first on the
    path of every process that runs it, and its figures carry its name.
    """

    def test_another_checkout_runs_its_own_code(self) -> None:
        tree = temporary_directory(self) / "before"
        other = secmsg_from(tree)
        self.assertEqual(other.name, "secmsg (before)")
        running = other.running()
        self.assertEqual(running["env"]["PYTHONPATH"], str(tree.resolve()))
        self.assertEqual(running["cwd"], tree.resolve())
        self.assertEqual(SecmsgServer.running(), {})


class GeneratedSectionTests(SynchronousTestCase):
    """
    A run's tables replace only what lies between the markers.
    """

    def test_replaces_between_markers(self) -> None:
        page = temporary_directory(self) / "page.md"
        page.write_text(f"before\n{report.BEGIN}\nold\n{report.END}\nafter\n")
        report.replace_generated(page, f"{report.BEGIN}\nnew\n{report.END}\n")
        self.assertEqual(
            page.read_text(), f"before\n{report.BEGIN}\nnew\n{report.END}\nafter\n"
        )


class SmokeTests(SynchronousTestCase):
    """
    C{python -m bench.run --smoke}: every scenario against secmsg and
    Mosquitto (and s_server for handshakes; the blank-line flood against
    secmsg alone), for a second each.
    """

    def test_every_scenario(self) -> None:
        directory = temporary_directory(self)
        results_path = directory / "results.json"
        page = directory / "benchmarks.md"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.run",
                "--smoke",
                "--json",
                str(results_path),
                "--markdown",
                str(page),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        document = json.loads(results_path.read_text())
        summary = page.read_text()
        self.assertEqual(
            set(document), {"started", "machine", "versions", "parameters", "results"}
        )
        results = document["results"]
        self.assertEqual(
            set(results),
            {
                "handshakes",
                "direct",
                "rooms",
                "room-steady",
                "broadcast",
                "history",
                "idle",
                "durable",
                "flood",
            },
        )
        for server in (
            "secmsg",
            "mosquitto",
            "openssl s_server",
            "Twisted + pyOpenSSL",
        ):
            handshakes = results["handshakes"]["1.3"][server]
            self.assertGreater(handshakes["per_second"], 0, server)
            self.assertEqual(handshakes["failures"], {}, server)
        for server in ("secmsg", "mosquitto"):
            direct = results["direct"][server]
            for figure in [*direct["sweep"], direct["saturation"]]:
                self.assertGreater(figure["delivered_per_second"], 0, server)
                self.assertEqual(figure["lost_sessions"], 0, server)
                self.assertEqual(figure["problems"], {}, server)
            room = results["rooms"]["4"][server]
            self.assertGreater(room["delivered_per_second"], 0, server)
            self.assertEqual(room["problems"], {}, server)
            idle = results["idle"][server]
            self.assertEqual([level["sessions"] for level in idle["levels"]], [20, 40])
            self.assertEqual(idle["lost_sessions"], 0, server)
            self.assertGreater(results["durable"][server]["confirmed_per_second"], 0)
            for scenario in ("direct", "idle", "durable"):
                self.assertEqual(results[scenario][server]["log_tracebacks"], 0)
        self._check_flood(results["flood"])
        self._check_message_paths(results)
        self.assertEqual(report.all_warnings(results), [])
        self.assertNotIn("Warning", summary)
        self.assertIn("### 1. Handshakes, TLS 1.3", summary)
        self.assertIn("| delivered a second |", summary)
        self.assertIn("### 5. Durable", summary)
        self.assertIn("### 6. Blank-line flood", summary)
        self.assertIn("| PING p99 (ms) |", summary)
        for heading in (
            "M = 4 at a steady 50 messages a second",
            "### 7. Broadcast, 200 known identities",
            "### 8. Direct messages and ACK after 2,000 stored messages",
            "### Against the targets",
        ):
            self.assertIn(heading, summary)

    def _check_message_paths(self, results: dict[str, Any]) -> None:
        """
        The steady room and the broadcast against both daemons; the full
        store against secmsg alone, beside a fresh one, with the ratios.
        """
        for server in ("secmsg", "mosquitto"):
            room = results["room-steady"][server]
            self.assertEqual(room["offered_per_second"], 50.0, server)
            self.assertGreater(room["delivered_per_second"], 0, server)
            broadcast = results["broadcast"][server]
            self.assertGreater(broadcast["confirmed_per_second"], 0, server)
            self.assertGreater(broadcast["delivered_per_second"], 0, server)
            self.assertGreater(broadcast["server_cpu_us_per_broadcast"], 0, server)
        self.assertEqual(results["broadcast"]["secmsg"]["known"], 200)
        self.assertIsNone(results["broadcast"]["mosquitto"]["known"])
        self.assertEqual(set(results["history"]), {"secmsg"})
        history = results["history"]["secmsg"]
        self.assertEqual(history["messages_stored"], 2000)
        for state in ("fresh", "stored"):
            self.assertGreater(
                history[state]["saturation"]["delivered_per_second"], 0, state
            )
            self.assertEqual(history[state]["acks"]["count"], 50, state)
            self.assertGreater(history[state]["acks"]["per_second"], 0, state)
        self.assertEqual(
            set(history["ratio_to_fresh"]),
            {
                "delivered_per_second",
                "server_cpu_us_per_message",
                "p99_ms",
                "acks_per_second",
                "server_cpu_us_per_ack",
            },
        )
        self.assertGreater(history["ratio_to_fresh"]["delivered_per_second"], 0)

    def _check_flood(self, flood: dict[str, Any]) -> None:
        """
        The flood is measured against secmsg alone, with no target in a
        smoke run; both probes answered at rest and during the flood, and
        the flooders logged in (a one-second window may be too short to see
        them write: the socket's buffers they filled in the warm-up hold
        more than the server reads in it).
        """
        self.assertEqual(set(flood), {"secmsg"})
        secmsg = flood["secmsg"]
        self.assertEqual(secmsg["flooders"], 2)
        self.assertIsNone(secmsg["target_p99_ms"])
        self.assertEqual(secmsg["log_tracebacks"], 0)
        for phase in ("rest", "flood"):
            figure = secmsg[phase]
            self.assertGreater(figure["ping"]["count"], 0, phase)
            self.assertEqual(
                set(figure["ping"]), {"count", "p50_ms", "p99_ms", "p999_ms"}
            )
            self.assertGreater(figure["login"]["count"], 0, phase)
            self.assertEqual(set(figure["login"]), {"count", "p50_ms", "max_ms"})
            self.assertEqual(figure["failures"], {}, phase)
        during = secmsg["flood"]
        self.assertGreater(during["sessions"], 0)
        self.assertGreaterEqual(during["blank_lines_per_second"], 0)
        self.assertIsInstance(during["reconnects"], int)
        for counts in ("closed_by_server", "replies", "logins_refused"):
            self.assertIsInstance(during[counts], dict, counts)
        self.assertNotIn("reconnects", secmsg["rest"])
