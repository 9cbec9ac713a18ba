"""
The daemon's counters as Prometheus reads them, the figures read at the
scrape (reloads, expiry times, mailboxes, the process), and the dashboard
that names them.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from secmsg import __version__
from secmsg.daemon.expiry import ca_label
from secmsg.daemon.metrics import Metrics, snake_case
from secmsg.errors import ConfigurationError
from tests.certs import CertificateAuthority, now
from tests.harness import Instance

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

DASHBOARD = Path(__file__).resolve().parent.parent / "contrib/grafana/secmsg.json"


def samples_of(metrics: Metrics) -> Samples:
    """
    Every sample a scrape reads, by name and sorted labels.
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
    }


def exported_names(metrics: Metrics) -> set[str]:
    """
    Every name a query can select, including those of labelled counters
    that have counted nothing yet and so have no sample.
    """
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    names = set()
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


_GROUPINGS = ("by", "without", "on", "ignoring", "group_left", "group_right")
_PROMQL_WORDS = {*_GROUPINGS, "and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """
    The metric names a PromQL expression selects: every identifier that
    is not a function, a keyword, a label (inside braces or a grouping)
    or a string or duration.
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr
    )
    words = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()(?![A-Za-z0-9_:])", expr)
    return {w for w in words if w.lower() not in _PROMQL_WORDS}


def dashboard_exprs(dashboard: dict) -> list[str]:
    """
    The query of every target of every panel, rows' panels included.
    """
    panels = list(dashboard["panels"])
    exprs = []
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        exprs.extend(target["expr"] for target in panel.get("targets", []))
    return exprs


class MetricsTests(SynchronousTestCase):
    def test_counts_come_out_in_prometheus_text(self) -> None:
        """
        What is counted is what a scrape reads: counters by their labels,
        the sessions gauge from its function, and a cumulative histogram
        of store latency whose buckets count values up to their bound.
        """
        metrics = Metrics()
        metrics.count_sessions(lambda: 3)
        metrics.command("MSG", "250")
        metrics.command("MSG", "250")
        metrics.rate_limited("PING")
        metrics.admin_request("METRICS", 403)
        for seconds in (0.0005, 0.003, 2.0):
            metrics.store_latency(seconds)
        samples = samples_of(metrics)
        self.assertEqual(samples["secmsg_sessions_open", ()], 3)
        self.assertEqual(
            samples["secmsg_commands_total", (("code", "250"), ("command", "MSG"))], 2
        )
        self.assertEqual(
            samples["secmsg_rate_limited_total", (("command", "PING"),)], 1
        )
        self.assertEqual(
            samples[
                "secmsg_admin_requests_total", (("code", "403"), ("command", "METRICS"))
            ],
            1,
        )
        bucket = "secmsg_store_accept_seconds_bucket"
        self.assertEqual(samples[bucket, (("le", "0.0005"),)], 1)
        self.assertEqual(samples[bucket, (("le", "0.005"),)], 2)
        self.assertEqual(samples[bucket, (("le", "1.0"),)], 2)
        self.assertEqual(samples[bucket, (("le", "+Inf"),)], 3)
        self.assertAlmostEqual(samples["secmsg_store_accept_seconds_sum", ()], 2.0035)

    def test_messages_and_deliveries_are_counted_apart(self) -> None:
        """
        A message to three recipients, one online, is one message accepted
        and three deliveries: one delivered, two queued.
        """
        metrics = Metrics()
        metrics.message(1, 2)
        samples = samples_of(metrics)
        self.assertEqual(samples["secmsg_messages_accepted_total", ()], 1)
        deliveries = "secmsg_deliveries_total"
        self.assertEqual(samples[deliveries, (("outcome", "delivered"),)], 1)
        self.assertEqual(samples[deliveries, (("outcome", "queued"),)], 2)

    def test_handshake_outcomes_are_snake_case(self) -> None:
        """
        The daemon counts outcomes in the words it logs; a scrape reads
        them in snake_case, with no space or capital to quote.
        """
        metrics = Metrics()
        for words in ("login refused", "unknown CA", "connection limit", "accepted"):
            metrics.handshake(words)
        outcomes = {
            dict(labels)["outcome"]
            for name, labels in samples_of(metrics)
            if name == "secmsg_handshakes_total"
        }
        self.assertEqual(
            outcomes, {"login_refused", "unknown_ca", "connection_limit", "accepted"}
        )
        self.assertEqual(
            snake_case("identity not a name token"), "identity_not_a_name_token"
        )

    def test_build_and_process_are_exported(self) -> None:
        """
        The version running, and prometheus-client's process and platform
        metrics, which a private registry would otherwise leave out.
        """
        samples = samples_of(Metrics())
        self.assertEqual(samples["secmsg_build_info", (("version", __version__),)], 1)
        self.assertGreater(samples["process_resident_memory_bytes", ()], 0)
        self.assertIn("process_cpu_seconds_total", {name for name, _ in samples})
        self.assertIn("python_info", {name for name, _ in samples})


class DaemonMetricsTests(SynchronousTestCase):
    """
    The figures a daemon reads at the scrape.
    """

    def setUp(self) -> None:
        self.instance = Instance(self)
        self.metrics = self.instance.daemon.metrics

    def samples(self) -> Samples:
        return samples_of(self.metrics)

    def next_updates(self) -> list[float]:
        """
        The next update of each CRL in the CRL file, in its order.
        """
        pem = (self.instance.directory / "crl.pem").read_bytes()
        return [
            x509.load_pem_x509_crl(block).next_update_utc.timestamp()
            for block in re.findall(
                rb"-----BEGIN X509 CRL.+?END X509 CRL-----", pem, re.S
            )
        ]

    def test_reloads_are_reported(self) -> None:
        """
        The configuration loaded at start counts as a successful load; a
        failed reload sets the flag to 0 and keeps the time of the last
        success; a dry run, which changes nothing, changes neither; the
        next good reload sets both.
        """
        reloader = self.instance.daemon.reloader
        started = self.instance.clock.seconds()
        successful = "secmsg_config_last_reload_successful", ()
        when = "secmsg_config_last_reload_success_timestamp_seconds", ()
        self.assertEqual(self.samples()[successful], 1)
        self.assertEqual(self.samples()[when], started)
        good = self.instance.directory / "policy.toml"
        policy = good.read_bytes()
        good.write_text("not = [toml")
        self.instance.clock.advance(60)
        self.assertRaises(ConfigurationError, reloader.reload, True)
        self.assertEqual(self.samples()[successful], 1)
        self.assertRaises(ConfigurationError, reloader.reload)
        self.assertEqual(self.samples()[successful], 0)
        self.assertEqual(self.samples()[when], started)
        good.write_bytes(policy)
        self.instance.clock.advance(60)
        reloader.reload()
        self.assertEqual(self.samples()[successful], 1)
        self.assertEqual(self.samples()[when], started + 120)

    def test_expiry_times_follow_the_configuration_in_force(self) -> None:
        """
        The server certificate's, each CA's and each CRL's times are those
        of the files in force, and change with a reload: a second CA and
        its CRL appear under their own label.
        """
        ca = self.instance.ca.pair.certificate
        samples = self.samples()
        server = samples["secmsg_server_certificate_expiry_timestamp_seconds", ()]
        self.assertGreater(server, now().timestamp())
        label = (("ca", ca_label(ca)),)
        self.assertRegex(label[0][1], r"^secmsg_test_ca_[0-9a-f]{8}$")
        self.assertEqual(
            samples["secmsg_ca_certificate_expiry_timestamp_seconds", label],
            ca.not_valid_after_utc.timestamp(),
        )
        crl = "secmsg_crl_next_update_timestamp_seconds"
        self.assertEqual(samples[crl, label], self.next_updates()[0])
        other = CertificateAuthority("Other CA, Ops")
        self.instance.write("ca.pem", self.instance.ca.pem + other.pem)
        self.instance.write(
            "crl.pem",
            self.instance.ca.crl_pem() + other.crl_pem(next_update=timedelta(days=2)),
        )
        self.instance.daemon.reloader.reload()
        other_label = (("ca", ca_label(other.pair.certificate)),)
        self.assertTrue(other_label[0][1].startswith("other_ca_ops_"))
        samples = self.samples()
        self.assertEqual(samples[crl, other_label], self.next_updates()[1])
        self.assertIn(
            ("secmsg_ca_certificate_expiry_timestamp_seconds", other_label), samples
        )

    def test_waiting_deliveries_are_counted(self) -> None:
        """
        A message to an offline identity waits in its mailbox, and the
        gauge says so until it is acknowledged.
        """
        alice = self.instance.connect(self.instance.ca.issue("alice"))
        alice.send("MSG bob hello")
        self.instance.flush()
        samples = self.samples()
        self.assertEqual(samples["secmsg_deliveries_waiting", ()], 1)
        self.assertEqual(samples["secmsg_messages_accepted_total", ()], 1)
        self.assertEqual(
            samples["secmsg_deliveries_total", (("outcome", "queued"),)], 1
        )

    def test_dashboard_names_only_exported_metrics(self) -> None:
        """
        Every metric the Grafana dashboard queries is one the daemon
        exports, so that no panel stays empty after a rename.
        """
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = dashboard_exprs(dashboard)
        self.assertGreater(len(exprs), 5)
        named = set().union(*map(metric_names, exprs))
        self.assertIn("secmsg_handshakes_total", named)
        self.assertEqual(named - exported_names(self.metrics), set())

    def test_expression_parsing(self) -> None:
        """
        The dashboard's check reads metric names, not functions, labels,
        groupings or durations.
        """
        expr = (
            'sum by (outcome) (rate(secmsg_handshakes_total{outcome!="accepted"}[5m]))'
            " / on() group_left secmsg_build_info - time()"
        )
        self.assertEqual(
            metric_names(expr), {"secmsg_handshakes_total", "secmsg_build_info"}
        )
