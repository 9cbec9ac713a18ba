"""
The audit trail: what each security event records, the hash chain that
makes tampering evident, and C{secmsg audit verify}.
"""

from __future__ import annotations

import io
import itertools
import json
import stat
from contextlib import redirect_stdout
from pathlib import Path

from twisted.logger import globalLogPublisher
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from secmsg import cli
from secmsg.audit import (
    AUDIT_NAME,
    GENESIS,
    AuditTrail,
    audit,
    line_hash,
    numbered_lines,
    open_trail,
    verify_chain,
)
from tests.harness import temporary_directory
from tests.sessions import Network


class _Buffer(io.BytesIO):
    """
    A file the trail writes to that outlives the trail's close.
    """

    def close(self) -> None:
        pass


def record_events(testcase: SynchronousTestCase) -> _Buffer:
    """
    Write the audit events of the test to a buffer, as the daemon writes
    them to its file.
    """
    buffer = _Buffer()
    trail = AuditTrail(buffer, GENESIS)
    globalLogPublisher.addObserver(trail)
    testcase.addCleanup(globalLogPublisher.removeObserver, trail)
    return buffer


def records(buffer: _Buffer) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


class EventTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.buffer = record_events(self)
        self.network = Network()

    def test_login_records_who_from_where_with_which_certificate(self) -> None:
        """
        A login names the identity, its roles and how they were granted,
        the peer's address, and the certificate's serial and fingerprint.
        """
        alice = self.network.connect("alice")
        (login,) = [r for r in records(self.buffer) if r["event"] == "login"]
        certificate = alice.protocol.certificate
        self.assertEqual(login["identity"], "alice")
        self.assertEqual(login["roles"], "user")
        self.assertEqual(login["granted_by"], "[identities]")
        self.assertEqual(login["peer"], alice.protocol.address)
        self.assertEqual(login["serial"], f"{certificate.serial_number:x}")
        self.assertEqual(len(login["fingerprint"]), 64)
        self.assertTrue(login["time"].endswith("Z"))

    def test_denial_kick_and_logout_are_recorded(self) -> None:
        """
        A 403 names the rule that denied; a KICK names who kicked whom; the
        kicked session's logout follows.
        """
        alice = self.network.connect("alice")
        admin = self.network.connect("admin")
        alice.send("KICK bob")
        admin.send("KICK alice being rude")
        events = {r["event"]: r for r in records(self.buffer)}
        self.assertEqual(events["denied"]["verb"], "KICK")
        self.assertEqual(events["denied"]["rule"], "not granted by role user")
        self.assertEqual(
            (events["kick"]["by"], events["kick"]["target"]), ("admin", "alice")
        )
        self.assertEqual(events["logout"]["identity"], "alice")

    def test_no_message_text_is_recorded(self) -> None:
        """
        Messages, kick reasons and room speech never reach the audit trail.
        """
        alice = self.network.connect("alice")
        self.network.connect("bob")
        alice.send("MSG bob the-secret-words")
        alice.send("JOIN #x")
        alice.send("SAY #x the-secret-words")
        alice.send("KICK bob the-secret-words")
        self.assertNotIn(b"the-secret-words", self.buffer.getvalue())
        self.assertTrue(records(self.buffer))

    def test_reload_is_recorded_with_its_outcome(self) -> None:
        """
        RELOAD by an admin records who asked and what came of it.
        """
        admin = self.network.connect("admin")
        admin.send("RELOAD")
        (reload,) = [r for r in records(self.buffer) if r["event"] == "reload"]
        self.assertEqual((reload["by"], reload["outcome"]), ("admin", "ok"))

    def test_events_chain_by_hash(self) -> None:
        """
        Each record names the hash of the line before it; the first names
        the genesis.
        """
        self.network.connect("alice")
        self.network.connect("bob")
        lines = self.buffer.getvalue().splitlines()
        self.assertEqual(json.loads(lines[0])["prev"], GENESIS)
        for before, after in itertools.pairwise(lines):
            self.assertEqual(json.loads(after)["prev"], line_hash(before))


def write_trail(directory: Path, count: int) -> Path:
    """
    An audit file with C{count} records, written by the daemon's trail.
    """
    trail = open_trail(directory)
    globalLogPublisher.addObserver(trail)
    try:
        for n in range(count):
            audit("test", "event {n}", n=n)
    finally:
        globalLogPublisher.removeObserver(trail)
        trail.close()
    return directory / AUDIT_NAME


class ChainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        self.path = write_trail(self.directory, 5)

    def verify(self, *paths: Path):  # type: ignore[no-untyped-def]
        return verify_chain(numbered_lines(paths))

    def test_file_is_private_and_intact(self) -> None:
        """
        The trail is mode 0600 and verifies from its first record.
        """
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        verdict = self.verify(self.path)
        self.assertEqual((verdict.records, verdict.anchored), (5, True))
        self.assertIsNone(verdict.broken)

    def test_a_restarted_daemon_carries_on_the_chain(self) -> None:
        """
        Opening the trail again continues from its last record.
        """
        write_trail(self.directory, 3)
        verdict = self.verify(self.path)
        self.assertEqual(verdict.records, 8)
        self.assertIsNone(verdict.broken)

    def test_edited_deleted_and_inserted_records_are_found(self) -> None:
        """
        Changing a record, removing one or adding one breaks the chain at
        the record after it, and verify names that line.
        """
        lines = self.path.read_bytes().splitlines(keepends=True)
        edited = [*lines[:2], lines[2].replace(b'"n":2', b'"n":7'), *lines[3:]]
        deleted = lines[:2] + lines[3:]
        inserted = [*lines[:2], lines[1], *lines[2:]]
        for name, tampered, line in [
            ("edited", edited, 4),
            ("deleted", deleted, 3),
            ("inserted", inserted, 3),
        ]:
            path = self.directory / name
            path.write_bytes(b"".join(tampered))
            verdict = self.verify(path)
            self.assertEqual(verdict.broken.where, f"{path}:{line}", name)
            self.assertEqual(verdict.records, line - 1, name)

    def test_rotated_files_verify_as_one_chain(self) -> None:
        """
        The chain runs on across rotation: the old file then the new one
        verify together, and the new one alone continues a file not given.
        """
        rotating_dir = temporary_directory(self)
        rotating = LogFile(AUDIT_NAME, str(rotating_dir), rotateLength=600)
        trail = AuditTrail(rotating, GENESIS)
        globalLogPublisher.addObserver(trail)
        try:
            for n in range(10):
                audit("test", "event {n}", n=n)
        finally:
            globalLogPublisher.removeObserver(trail)
            trail.close()
        current, rotated = (
            rotating_dir / AUDIT_NAME,
            rotating_dir / f"{AUDIT_NAME}.1",
        )
        self.assertTrue(rotated.exists())
        self.assertIsNone(self.verify(rotated, current).broken)
        self.assertFalse(self.verify(current).anchored)

    def test_verify_command(self) -> None:
        """
        secmsg audit verify says intact with status 0, and names the broken
        line with status 1.
        """
        output = io.StringIO()
        with redirect_stdout(output):
            self.assertEqual(cli.main(["audit", "verify", str(self.path)]), 0)
        self.assertIn("5 records, chain intact", output.getvalue())
        lines = self.path.read_bytes().splitlines(keepends=True)
        self.path.write_bytes(b"".join(lines[:1] + lines[2:]))
        output = io.StringIO()
        with redirect_stdout(output):
            self.assertEqual(cli.main(["audit", "verify", str(self.path)]), 1)
        self.assertIn(f"{self.path}:2: chain broken", output.getvalue())
