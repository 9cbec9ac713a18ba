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

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from secmsg.cli import main as cli
from secmsg.daemon.audit import (
    AUDIT_NAME,
    AuditTrail,
    RecordBudget,
    RepeatBudget,
    audit,
    open_trail,
)
from secmsg.daemon.chain import (
    GENESIS,
    KEY_NAME,
    ChainKey,
    link,
    load_key,
    numbered_lines,
    verify_chain,
)
from secmsg.daemon.trust import TrustAnchors
from tests.certs import CertificateAuthority
from tests.harness import Instance, temporary_directory
from tests.sessions import Network


class _Buffer(io.BytesIO):
    """
    A file the trail writes to that outlives the trail's close.
    """

    def close(self) -> None:
        pass


KEY = ChainKey(bytes(range(32)))
"""A key for trails written to buffers, which have no data directory."""


def record_events(testcase: SynchronousTestCase) -> _Buffer:
    """
    Write the audit events of the test to a buffer, as the daemon writes
    them to its file.
    """
    buffer = _Buffer()
    trail = AuditTrail(buffer, KEY, GENESIS, 1)
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

    def test_login_of_a_subject_of_many_units_writes_a_bounded_record(self) -> None:
        """
        A certificate whose subject holds 1,200 units logs in with a record
        of about a kilobyte, not 80: its subject is cut, with the whole's
        length and hash.
        """
        many = tuple(
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "engineering")
            for _ in range(1200)
        )
        pair = self.network.ca.issue("alice", subject=many)
        self.network.connect("alice", certificate=pair.certificate)
        (line,) = [
            raw
            for raw in self.buffer.getvalue().splitlines()
            if json.loads(raw)["event"] == "login"
        ]
        self.assertLess(len(line), 1200)
        subject = json.loads(line)["subject"]
        self.assertTrue(subject.startswith("CN=alice,OU=engineering,"))
        self.assertRegex(
            subject, r"… \(cut from 18,008 characters; sha256 [0-9a-f]{64}\)$"
        )

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
        Each record names the link (the MAC) of the line before it; the
        first names the genesis.
        """
        self.network.connect("alice")
        self.network.connect("bob")
        lines = self.buffer.getvalue().splitlines()
        self.assertEqual(json.loads(lines[0])["prev"], GENESIS)
        for before, after in itertools.pairwise(lines):
            self.assertEqual(json.loads(after)["prev"], link(before))


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
        return verify_chain(numbered_lines(paths), load_key(self.directory / KEY_NAME))

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
        Changing a record breaks its own MAC; removing one or adding one
        breaks the chain at the record after it; verify names that line.
        """
        lines = self.path.read_bytes().splitlines(keepends=True)
        edited = [*lines[:2], lines[2].replace(b'"n":2', b'"n":7'), *lines[3:]]
        deleted = lines[:2] + lines[3:]
        inserted = [*lines[:2], lines[1], *lines[2:]]
        for name, tampered, line in [
            ("edited", edited, 3),
            ("deleted", deleted, 3),
            ("inserted", inserted, 3),
        ]:
            path = self.directory / name
            path.write_bytes(b"".join(tampered))
            verdict = self.verify(path)
            (only,) = verdict.breaks
            self.assertEqual(only.where, f"{path}:{line}", name)

    def test_a_record_never_written_leaves_a_gap(self) -> None:
        """
        Records are numbered; a write that failed leaves a gap in the
        numbers, which verify reports although the hashes chain.
        """
        buffer = _Buffer()
        trail = AuditTrail(buffer, KEY, GENESIS, 1)

        def failing(data: bytes) -> int:
            raise OSError("no space left on device")

        globalLogPublisher.addObserver(trail)
        try:
            audit("test", "first")
            buffer.write, written = failing, buffer.write
            audit("test", "lost")
            buffer.write = written
            audit("test", "third")
        finally:
            globalLogPublisher.removeObserver(trail)
        self.flushLoggedErrors(OSError)
        lines = buffer.getvalue().splitlines()
        verdict = verify_chain(
            ((f"line {n}", line) for n, line in enumerate(lines, 1)), KEY
        )
        (gap,) = verdict.breaks
        self.assertEqual(
            (gap.where, gap.problem),
            (
                "line 2",
                "numbered 3 after 1: records in between were never written",
            ),
        )

    def test_a_record_cut_short_is_ended_and_the_trail_goes_on(self) -> None:
        """
        After a crash in mid-write, the daemon ends the fragment and writes
        on; verify names the fragment and finds the rest intact.
        """
        with self.path.open("ab") as file:
            file.write(b'{"seq":6,"time":"2026-')
        trail = open_trail(self.directory)
        self.assertEqual(trail.repaired, 22)
        globalLogPublisher.addObserver(trail)
        try:
            audit("test", "after the crash")
        finally:
            globalLogPublisher.removeObserver(trail)
            trail.close()
        verdict = self.verify(self.path)
        (fragment,) = verdict.breaks
        self.assertEqual(fragment.where, f"{self.path}:6")
        self.assertIn("not a whole audit record", fragment.problem)
        self.assertEqual(verdict.records, 7)

    def test_rotated_files_verify_as_one_chain(self) -> None:
        """
        The chain runs on across rotation: the old file then the new one
        verify together, and the new one alone continues a file not given.
        """
        rotating_dir = temporary_directory(self)
        rotating = LogFile(AUDIT_NAME, str(rotating_dir), rotateLength=600)
        trail = AuditTrail(rotating, KEY, GENESIS, 1)
        (rotating_dir / KEY_NAME).write_bytes(KEY.secret)
        (rotating_dir / KEY_NAME).chmod(0o600)
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
        self.assertIsNone(verify_chain(numbered_lines([rotated, current]), KEY).broken)
        self.assertFalse(verify_chain(numbered_lines([current]), KEY).anchored)
        # The command puts rotated files first, as a shell glob does not.
        with redirect_stdout(io.StringIO()):
            self.assertEqual(
                cli.main(["audit", "verify", str(current), str(rotated)]), 0
            )

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
        self.assertEqual(
            output.getvalue().splitlines(),
            [
                f"{self.path}:2 (seq 3): chain broken: does not follow the line "
                "before it (edited, inserted, or a record before it removed)",
                "4 records, 1 broken",
            ],
        )


class RecordBudgetTests(SynchronousTestCase):
    def test_records_past_the_budget_are_counted_and_summed_up(self) -> None:
        """
        Past its budget a kind of record is left out, and one record at the
        end of the window says how many were.
        """
        buffer = record_events(self)
        clock = Clock()
        budget = RecordBudget(clock, "handshake_refused", per_window=2, window=60)
        self.assertEqual([budget.allow() for _ in range(5)], [True, True] + [False] * 3)
        self.assertEqual(records(buffer), [])
        clock.advance(60)
        (summary,) = records(buffer)
        self.assertEqual(
            (summary["event"], summary["kind"], summary["count"]),
            ("records_left_out", "handshake_refused", 3),
        )
        self.assertTrue(budget.allow())


class RepeatBudgetTests(SynchronousTestCase):
    def test_each_partys_first_is_recorded_and_its_repeats_counted(self) -> None:
        """
        Each party's first record in a window is let through whatever the
        others do; its repeats are counted, and summed up per party when
        the window ends.
        """
        buffer = record_events(self)
        clock = Clock()
        budget = RepeatBudget(clock, "login_rate_limited", window=60)
        allowed = [budget.allow(party) for party in ["a", "a", "b", "a", "c"]]
        self.assertEqual(allowed, [True, False, True, False, True])
        clock.advance(60)
        self.assertEqual(
            [(r["party"], r["count"]) for r in records(buffer)], [("a", 2)]
        )
        self.assertTrue(budget.allow("a"))


class HolderRefusalTests(SynchronousTestCase):
    def test_a_revoked_certificate_is_recorded_past_the_anonymous_budget(self) -> None:
        """
        Once connections without a certificate have used up the budget for
        anonymous records, the refusal of a certificate our CA issued and
        revoked still gets its own record; its repeats in the same minute
        are counted, not written.
        """
        buffer = record_events(self)
        instance = Instance(self)
        for _ in range(61):
            instance.connect(None)
        alice = instance.ca.issue("alice")
        instance.ca.revoke(alice)
        instance.write("crl.pem", instance.ca.crl_pem())
        instance.daemon.reloader.reload()
        for _ in range(3):
            self.assertFalse(instance.connect(alice).greeted)
        refused = [r for r in records(buffer) if r["event"] == "handshake_refused"]
        self.assertEqual(len(refused), 61)
        self.assertIn("alice", refused[-1]["subject"])
        self.assertTrue(refused[-1]["reason"].startswith("revoked"))

    def test_only_our_cas_vouch_for_a_certificate(self) -> None:
        """
        A certificate that merely names our CA as its issuer, signed by
        another key, is not one our CA vouches for; one it issued is.
        """
        ours = CertificateAuthority()
        impostor = CertificateAuthority(ours.name)
        trust = TrustAnchors((ours.pair.certificate,), ())
        self.assertTrue(trust.vouches_for(ours.issue("alice").certificate))
        self.assertFalse(trust.vouches_for(impostor.issue("alice").certificate))
