"""
The daemon's counters as Prometheus reads them.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon.metrics import Metrics


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
        for seconds in (0.0005, 0.003, 2.0):
            metrics.store_latency(seconds)
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for sample in family.samples
        }
        self.assertEqual(samples["secmsg_sessions_open", ()], 3)
        self.assertEqual(
            samples["secmsg_commands_total", (("code", "250"), ("verb", "MSG"))], 2
        )
        self.assertEqual(samples["secmsg_rate_limited_total", (("verb", "PING"),)], 1)
        bucket = "secmsg_store_accept_seconds_bucket"
        self.assertEqual(samples[bucket, (("le", "0.0005"),)], 1)
        self.assertEqual(samples[bucket, (("le", "0.005"),)], 2)
        self.assertEqual(samples[bucket, (("le", "1.0"),)], 2)
        self.assertEqual(samples[bucket, (("le", "+Inf"),)], 3)
        self.assertAlmostEqual(samples["secmsg_store_accept_seconds_sum", ()], 2.0035)
