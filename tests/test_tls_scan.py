"""
An external TLS scanner, sslyze, against the real daemon.

sslyze pins an older cryptography than secmsg needs, so C{make test}
installs it into a virtualenv of its own (C{.venv-scan}); this test runs it
there, with a client certificate so that every probe gets past the
mutual-TLS handshake, and fails on any finding.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import temporary_directory
from tests.test_daemon import Daemon, init_instance

SSLYZE = Path(__file__).resolve().parent.parent / ".venv-scan" / "bin" / "sslyze"

SCANS = (
    "--sslv2",
    "--sslv3",
    "--tlsv1",
    "--tlsv1_1",
    "--tlsv1_2",
    "--tlsv1_3",
    "--compression",
    "--reneg",
    "--heartbleed",
    "--robot",
    "--openssl_ccs",
    "--certinfo",
)

SCAN_DEADLINE = 300
"""Seconds the scan may take before the test gives up on it; it takes a few."""


def findings(document: dict[str, Any]) -> list[str]:
    """
    Everything in an sslyze JSON report that secmsg promises not to do.
    """
    (server,) = document["server_scan_results"]
    if server["connectivity_status"] != "COMPLETED":
        return [f"no connection: {server['connectivity_error_trace']}"]
    scans = server["scan_result"]
    found = [
        f"{name}: {attempt['status']} {attempt['error_reason']}"
        for name, attempt in scans.items()
        if attempt["status"] == "ERROR"
    ]

    def result(name: str) -> dict[str, Any]:
        # A scan that failed is a finding already; it has nothing to read.
        attempt = scans[name]
        return attempt["result"] if attempt["status"] == "COMPLETED" else {}

    for version in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        if result(f"{version}_cipher_suites").get("is_tls_version_supported"):
            found.append(f"{version} is accepted")
    for version in ("tls_1_2", "tls_1_3"):
        suites = result(f"{version}_cipher_suites").get("accepted_cipher_suites", [])
        for accepted in suites:
            name = accepted["cipher_suite"]["name"]
            if accepted["ephemeral_key"] is None:
                found.append(f"{version} {name} is not forward-secret")
            if not any(aead in name for aead in ("_GCM_", "_CHACHA20_POLY1305_")):
                found.append(f"{version} {name} is not an AEAD suite")
    if result("tls_compression").get("supports_compression"):
        found.append("TLS compression is on")
    renegotiation = result("session_renegotiation")
    if renegotiation.get("is_vulnerable_to_client_renegotiation_dos"):
        found.append("client-initiated renegotiation is accepted")
    if renegotiation.get("supports_secure_renegotiation") is False:
        found.append("no secure renegotiation (RFC 5746)")
    if result("heartbleed").get("is_vulnerable_to_heartbleed"):
        found.append("heartbleed")
    if result("openssl_ccs_injection").get("is_vulnerable_to_ccs_injection"):
        found.append("CCS injection")
    robot = result("robot").get("robot_result", "NOT_VULNERABLE")
    if not robot.startswith("NOT_VULNERABLE"):
        found.append(f"ROBOT: {robot}")
    found.extend(_chain_findings(result("certificate_info")))
    return found


def _chain_findings(certificate_info: dict[str, Any]) -> list[str]:
    found = []
    for deployment in certificate_info.get("certificate_deployments", []):
        ours = [
            path
            for path in deployment["path_validation_results"]
            if path["trust_store"]["name"] == "Supplied CA file"
        ]
        if not ours or not ours[0]["was_validation_successful"]:
            found.append("served chain does not verify against the instance's CA")
        if not deployment["received_chain_has_valid_order"]:
            found.append("served chain is out of order")
        if deployment["received_chain_contains_anchor_certificate"]:
            found.append("served chain carries the root, which clients must have")
        if deployment["verified_chain_has_sha1_signature"]:
            found.append("SHA-1 signature in the chain")
    return found


class ScanTests(SynchronousTestCase):
    def test_sslyze_finds_nothing(self) -> None:
        """
        Only TLS 1.2 and 1.3, only forward-secret AEAD suites, no
        compression, no client renegotiation, not vulnerable to heartbleed,
        ROBOT or CCS injection, and a complete chain served.
        """
        self.assertTrue(
            SSLYZE.exists(),
            f"{SSLYZE} is missing: `make test` installs sslyze there",
        )
        directory = init_instance(self)
        daemon = Daemon(self, directory)
        daemon.drain_log()
        report = temporary_directory(self) / "scan.json"
        scan = subprocess.run(
            [
                str(SSLYZE),
                *SCANS,
                "--cert",
                str(directory / "clients" / "alice.pem"),
                "--key",
                str(directory / "clients" / "alice.key"),
                "--sni",
                "localhost",
                "--certinfo_ca_file",
                str(directory / "ca.pem"),
                "--mozilla_config",
                "disable",
                "--quiet",
                "--json_out",
                str(report),
                f"localhost:{daemon.port}",
            ],
            capture_output=True,
            text=True,
            timeout=SCAN_DEADLINE,
            check=False,
        )
        self.assertEqual(scan.returncode, 0, scan.stderr)
        self.assertEqual(findings(json.loads(report.read_text())), [])
        # The scan's hundreds of refused probes left the daemon serving.
        with daemon.client("bob") as bob, bob.makefile("rb") as lines:
            self.assertIn(b"you are bob", lines.readline())
        daemon.stop()
        self.assertEqual([line for line in daemon.log if "Traceback" in line], [])


def clean_report() -> dict[str, Any]:
    """
    The shape of an sslyze report with nothing to find.
    """
    suite = {
        "cipher_suite": {"name": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"},
        "ephemeral_key": {"type_name": "ECDH"},
    }

    def done(result: dict[str, Any]) -> dict[str, Any]:
        return {"status": "COMPLETED", "error_reason": None, "result": result}

    scans = {
        f"{version}_cipher_suites": done(
            {"is_tls_version_supported": False, "accepted_cipher_suites": []}
        )
        for version in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1")
    }
    for version in ("tls_1_2", "tls_1_3"):
        scans[f"{version}_cipher_suites"] = done(
            {"is_tls_version_supported": True, "accepted_cipher_suites": [suite]}
        )
    scans["tls_compression"] = done({"supports_compression": False})
    scans["session_renegotiation"] = done(
        {
            "is_vulnerable_to_client_renegotiation_dos": False,
            "supports_secure_renegotiation": True,
        }
    )
    scans["heartbleed"] = done({"is_vulnerable_to_heartbleed": False})
    scans["openssl_ccs_injection"] = done({"is_vulnerable_to_ccs_injection": False})
    scans["robot"] = done({"robot_result": "NOT_VULNERABLE_RSA_NOT_SUPPORTED"})
    deployment = {
        "path_validation_results": [
            {
                "trust_store": {"name": "Supplied CA file"},
                "was_validation_successful": True,
            }
        ],
        "received_chain_has_valid_order": True,
        "received_chain_contains_anchor_certificate": False,
        "verified_chain_has_sha1_signature": False,
    }
    scans["certificate_info"] = done({"certificate_deployments": [deployment]})
    return {
        "server_scan_results": [
            {"connectivity_status": "COMPLETED", "scan_result": scans}
        ]
    }


class FindingsTests(SynchronousTestCase):
    def test_each_weakness_is_a_finding(self) -> None:
        """
        The judge of the scan passes a clean report and names each weakness
        put into it, so that the scan test can fail.
        """
        self.assertEqual(findings(clean_report()), [])
        report = clean_report()
        scans = report["server_scan_results"][0]["scan_result"]
        scans["tls_1_0_cipher_suites"]["result"]["is_tls_version_supported"] = True
        scans["tls_1_2_cipher_suites"]["result"]["accepted_cipher_suites"].append(
            {
                "cipher_suite": {"name": "TLS_RSA_WITH_AES_128_CBC_SHA"},
                "ephemeral_key": None,
            }
        )
        scans["heartbleed"]["result"]["is_vulnerable_to_heartbleed"] = True
        scans["robot"]["status"] = "ERROR"
        self.assertEqual(
            findings(report),
            [
                "robot: ERROR None",
                "tls_1_0 is accepted",
                "tls_1_2 TLS_RSA_WITH_AES_128_CBC_SHA is not forward-secret",
                "tls_1_2 TLS_RSA_WITH_AES_128_CBC_SHA is not an AEAD suite",
                "heartbleed",
            ],
        )
