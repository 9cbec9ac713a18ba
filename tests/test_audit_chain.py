"""
The keyed audit chain: the key the daemon makes and guards, what
C{secmsg audit verify} finds with it, without it and against a logged
head, and a trail that was unkeyed before an upgrade.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from secmsg.cli import main as cli
from secmsg.daemon.audit import AUDIT_NAME, audit, open_trail
from secmsg.daemon.chain import GENESIS, KEY_NAME, ChainKey, seal
from secmsg.daemon.service import HEAD_INTERVAL, AuditService
from secmsg.errors import ConfigurationError
from tests.harness import capture_log, temporary_directory


def write_events(directory: Path, count: int, start: int = 0) -> None:
    """
    Write C{count} events to the trail in C{directory}, as a daemon run.
    """
    trail = open_trail(directory)
    globalLogPublisher.addObserver(trail)
    try:
        for n in range(start, start + count):
            audit("test", "event {n}", n=n)
    finally:
        globalLogPublisher.removeObserver(trail)
        trail.close()


def write_unkeyed(path: Path, count: int) -> None:
    """
    A trail as secmsg wrote it before its records were keyed: each
    C{prev} the plain SHA-256 of the line before.
    """
    previous = GENESIS
    lines = []
    for seq in range(1, count + 1):
        record = {"seq": seq, "time": "2026-01-01T00:00:00.000000Z", "event": "test"}
        line = json.dumps({**record, "n": seq, "prev": previous}).encode()
        lines.append(line.replace(b", ", b",").replace(b": ", b":"))
        previous = hashlib.sha256(lines[-1]).hexdigest()
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def verify(*arguments: str | Path) -> tuple[int, list[str], str]:
    """
    Run C{secmsg audit verify}: its status, its lines and its complaint.
    """
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = cli.main(["audit", "verify", *map(str, arguments)])
    return status, out.getvalue().splitlines(), err.getvalue()


def head_of(path: Path) -> str:
    """
    The head of the trail in C{path}, as verify (and the daemon) name it.
    """
    status, lines, _ = verify(path)
    assert status == 0, lines
    return lines[-1].removeprefix("head ").partition(": ")[0]


class KeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)

    def test_key_is_made_at_first_start_private_and_kept(self) -> None:
        """
        The first start makes 32 random bytes, mode 0600, and says so in
        the trail by the key's id; the next start keeps the same key.
        """
        trail = open_trail(self.directory)
        trail.close()
        key = self.directory / KEY_NAME
        self.assertTrue(trail.new_key)
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        self.assertEqual(len(key.read_bytes()), 32)
        secret = key.read_bytes()
        again = open_trail(self.directory)
        again.close()
        self.assertFalse(again.new_key)
        self.assertEqual(key.read_bytes(), secret)
        self.assertEqual(again.key_id, ChainKey(secret).id)
        self.assertNotIn(secret.hex(), repr(ChainKey(secret)))

    def test_daemon_refuses_a_key_open_to_others(self) -> None:
        """
        A key that others may read is refused at start, saying why and how
        to fix it, rather than used.
        """
        write_events(self.directory, 1)
        (self.directory / KEY_NAME).chmod(0o644)
        service = AuditService(self.directory, globalLogPublisher, Clock())
        with self.assertRaises(SystemExit) as raised:
            service.privilegedStartService()
        self.assertIn("open to others (mode 0644)", str(raised.exception))
        self.assertIn("chmod 600", str(raised.exception))

    def test_daemon_refuses_a_keyed_trail_whose_key_is_gone_or_another(
        self,
    ) -> None:
        """
        A new key would hide the loss of the old one: a keyed trail goes
        on only with its own key, and the daemon says what to do instead.
        """
        write_events(self.directory, 2)
        key = self.directory / KEY_NAME
        key.unlink()
        with self.assertRaises(ConfigurationError) as missing:
            open_trail(self.directory)
        self.assertIn("missing, and the audit trail is keyed", str(missing.exception))
        self.assertFalse(key.exists())
        key.write_bytes(bytes(32))
        key.chmod(0o600)
        with self.assertRaises(ConfigurationError) as other:
            open_trail(self.directory)
        self.assertIn("restore that key", str(other.exception))

    def test_service_logs_the_head_at_start_every_hour_and_at_shutdown(
        self,
    ) -> None:
        """
        The head goes to the operator's log (not the trail) when the
        daemon starts, each hour on its clock, and as it stops.
        """
        clock = Clock()
        texts = capture_log(self)
        service = AuditService(self.directory, globalLogPublisher, clock)
        service.privilegedStartService()
        service.startService()
        heads = [t for t in texts if t.startswith("audit trail head ")]
        self.assertEqual(len(heads), 1)
        self.assertTrue(heads[0].startswith("audit trail head 1:"))
        audit("test", "an event")
        clock.advance(HEAD_INTERVAL)
        service.stopService()
        heads = [t for t in texts if t.startswith("audit trail head ")]
        self.assertEqual(len(heads), 3)
        logged = heads[-1].split()[3]
        self.assertEqual(logged, head_of(self.directory / AUDIT_NAME))
        self.assertTrue(logged.startswith("2:"))
        self.assertIn(f"secmsg audit verify --head {logged}", heads[-1])
        first = json.loads((self.directory / AUDIT_NAME).read_bytes().split(b"\n")[0])
        self.assertEqual(first["event"], "trail_keyed")
        self.assertEqual(first["key_id"], first["key"])
        self.assertIn(f"key id {first['key']} (check:", heads[-1])
        self.assertIn(f"--key-id {first['key']})", heads[-1])


class TamperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        write_events(self.directory, 5)
        self.path = self.directory / AUDIT_NAME
        self.lines = self.path.read_bytes().splitlines(keepends=True)

    def write(self, lines: list[bytes]) -> None:
        self.path.write_bytes(b"".join(lines))

    def test_an_edited_record_is_reported_at_its_line_and_seq(self) -> None:
        """
        Editing line 3 breaks its own MAC: verify names line 3 and seq 3,
        the first record that fails (and only it: line 4 still names the
        MAC line 3 had), and exits 1.
        """
        self.lines[2] = self.lines[2].replace(b'"n":2', b'"n":9')
        self.write(self.lines)
        status, lines, _ = verify(self.path)
        self.assertEqual(status, 1)
        self.assertEqual(
            lines,
            [
                f"{self.path}:3 (seq 3): chain broken: its MAC does not match: "
                "the record was changed",
                "5 records, 1 broken",
            ],
        )

    def test_editing_the_last_record_is_caught(self) -> None:
        """
        The last record has no successor to name it, but its MAC covers
        itself: an edit to it fails too.
        """
        self.lines[-1] = self.lines[-1].replace(b'"n":4', b'"n":6')
        self.write(self.lines)
        status, lines, _ = verify(self.path)
        self.assertEqual(status, 1)
        self.assertTrue(lines[0].startswith(f"{self.path}:5 (seq 5): "))

    def test_a_tail_rewritten_without_the_key_fails(self) -> None:
        """
        Rewriting the last records with recomputed links, as plain hashes
        or under a key of the attacker's naming ours, fails at the first
        rewritten record.
        """
        forged = ChainKey(bytes(range(32)))
        record = json.loads(self.lines[4])
        for name in ("prev", "key", "mac"):
            record.pop(name)
        record["n"] = 99
        sealed = seal(record, json.loads(self.lines[3])["mac"], forged)
        ours = json.loads(self.lines[3])["key"]
        sealed = sealed.replace(
            f'"key":"{forged.id}"'.encode(), f'"key":"{ours}"'.encode()
        )
        self.write([*self.lines[:4], sealed + b"\n"])
        status, lines, _ = verify(self.path)
        self.assertEqual(
            (status, lines[0].split(": ")[0]), (1, f"{self.path}:5 (seq 5)")
        )
        plain = json.dumps(
            {
                "seq": 5,
                "event": "test",
                "prev": hashlib.sha256(self.lines[3].rstrip()).hexdigest(),
            },
            separators=(",", ":"),
        ).encode()
        self.write([*self.lines[:4], plain + b"\n"])
        status, lines, _ = verify(self.path)
        self.assertEqual(status, 1)
        self.assertIn("an unkeyed record after keyed ones", lines[0])

    def test_a_cut_tail_is_caught_only_against_the_logged_head(self) -> None:
        """
        Three records cut from the end leave a chain that holds; only the
        head logged before the cut shows it.
        """
        head = head_of(self.path)
        self.write(self.lines[:-3])
        status, lines, _ = verify(self.path)
        self.assertEqual(status, 0)
        status, lines, _ = verify("--head", head, self.path)
        self.assertEqual(status, 1)
        self.assertEqual(
            lines[-1],
            "does not reach the logged head 5: the trail ends at record 2, "
            "so records were cut from its end",
        )
        self.write(self.lines)
        self.assertEqual(verify("--head", head, self.path)[0], 0)

    def test_a_head_older_than_the_files_given_is_trouble(self) -> None:
        """
        A head in a rotated file that was not given cannot be checked:
        status 2, asking for the older files.
        """
        self.write(self.lines[3:])
        status, _, complaint = verify("--head", "2:" + "a" * 64, self.path)
        self.assertEqual(status, 2)
        self.assertIn("give the rotated files too", complaint)


class TroubleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        write_events(self.directory, 3)
        self.path = self.directory / AUDIT_NAME
        self.key = self.directory / KEY_NAME

    def test_a_key_open_to_others_is_refused(self) -> None:
        """
        verify will not use a key that others may read: status 2, saying
        why.
        """
        self.key.chmod(0o640)
        status, lines, complaint = verify(self.path)
        self.assertEqual((status, lines), (2, []))
        self.assertIn("the audit key is open to others (mode 0640)", complaint)

    def test_no_key_is_trouble_unless_only_the_order_is_asked_for(self) -> None:
        """
        Without a key, a keyed trail cannot be verified (status 2);
        C{--no-key} checks only the order, and says so.
        """
        moved = self.directory / "elsewhere.key"
        self.key.rename(moved)
        status, _, complaint = verify(self.path)
        self.assertEqual(status, 2)
        self.assertIn("give --key FILE", complaint)
        status, lines, _ = verify("--no-key", self.path)
        self.assertEqual(status, 0)
        self.assertIn("MACs not checked (--no-key)", lines[0])
        self.assertEqual(verify("--key", moved, self.path)[0], 0)

    def test_an_unreadable_file_is_trouble(self) -> None:
        """
        A file that cannot be read is status 2, not a verdict of tampering.
        """
        status, _, complaint = verify(self.directory / "absent.log")
        self.assertEqual(status, 2)
        self.assertIn("cannot read", complaint)

    def test_a_key_id_that_is_not_one_or_with_no_key_is_refused(self) -> None:
        """
        C{--key-id} must look like the id the daemon logs, and checks a
        key: not with C{--no-key}, nor where there is none.
        """
        key_id = ChainKey(self.key.read_bytes()).id
        status, _, complaint = verify("--key-id", "d7fc", self.path)
        self.assertEqual(status, 2)
        self.assertIn("not a key id (16 hex digits", complaint)
        status, _, complaint = verify("--no-key", "--key-id", key_id, self.path)
        self.assertEqual(status, 2)
        self.assertIn("--key-id checks the key: not with --no-key", complaint)
        self.key.unlink()
        status, _, complaint = verify("--key-id", key_id, self.path)
        self.assertEqual(status, 2)
        self.assertIn(f"no audit key here to check against key id {key_id}", complaint)


class DowngradeTests(SynchronousTestCase):
    """
    Someone who can write the trail (an archived copy, say) but not read
    its key: an unkeyed rewrite, a rewrite under a key of their own, and
    that key put beside the trail.
    """

    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        write_events(self.directory, 3)
        self.path = self.directory / AUDIT_NAME
        self.key = self.directory / KEY_NAME
        self.key_id = ChainKey(self.key.read_bytes()).id

    def test_an_unkeyed_rewrite_with_a_key_present_is_tampering(self) -> None:
        """
        A trail rewritten as plain hashes holds as a hash chain, but a key
        is at hand, beside it or given, and no record is keyed: status 1,
        saying why.
        """
        write_unkeyed(self.path, 3)
        status, lines, _ = verify(self.path)
        self.assertEqual(status, 1)
        self.assertIn(
            f"there is a key ({self.key}, key id {self.key_id}), but no record "
            "is keyed: an unkeyed rewrite?",
            lines[0],
        )
        self.assertEqual(lines[-1], "3 records, 0 broken, not keyed with this key")
        moved = self.key.rename(self.directory / "kept.key")
        status, lines, _ = verify("--key", moved, "--key-id", self.key_id, self.path)
        self.assertEqual(status, 1)
        self.assertIn("no record is keyed: an unkeyed rewrite?", lines[0])

    def test_a_trail_keyed_under_another_key_is_tampering(self) -> None:
        """
        Given the daemon's key, a trail rewritten under another one fails
        at every record, and verify says what that means: status 1.
        """
        kept = self.key.rename(self.directory / "kept.key")
        self.path.unlink()
        write_events(self.directory, 3)
        planted = ChainKey(self.key.read_bytes()).id
        status, lines, _ = verify("--key", kept, self.path)
        self.assertEqual(status, 1)
        self.assertIn(
            f"records are keyed with key id {planted}, not with this key "
            f"({kept}, key id {self.key_id}): rewritten under another key",
            lines[0],
        )
        self.assertIn("chain broken: made with another key", lines[1])
        self.assertEqual(lines[-1], "3 records, 3 broken, not keyed with this key")

    def test_a_planted_key_is_caught_with_the_logged_key_id(self) -> None:
        """
        A trail rewritten under a key put beside it verifies against that
        key; C{--key-id}, the id the daemon logged, shows the key is not
        its: status 2, saying so.
        """
        self.key.unlink()
        self.path.unlink()
        write_events(self.directory, 3)
        self.assertEqual(verify(self.path)[0], 0)
        status, lines, complaint = verify("--key-id", self.key_id, self.path)
        self.assertEqual((status, lines), (2, []))
        self.assertIn(f"not {self.key_id} (--key-id): it is not the key", complaint)
        self.assertIn("put beside the trail", complaint)


class UpgradeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        self.path = self.directory / AUDIT_NAME
        write_unkeyed(self.path, 3)

    def test_an_unkeyed_trail_verifies_and_says_so(self) -> None:
        """
        A trail from before keying verifies as before, status 0, and says
        that its links are plain hashes.
        """
        status, lines, _ = verify(self.path)
        self.assertEqual(status, 0)
        self.assertIn("3 records, chain intact from the first record", lines[0])
        self.assertIn("unkeyed: plain hashes", lines[0])
        self.assertFalse((self.directory / KEY_NAME).exists())

    def test_a_trail_keyed_at_the_restart_after_upgrading_verifies(self) -> None:
        """
        The first start after upgrading makes the key and goes on from the
        last unkeyed record; the whole verifies, and a later edit of an
        unkeyed record is still found.
        """
        write_events(self.directory, 2)
        records = [json.loads(line) for line in self.path.read_text().splitlines()]
        self.assertEqual(
            [("key" in r, r["event"]) for r in records],
            [(False, "test")] * 3 + [(True, "test")] * 2,
        )
        status, lines, _ = verify(self.path)
        self.assertEqual(status, 0, lines)
        self.assertIn("keyed with key id", lines[0])
        self.assertIn("after 3 unkeyed", lines[0])
        text = self.path.read_bytes().replace(b'"n":2', b'"n":8', 1)
        self.path.write_bytes(text)
        status, lines, _ = verify(self.path)
        self.assertEqual(status, 1)
        self.assertTrue(lines[0].startswith(f"{self.path}:3 (seq 3): "))
