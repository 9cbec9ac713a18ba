"""
The admin interface against its contract, docs/openapi.json: what the
document says a request may hold is what the daemon takes, and
schemathesis drives every operation of it against a real daemon over
mutual TLS, as an admin, a guest, an identity past its rate and a client
without a certificate, checking each answer's status, type, headers and
body against the document.

C{API_EXAMPLES} sets how many cases each operation gets (C{make fuzz-api}
asks for many more); the run is derandomized, so its outcome is the same
every time for the same document and daemon.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.errors import Malformed
from tests.harness import temporary_directory
from tests.test_daemon import BIN, STARTUP_DEADLINE, Daemon, init_instance, lift_rate

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def _document() -> dict[str, Any]:
    return json.loads(OPENAPI.read_text())


def _resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """
    C{schema}, or the component it refers to.
    """
    while "$ref" in schema:
        *_, kind, name = schema["$ref"].split("/")
        schema = document["components"][kind][name]
    return schema


def _pattern(document: dict[str, Any], request: str, field: str) -> re.Pattern[str]:
    """
    The pattern the document gives a request's field; one that matches
    anything if it gives none.
    """
    properties = document["components"]["schemas"][request]["properties"]
    return re.compile(_resolved(document, properties[field]).get("pattern", ""))


def _refused_by_the_daemon(character: str) -> bool:
    try:
        wire.decode_line(character.encode())
    except Malformed:
        return True
    return False


EVERY_CHARACTER = "".join(
    chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code <= 0xDFFF
)
"""Every code point UTF-8 can carry: the surrogates cannot."""


class TextContractTests(SynchronousTestCase):
    """
    The text fields of the document hold the characters the daemon relays,
    and only those: a client that follows the contract is not refused 400,
    and one the contract tells it is wrong is.
    """

    def test_text_fields_forbid_exactly_what_the_daemon_refuses(self) -> None:
        """
        Guards the contract against drifting from the line protocol's rule:
        a character is outside every text field's pattern exactly when
        decode_line refuses it.
        """
        document = _document()
        refused = {c for c in EVERY_CHARACTER if _refused_by_the_daemon(c)}
        for request, field in (
            ("TextRequest", "text"),
            ("MessageRequest", "text"),
            ("KickRequest", "reason"),
        ):
            pattern = _pattern(document, request, field)
            outside = {c for c in EVERY_CHARACTER if not pattern.search(f"a{c}a")}
            self.assertEqual(outside, refused, (request, field))

    def test_text_of_spaces_and_tabs_is_outside_the_contract(self) -> None:
        """
        Guards the rule that a text to relay holds more than blanks, which
        the daemon answers with 400, while a kick's reason may be empty.
        """
        document = _document()
        text = _pattern(document, "TextRequest", "text")
        self.assertEqual(
            [bool(text.search(t)) for t in ("", " \t ", " hi\t", "hé")],
            [False, False, True, True],
        )
        self.assertTrue(_pattern(document, "KickRequest", "reason").search(""))


class BodyContractTests(SynchronousTestCase):
    def test_every_post_requires_its_json_body(self) -> None:
        """
        Guards the contract against inviting a bodiless POST: the daemon
        answers a POST without Content-Type: application/json with 415, so
        a document that calls a body optional tells a client to send what
        is refused.
        """
        document = _document()
        optional = [
            path
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
            if method == "post" and not operation["requestBody"].get("required")
        ]
        self.assertEqual(optional, [])


API_EXAMPLES = int(os.environ.get("API_EXAMPLES", "25"))
"""Cases schemathesis generates for each operation in its fuzzing phase,
beside the document's examples and its coverage phase's cases."""

REFUSED_EXAMPLES = max(1, API_EXAMPLES // 5)
"""As many for a client refused whatever it sends (no certificate, or its
rate spent): every case gets the same answer, so fewer show as much."""

SEED = 19
"""The run's seed: with derandomized generation, the same cases each run."""

CONTRACT_POLICY = """\
guest = ["guest"]
carol = ["spent"]

# An identity whose first request spends its rate for a long while.
[roles.spent]
inherits = ["guest"]
rate = 0.001
burst = 1
"""
"""Added to the end of secmsg init's policy, its [identities] table: a
guest, and an identity whose requests get 429."""


class ContractRunTests(SynchronousTestCase):
    """
    schemathesis's examples, coverage and fuzzing phases, with every check
    that applies to a document without links or security schemes, against
    a daemon of a development instance on a loopback port; alice and bob
    are logged in on its line port, so that there are sessions to list and
    to kick.
    """

    def setUp(self) -> None:
        self.directory = init_instance(self)
        for name in ("guest", "carol"):
            issued = subprocess.run(
                [BIN / "secmsg", "pki", "--dir", self.directory, "issue", name],
                capture_output=True,
                text=True,
                check=False,
            )
            self.assertEqual(issued.returncode, 0, issued.stderr)
        lift_rate(self.directory)
        with (self.directory / "policy.toml").open("a") as policy:
            policy.write(CONTRACT_POLICY)
        # Its config named relative to the working directory, as make run
        # names dev/secmsg.toml.
        self.daemon = Daemon(
            self, Path(os.path.relpath(self.directory)), "--admin-port", "0"
        )
        line = self.daemon.wait_for("admin interface listening on https://")
        self.admin_port = int(line.rsplit(":", 1)[1].rstrip("/"))
        self.daemon.drain_log()
        self.sessions = [self.daemon.client(name) for name in ("alice", "bob")]
        for session in self.sessions:
            self.addCleanup(session.close)
            with session.makefile("rb") as lines:
                self.assertTrue(lines.readline().startswith(b"200 secmsg "))

    def run_contract(
        self, name: str | None, examples: int = API_EXAMPLES, *excluded: str
    ) -> None:
        """
        Run schemathesis against the admin interface as C{name} (without a
        certificate for L{None}), with C{examples} fuzzed cases an
        operation, leaving out the checks C{excluded}; fail
        with its report unless every check passed on every operation, and
        unless the daemon logged no failure.
        """
        certificate: list[str | Path] = []
        if name is not None:
            clients = self.directory / "clients"
            certificate = [
                "--request-cert",
                clients / f"{name}.pem",
                "--request-cert-key",
                clients / f"{name}.key",
            ]
        exclusions = ["--exclude-checks", ",".join(excluded)] if excluded else []
        result = subprocess.run(
            [
                BIN / "schemathesis",
                "--no-color",
                "run",
                OPENAPI,
                "--url",
                f"https://localhost:{self.admin_port}",
                "--tls-verify",
                self.directory / "ca.pem",
                *certificate,
                "--phases",
                "examples,coverage,fuzzing",
                "--checks",
                "all",
                *exclusions,
                "--max-examples",
                str(examples),
                "--seed",
                str(SEED),
                # Derandomized, and so with no database of past cases.
                "--generation-deterministic",
                "--workers",
                "1",
                "--request-timeout",
                str(STARTUP_DEADLINE),
            ],
            # Away from the checkout, so that no schemathesis.toml there or
            # above it changes the run, and its files land in the test's
            # own directory.
            cwd=temporary_directory(self),
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE * 4 + examples * 2,
            check=False,
        )
        report = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, report)
        operations = sum(len(methods) for methods in _document()["paths"].values())
        self.assertIn(f"Tested: {operations}", report)
        # Closed first, so that the daemon has no session to see out as it
        # stops, and its log is whole.
        for session in self.sessions:
            session.close()
        self.daemon.stop()
        self.assertEqual(
            [line for line in self.daemon.log if "Traceback" in line], [], report
        )

    def test_a_backup_is_made_by_a_daemon_on_a_relative_config(self) -> None:
        """
        Guards make run's daemon, whose config and so backup-dir are named
        relative to the working directory: its backups are made, in that
        directory, rather than refused for want of an absolute path.
        """
        context = ssl.create_default_context(cafile=self.directory / "ca.pem")
        clients = self.directory / "clients"
        context.load_cert_chain(clients / "admin.pem", clients / "admin.key")
        connection = http.client.HTTPSConnection(
            "localhost", self.admin_port, context=context, timeout=STARTUP_DEADLINE
        )
        self.addCleanup(connection.close)
        connection.request(
            "POST",
            "/v1/backup",
            json.dumps({"name": "copy.db"}),
            {"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
        self.assertEqual(response.status, 200, answer)
        copy = self.directory / "backups" / "copy.db"
        self.assertTrue(copy.is_file())
        self.assertTrue(Path(answer["path"]).is_absolute())
        self.assertTrue(copy.samefile(answer["path"]))

    def test_an_admin_gets_answers_as_the_contract_says(self) -> None:
        """
        Guards every operation's answers to an identity granted all of
        them: kicks, reloads, backups and messages carried out or refused,
        each as documented.
        """
        self.run_contract("admin")

    def test_a_guest_gets_answers_as_the_contract_says(self) -> None:
        """
        Guards the answers to an identity granted little: 403 naming the
        rule for what it may not do, documented wherever it can come.
        """
        self.run_contract("guest")

    def test_an_identity_past_its_rate_gets_answers_as_the_contract_says(
        self,
    ) -> None:
        """
        Guards 429 and its Retry-After wherever they can come.  An
        identity's token is spent before its request is routed, so a
        method a path does not take gets 429 too, not 405.
        """
        self.run_contract("carol", REFUSED_EXAMPLES, "unsupported_method")

    def test_a_client_without_a_certificate_gets_answers_as_the_contract_says(
        self,
    ) -> None:
        """
        Guards 401 and its WWW-Authenticate wherever they can come.  A
        client without a certificate is told nothing of the interface,
        not even which methods a path takes, so it gets 401, not 405.
        """
        self.run_contract(None, REFUSED_EXAMPLES, "unsupported_method")
