"""
Renewal and expiry: C{secmsg pki renew} issues a like certificate and
revokes the old one as superseded, C{issue --force} revokes what it
replaces, and C{secmsg pki list --expiring} finds what is due as of the
time it is given.
"""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

from secmsg.cli import main as cli
from secmsg.cli import pki as pki_command
from secmsg.errors import AuthorityError
from secmsg.pki import authority as authority_module
from secmsg.pki import certificates as pki
from secmsg.pki.authority import create_authority, open_authority
from secmsg.pki.lifecycle import make_signing_request, renew, sign_request
from secmsg.pki.requests import Grant, Request, load_signing_request
from tests.harness import temporary_directory
from tests.test_authority import NOW, SUBJECT, load, load_crl
from tests.test_signing_requests import snapshot


def superseded(directory: Path, serial: int) -> bool:
    """
    Whether the CA's CRL lists C{serial} as superseded.
    """
    entry = load_crl(directory).get_revoked_certificate_by_serial_number(serial)
    if entry is None:
        return False
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value
    return reason.reason is x509.ReasonFlags.superseded


class RenewalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self) / "ca"
        create_authority(self.directory, SUBJECT, NOW)

    def issue(self, request: Request) -> x509.Certificate:
        with open_authority(self.directory) as authority:
            return load(authority.issue(request, NOW).certificate)

    def test_renew_keeps_the_identity_and_revokes_the_old(self) -> None:
        """
        A renewed client certificate has a new serial and key, the same
        subject and names, and the old serial is on the CRL as superseded.
        """
        names = pki.Names(emails=("alice@example.org",))
        old = self.issue(Request("alice", names=names, units=("ops",)))
        old_key = (self.directory / "clients" / "alice.key").read_bytes()
        later = NOW + timedelta(days=300)
        with open_authority(self.directory) as authority:
            issuance = renew(authority, "alice", later)
        new = load(issuance.certificate)
        self.assertNotEqual(new.serial_number, old.serial_number)
        self.assertNotEqual(
            (self.directory / "clients" / "alice.key").read_bytes(), old_key
        )
        self.assertEqual(new.subject, old.subject)
        self.assertEqual(
            new.extensions.get_extension_for_class(x509.SubjectAlternativeName),
            old.extensions.get_extension_for_class(x509.SubjectAlternativeName),
        )
        self.assertEqual(new.not_valid_after_utc, later + timedelta(days=365))
        self.assertEqual([r.serial for r in issuance.superseded], [old.serial_number])
        self.assertTrue(superseded(self.directory, old.serial_number))
        self.assertFalse(superseded(self.directory, new.serial_number))

    def test_renew_a_server_keeps_its_names_and_usage(self) -> None:
        """
        A renewed server certificate still names serverAuth and its hosts,
        and an RSA key stays RSA of the same size.
        """
        names = pki.Names(dns=("chat.example",), ips=("192.0.2.1",))
        self.issue(Request("chat", server=True, names=names, rsa_bits=3072))
        with open_authority(self.directory) as authority:
            new = load(renew(authority, "chat", NOW).certificate)
        usage = new.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertEqual(list(usage.value), [ExtendedKeyUsageOID.SERVER_AUTH])
        san = new.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), ["chat.example"])
        key = new.public_key()
        self.assertIsInstance(key, rsa.RSAPublicKey)
        self.assertEqual(key.key_size, 3072)

    def test_renew_from_a_request_leaves_no_key_at_the_ca(self) -> None:
        """
        renew --csr signs the user's new key: the CA's old copy of the key
        goes with the certificate it belonged to, and no new one appears.
        """
        old = self.issue(Request("alice"))
        _, csr_path = make_signing_request(temporary_directory(self), "alice")
        csr = load_signing_request(csr_path)
        with open_authority(self.directory) as authority:
            issuance = renew(authority, "alice", NOW, csr=csr)
        self.assertIsNone(issuance.key)
        self.assertEqual(load(issuance.certificate).public_key(), csr.public_key())
        self.assertFalse((self.directory / "clients" / "alice.key").exists())
        self.assertTrue(superseded(self.directory, old.serial_number))

    def test_renew_of_a_signed_request_makes_no_key_here_unasked(self) -> None:
        """
        A certificate signed from a request has its key with its owner:
        renewing it without a request is refused, naming the two ways on,
        and changes nothing; --new-key makes a key here when asked to.
        """
        _, csr_path = make_signing_request(temporary_directory(self), "carol")
        with open_authority(self.directory) as authority:
            sign_request(authority, load_signing_request(csr_path), Grant(), NOW)
        before = snapshot(self.directory)
        with (
            self.assertRaises(AuthorityError) as caught,
            open_authority(self.directory) as authority,
        ):
            renew(authority, "carol", NOW)
        self.assertIn("'carol' keeps its own key", str(caught.exception))
        self.assertIn("--csr carol.csr), or give --new-key", str(caught.exception))
        self.assertEqual(snapshot(self.directory), before)
        with open_authority(self.directory) as authority:
            issuance = renew(authority, "carol", NOW, new_key=True)
        self.assertEqual(issuance.key, self.directory / "clients" / "carol.key")

    def test_renew_out_does_not_overwrite_unasked(self) -> None:
        """
        renew --out over an existing file is refused before anything is
        signed; --force replaces it.
        """
        self.issue(Request("alice"))
        out = temporary_directory(self) / "alice.pem"
        out.write_bytes(b"the owner's copy")
        before = snapshot(self.directory)
        argv = [
            "pki",
            "--dir",
            str(self.directory),
            "renew",
            "alice",
            "--out",
            str(out),
        ]
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            self.assertEqual(cli.main(argv), 2)
        self.assertIn("already exists; not overwritten (--force", stderr.getvalue())
        self.assertEqual(
            (snapshot(self.directory), out.read_bytes()), (before, b"the owner's copy")
        )
        with redirect_stdout(io.StringIO()):
            self.assertEqual(cli.main([*argv, "--force"]), 0)
        self.assertTrue(out.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----"))

    def test_renewals_that_cannot_be_are_refused(self) -> None:
        """
        Renewing a name with nothing unrevoked, or from a request for
        another name, is refused and changes nothing.
        """
        self.issue(Request("alice"))
        _, csr_path = make_signing_request(temporary_directory(self), "mallory")
        before = snapshot(self.directory)
        for name, csr, words in [
            ("zed", None, "nothing to renew"),
            ("alice", load_signing_request(csr_path), "not 'alice'"),
        ]:
            with (
                self.assertRaises(AuthorityError) as caught,
                open_authority(self.directory) as authority,
            ):
                renew(authority, name, NOW, csr=csr)
            self.assertIn(words, str(caught.exception))
        self.assertEqual(snapshot(self.directory), before)

    def test_issue_force_revokes_what_it_supersedes(self) -> None:
        """
        issue --force over a certificate in force revokes it as superseded;
        issuing anew after its files were handed over leaves it in force,
        and says so.
        """
        first = self.issue(Request("alice"))
        second = self.issue(Request("alice", replace=True))
        self.assertTrue(superseded(self.directory, first.serial_number))
        for suffix in (".pem", ".key"):
            (self.directory / "clients" / f"alice{suffix}").unlink()
        with open_authority(self.directory) as authority:
            third = authority.issue(Request("alice"), NOW)
        self.assertEqual([r.serial for r in third.earlier], [second.serial_number])
        self.assertFalse(superseded(self.directory, second.serial_number))


class InterruptedRenewalTests(SynchronousTestCase):
    """
    A renewal cut short after the new certificate is recorded leaves the
    old one revoked in the inventory, so that the next CRL lists it.
    """

    def setUp(self) -> None:
        self.directory = temporary_directory(self) / "ca"

    def revocations(self) -> dict[int, str | None]:
        """
        Each client certificate's revocation reason in the inventory.
        """
        with open_authority(self.directory) as authority:
            records = authority.inventory.records
        return {
            r.serial: r.reason if r.revoked else None
            for r in records
            if r.kind == "client"
        }

    def test_crash_before_the_crl_leaves_the_old_revoked(self) -> None:
        """
        A crash while the new certificate's files are written (after the
        inventory is saved) leaves the old one superseded in the
        inventory, and secmsg pki crl then lists it.
        """
        create_authority(self.directory, SUBJECT, NOW)
        with open_authority(self.directory) as authority:
            old = authority.issue(Request("alice"), NOW).record

        def crash(*arguments: object) -> None:
            raise _Crash()

        self.patch(authority_module, "_write_leaf", crash)
        with self.assertRaises(_Crash), open_authority(self.directory) as authority:
            renew(authority, "alice", NOW)
        self.assertEqual(self.revocations()[old.serial], "superseded")
        with open_authority(self.directory) as authority:
            authority.sign_crl(NOW)
        self.assertTrue(superseded(self.directory, old.serial))

    def test_crl_that_cannot_be_signed_leaves_the_old_revoked(self) -> None:
        """
        A renewal near the CA's end, whose CRL of 30 days would outlive
        it, says how to finish; the old certificate is superseded in the
        inventory, and the CRL signed with fewer days lists it.
        """
        create_authority(self.directory, SUBJECT, NOW, days=40)
        with open_authority(self.directory) as authority:
            old = authority.issue(Request("alice"), NOW).record
        later = NOW + timedelta(days=20)
        with (
            self.assertRaises(AuthorityError) as caught,
            open_authority(self.directory) as authority,
        ):
            renew(authority, "alice", later)
        self.assertIn("the revocation is in the inventory", str(caught.exception))
        self.assertIn("would outlive the CA", str(caught.exception))
        revocations = self.revocations()
        self.assertEqual(revocations[old.serial], "superseded")
        self.assertEqual(list(revocations.values()).count(None), 1)
        with open_authority(self.directory) as authority:
            authority.sign_crl(later, days=5)
        self.assertTrue(superseded(self.directory, old.serial))


class _Crash(Exception):
    """
    Stands for the process dying at the point where it is raised.
    """


class ExpiringTests(SynchronousTestCase):
    """
    list --expiring, judged at the time passed in, never the clock's.
    """

    def setUp(self) -> None:
        self.directory = temporary_directory(self) / "ca"
        create_authority(self.directory, SUBJECT, NOW)
        with open_authority(self.directory) as authority:
            authority.issue(Request("alice", days=30), NOW)
            authority.issue(Request("bob", days=200), NOW)
            authority.issue(Request("carol", days=10), NOW)
            authority.revoke("carol", "unspecified", NOW)

    def expiring(self, days: int, at: timedelta) -> tuple[list[str], int]:
        options = pki_command.Options()
        options.parseOptions(
            ["--dir", str(self.directory), "list", "--expiring", str(days)]
        )
        return pki_command.run(options, NOW + at)

    def test_only_certificates_in_use_that_expire_soon_are_listed(self) -> None:
        """
        Of a certificate expiring in 20 days, one in 190 and a revoked one,
        --expiring 30 lists the first only and exits 3.
        """
        lines, status = self.expiring(30, timedelta(days=10))
        self.assertEqual(status, pki_command.ListStatus.EXPIRING)
        self.assertEqual([line.split()[0] for line in lines], ["NAME", "alice"])

    def test_nothing_expiring_prints_nothing_and_exits_zero(self) -> None:
        """
        With nothing due, cron gets no output and a status of 0.
        """
        self.assertEqual(self.expiring(7, timedelta(0)), ([], 0))

    def test_expired_stays_listed_until_renewed(self) -> None:
        """
        An expired certificate stays on the list (marked so) until it is
        renewed, after which its successor is judged instead.
        """
        lines, _ = self.expiring(1, timedelta(days=31))
        self.assertIn("(expired)", lines[1])
        with open_authority(self.directory) as authority:
            renew(authority, "alice", NOW + timedelta(days=31))
        self.assertEqual(self.expiring(1, timedelta(days=31)), ([], 0))

    def test_exit_status_on_the_command_line(self) -> None:
        """
        secmsg pki list --expiring exits 3 with the table when something
        is due and 0 with no output at all when nothing is, for cron.
        """
        d = str(temporary_directory(self) / "cli")
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(cli.main(["pki", "init", d]), 0)
        self.assertEqual(
            cli.main(["pki", "--dir", d, "issue", "dave", "--days", "10"]), 0
        )
        out.truncate(0)
        out.seek(0)
        self.assertEqual(cli.main(["pki", "--dir", d, "list", "--expiring", "5"]), 0)
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(cli.main(["pki", "--dir", d, "list", "--expiring", "30"]), 3)
        self.assertEqual(
            [line.split()[0] for line in out.getvalue().splitlines()], ["NAME", "dave"]
        )
