"""
C{secmsg pki}: the CA directory, its certificates, CRLs and inventory, and
the command line that drives it.  Certificates it makes are checked with
cryptography's own path validation, not with secmsg's code.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from secmsg.cli import main as cli
from secmsg.errors import AuthorityError, ConfigurationError
from secmsg.files import install_file
from secmsg.pki import authority as authority_module
from secmsg.pki import certificates as pki
from secmsg.pki.authority import create_authority, open_authority
from secmsg.pki.requests import Request
from tests.harness import temporary_directory

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_crl(directory: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class AuthorityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self) / "ca"
        create_authority(self.directory, SUBJECT, NOW)

    def issue(self, request: Request, now: datetime = NOW) -> x509.Certificate:
        with open_authority(self.directory) as authority:
            issuance = authority.issue(request, now)
        return load(issuance.certificate)

    def verify_client(self, certificate: x509.Certificate) -> None:
        store = verification.Store([load(self.directory / "ca.pem")])
        verifier = (
            verification.PolicyBuilder()
            .store(store)
            .time(NOW + timedelta(hours=1))
            # secmsg names clients by their CN, so a client certificate needs
            # no subject alternative name, which the Web PKI's rules demand.
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        verifier.verify(certificate, [])

    def test_ca_key_is_owner_only_and_crl_is_empty(self) -> None:
        """
        The CA key is 0600 in a 0700 directory, and the first CRL lists
        nothing and carries CRL number 1.
        """
        self.assertEqual(mode(self.directory / "ca.key"), 0o600)
        self.assertEqual(mode(self.directory), 0o700)
        crl = load_crl(self.directory)
        self.assertEqual(len(crl), 0)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber)
        self.assertEqual(number.value.crl_number, 1)
        ca = load(self.directory / "ca.pem")
        self.assertTrue(crl.is_signature_valid(ca.public_key()))
        self.assertIsInstance(ca.public_key(), ec.EllipticCurvePublicKey)

    def test_public_files_are_readable_by_all_whatever_the_umask(self) -> None:
        """
        Under umask 077, as secmsg-crl.service runs, the CA certificate, the
        CRL and a client certificate are still 0644 (the daemon's user reads
        them), and the keys still 0600.
        """
        previous = os.umask(0o077)
        self.addCleanup(os.umask, previous)
        directory = temporary_directory(self) / "ca"
        create_authority(directory, SUBJECT, NOW)
        with open_authority(directory) as authority:
            authority.issue(Request("alice"), NOW)
            authority.sign_crl(NOW)
        public = ["ca.pem", "crl.pem", "inventory.json", "clients/alice.pem"]
        private = ["ca.key", "clients/alice.key"]
        self.assertEqual(
            {name: mode(directory / name) for name in public + private},
            {name: 0o644 if name in public else 0o600 for name in public + private},
        )

    def test_existing_ca_is_not_overwritten(self) -> None:
        """
        A second CA in the same directory is refused and changes nothing.
        """
        before = (self.directory / "ca.key").read_bytes()
        with self.assertRaises(AuthorityError) as caught:
            create_authority(self.directory, SUBJECT, NOW)
        self.assertIn("ca.pem already exists; not overwritten", str(caught.exception))
        self.assertEqual((self.directory / "ca.key").read_bytes(), before)

    def test_client_certificate_verifies_for_client_auth(self) -> None:
        """
        A client certificate chains to the CA under cryptography's own
        client verifier, names clientAuth only, and its key is 0600.
        """
        certificate = self.issue(Request("alice"))
        self.verify_client(certificate)
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertEqual(list(usage.value), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertEqual(mode(self.directory / "clients" / "alice.key"), 0o600)

    def test_server_certificate_has_server_auth_and_names(self) -> None:
        """
        A server certificate names serverAuth and carries its DNS names and
        IP addresses; without any it is made for its own name.
        """
        names = pki.Names(dns=("chat.example",), ips=("192.0.2.1",))
        certificate = self.issue(Request("chat", server=True, names=names))
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertEqual(list(usage.value), [ExtendedKeyUsageOID.SERVER_AUTH])
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["chat.example"])
        self.assertEqual(
            [str(a) for a in san.get_values_for_type(x509.IPAddress)], ["192.0.2.1"]
        )
        plain = self.issue(Request("relay.example", server=True))
        san = plain.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), ["relay.example"])

    def test_san_email_and_uri(self) -> None:
        """
        --san-email and --san-uri end up in the subject alternative name.
        """
        names = pki.Names(emails=("alice@example.org",), uris=("urn:example:alice",))
        certificate = self.issue(Request("alice", names=names))
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
        self.assertEqual(
            san.get_values_for_type(x509.RFC822Name), ["alice@example.org"]
        )
        self.assertEqual(
            san.get_values_for_type(x509.UniformResourceIdentifier),
            ["urn:example:alice"],
        )

    def test_organisational_units_for_policy_rules(self) -> None:
        """
        --ou puts organisational units in the subject, before the CN, for
        a policy's [[rules]] to grant roles by.
        """
        certificate = self.issue(Request("carol", units=("ops", "db")))
        self.assertEqual(certificate.subject.rfc4514_string(), "CN=carol,OU=db,OU=ops")

    def test_rsa_keys_on_request(self) -> None:
        """
        --rsa 3072 makes an RSA key; a weaker size is refused.
        """
        certificate = self.issue(Request("bob", rsa_bits=3072))
        self.assertIsInstance(certificate.public_key(), rsa.RSAPublicKey)
        self.assertEqual(certificate.public_key().key_size, 3072)
        with self.assertRaises(AuthorityError):
            self.issue(Request("carol", rsa_bits=1024))

    def test_existing_files_need_force(self) -> None:
        """
        Issuing to a name that has files refuses and keeps them; --force
        replaces them.
        """
        first = self.issue(Request("alice"))
        key = (self.directory / "clients" / "alice.key").read_bytes()
        with self.assertRaises(AuthorityError) as caught:
            self.issue(Request("alice"))
        self.assertIn("--force", str(caught.exception))
        self.assertEqual(load(self.directory / "clients" / "alice.pem"), first)
        self.assertEqual((self.directory / "clients" / "alice.key").read_bytes(), key)
        second = self.issue(Request("alice", replace=True))
        self.assertNotEqual(first.serial_number, second.serial_number)

    def test_bad_requests_change_nothing(self) -> None:
        """
        Names that would escape the directory or are not name tokens, bad
        server names and addresses, and validity past the CA's are refused
        before anything is written.
        """
        for request, words in [
            (Request("../evil"), "not a usable name"),
            (Request(".hidden"), "not a usable name"),
            (Request("a b"), "not a usable name"),
            (Request("s", server=True, names=pki.Names(dns=("a b",))), "DNS name"),
            (Request("s", server=True, names=pki.Names(dns=("*.com",))), "DNS name"),
            (Request("s", server=True, names=pki.Names(dns=("10.9.8.7",))), "--ip"),
            (
                Request("s", server=True, names=pki.Names(ips=("evil.example",))),
                "not an IP address",
            ),
            (Request("r", rsa_bits=2048), "RSA keys are 3072 or 4096 bits"),
            (Request("e", names=pki.Names(emails=("no-at-sign",))), "e-mail"),
            (Request("u", names=pki.Names(uris=("no scheme",))), "URI"),
            (Request("old", days=pki.CA_DAYS + 1), "outlive the CA"),
        ]:
            with self.assertRaises(AuthorityError) as caught:
                self.issue(request)
            self.assertIn(words, str(caught.exception))
        inventory = (self.directory / "inventory.json").read_text()
        with open_authority(self.directory) as authority:
            self.assertEqual([r.kind for r in authority.inventory.records], ["ca"])
        self.assertFalse((self.directory / "clients").exists(), inventory)

    def test_revoke_by_name_and_by_serial(self) -> None:
        """
        Revoking by name or by serial lists the certificate on a fresh CRL,
        with its reason and a larger CRL number.
        """
        alice = self.issue(Request("alice"))
        bob = self.issue(Request("bob"))
        with open_authority(self.directory) as authority:
            authority.revoke("alice", "key-compromise", NOW)
        crl = load_crl(self.directory)
        entry = crl.get_revoked_certificate_by_serial_number(alice.serial_number)
        self.assertIsNotNone(entry)
        reason = entry.extensions.get_extension_for_class(x509.CRLReason)
        self.assertEqual(reason.value.reason, x509.ReasonFlags.key_compromise)
        self.assertEqual(entry.revocation_date_utc, NOW)
        ca_key = load(self.directory / "ca.pem").public_key()
        self.assertTrue(crl.is_signature_valid(ca_key))
        self.assertIsNone(
            crl.get_revoked_certificate_by_serial_number(bob.serial_number)
        )
        with open_authority(self.directory) as authority:
            authority.revoke(f"{bob.serial_number:X}", "superseded", NOW)
        crl = load_crl(self.directory)
        self.assertEqual(len(crl), 2)
        bob_entry = crl.get_revoked_certificate_by_serial_number(bob.serial_number)
        reason = bob_entry.extensions.get_extension_for_class(x509.CRLReason)
        self.assertEqual(reason.value.reason, x509.ReasonFlags.superseded)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber)
        self.assertEqual(number.value.crl_number, 3)

    def test_revoking_nothing_is_an_error(self) -> None:
        """
        An unknown name, an already revoked one and an unknown reason are
        refused, and the CRL stays as it was.
        """
        self.issue(Request("alice"))
        with open_authority(self.directory) as authority:
            authority.revoke("alice", "unspecified", NOW)
        before = (self.directory / "crl.pem").read_bytes()
        for which, reason in [
            ("alice", "unspecified"),
            ("zed", "unspecified"),
            ("ca", "unspecified"),
            ("alice", "because"),
        ]:
            with (
                self.assertRaises(AuthorityError),
                open_authority(self.directory) as authority,
            ):
                authority.revoke(which, reason, NOW)
        self.assertEqual((self.directory / "crl.pem").read_bytes(), before)

    def test_unspecified_reason_carries_no_extension(self) -> None:
        """
        RFC 5280 asks that "unspecified" be left out rather than written.
        """
        alice = self.issue(Request("alice"))
        with open_authority(self.directory) as authority:
            authority.revoke("alice", "unspecified", NOW)
        entry = load_crl(self.directory).get_revoked_certificate_by_serial_number(
            alice.serial_number
        )
        self.assertEqual(len(entry.extensions), 0)

    def test_revocation_whose_crl_cannot_be_written_says_how_to_finish(self) -> None:
        """
        If the CRL cannot be written, the operator is told that the
        revocation is recorded and which command writes the CRL.
        """
        self.issue(Request("alice"))
        (self.directory / "crl.pem").unlink()
        (self.directory / "crl.pem").mkdir()
        with (
            self.assertRaises(AuthorityError) as caught,
            open_authority(self.directory) as authority,
        ):
            authority.revoke("alice", "unspecified", NOW)
        self.assertIn(f"secmsg pki --dir {self.directory} crl", str(caught.exception))

    def test_ca_key_that_is_not_the_cas_is_refused(self) -> None:
        """
        A ca.key that does not belong to ca.pem would sign things no one
        can verify: the directory is refused.
        """
        other = temporary_directory(self) / "other"
        create_authority(other, SUBJECT, NOW)
        (self.directory / "ca.key").write_bytes((other / "ca.key").read_bytes())
        with (
            self.assertRaises(ConfigurationError) as caught,
            open_authority(self.directory),
        ):
            pass
        self.assertIn("key does not match the certificate", str(caught.exception))

    def test_init_force_cut_short_is_refused_until_run_again(self) -> None:
        """
        A crash in init --force before ca.pem, or before the inventory, is
        written leaves files of two CAs: the directory is refused in words
        that say to run it again, and running it again mends it.
        """
        for crashing, words in [
            ("ca.pem", "key does not match the certificate"),
            ("inventory.json", "the inventory of another CA"),
        ]:
            patched = self.patch(
                authority_module, "install_file", _crashing_at(crashing)
            )
            with self.assertRaises(_Crash):
                create_authority(self.directory, SUBJECT, NOW, replace=True)
            patched.restore()
            with (
                self.assertRaises(ConfigurationError) as caught,
                open_authority(self.directory),
            ):
                pass
            self.assertIn(words, str(caught.exception))
            self.assertIn(
                "init --force` was cut short, run it again", str(caught.exception)
            )
            create_authority(self.directory, SUBJECT, NOW, replace=True)
            with open_authority(self.directory) as authority:
                self.assertEqual(authority.inventory.records[0].kind, "ca")

    def test_default_validity_stops_at_the_cas_expiry(self) -> None:
        """
        Without --days, a certificate lasts a year or until the CA expires,
        whichever is sooner; an explicit --days past the CA is refused.
        """
        short = temporary_directory(self) / "short"
        create_authority(short, SUBJECT, NOW, days=100)
        with open_authority(short) as authority:
            path = authority.issue(Request("alice"), NOW).certificate
            with self.assertRaises(AuthorityError):
                authority.issue(Request("bob", days=200), NOW)
        self.assertLessEqual(
            load(path).not_valid_after_utc,
            load(short / "ca.pem").not_valid_after_utc,
        )

    def test_crl_may_not_outlive_the_ca(self) -> None:
        """
        A CRL whose next update is after the CA expires is refused.
        """
        with (
            self.assertRaises(AuthorityError),
            open_authority(self.directory) as authority,
        ):
            authority.sign_crl(NOW, pki.CA_DAYS + 1)

    def test_damaged_inventory_is_named(self) -> None:
        """
        An inventory that is not one is reported against its file.
        """
        inventory = self.directory / "inventory.json"
        good = inventory.read_text()
        for damaged in (
            "[]",
            good.replace('"crl_number": 1', '"crl_number": "1"'),
            good.replace("+00:00", ""),
        ):
            inventory.write_text(damaged)
            with (
                self.assertRaises(ConfigurationError) as caught,
                open_authority(self.directory),
            ):
                pass
            self.assertIn(
                "inventory.json: not a secmsg inventory", str(caught.exception)
            )

    def test_no_ca_says_how_to_make_one(self) -> None:
        """
        A directory without a CA is refused with the command that makes one.
        """
        empty = temporary_directory(self)
        with self.assertRaises(AuthorityError) as caught, open_authority(empty):
            pass
        self.assertIn("secmsg pki init", str(caught.exception))


class _Crash(Exception):
    """
    Stands for the process dying at the point where it is raised.
    """


def _crashing_at(name: str) -> Callable[..., None]:
    """
    L{install_file}, but for a file called C{name}, where it crashes.
    """
    install = install_file

    def install_or_crash(path: Path, data: bytes, *, private: bool) -> None:
        if path.name == name:
            raise _Crash()
        install(path, data, private=private)

    return install_or_crash


def run_cli(testcase: SynchronousTestCase, *argv: str) -> tuple[int, str, str]:
    """
    Run the secmsg command in this process, as the operator types it: its
    exit status, and what it wrote to standard output and error.
    """
    out, err = io.StringIO(), io.StringIO()
    testcase.patch(sys, "stdout", out)
    testcase.patch(sys, "stderr", err)
    status = cli.main(list(argv))
    return status, out.getvalue(), err.getvalue()


class CommandLineTests(SynchronousTestCase):
    """
    C{secmsg pki} as the operator types it.
    """

    def setUp(self) -> None:
        self.directory = temporary_directory(self) / "ca"

    def secmsg(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(self, *argv)

    def test_round_trip(self) -> None:
        """
        init, issue (options after the name), revoke, crl and list work on
        --dir given before or after the subcommand.
        """
        d = str(self.directory)
        self.assertEqual(self.secmsg("pki", "init", d, "--org", "Example")[0], 0)
        status, out, _ = self.secmsg(
            "pki", "--dir", d, "issue", "alice", "--days", "30"
        )
        self.assertEqual(status, 0, out)
        self.assertIn("issued a client certificate for alice", out)
        status, out, _ = self.secmsg(
            "pki", "issue", "chat", "--server", "--dns", "chat.example", "--dir", d
        )
        self.assertEqual(status, 0, out)
        status, out, _ = self.secmsg("pki", "revoke", "alice", "--dir", d)
        self.assertIn("revoked client certificate", out)
        self.assertIn("SIGHUP", out)
        status, out, _ = self.secmsg("pki", "crl", "--dir", d, "--days", "7")
        self.assertIn("CRL number 3", out)
        status, out, _ = self.secmsg("pki", "list", "--dir", d)
        rows = [line.split() for line in out.splitlines()]
        self.assertEqual(rows[0], ["NAME", "SERIAL", "KIND", "EXPIRES", "REVOKED"])
        self.assertEqual([row[0] for row in rows[1:]], ["ca", "alice", "chat"])
        self.assertEqual(rows[2][-1], "unspecified")
        self.assertEqual(rows[3][-1], "-")

    def test_mistakes_exit_non_zero_with_one_line(self) -> None:
        """
        A refused request exits 1 with one line on stderr; a usage mistake
        exits 2 with the usage of the subcommand at fault.
        """
        d = str(self.directory)
        self.secmsg("pki", "init", d)
        status, out, err = self.secmsg("pki", "init", d)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1)
        status, _, err = self.secmsg("pki", "--dir", d, "issue", "alice", "--ip", "::1")
        self.assertEqual(status, 2)
        self.assertIn("Usage: secmsg pki issue NAME", err)
        self.assertIn("--dns and --ip are for --server certificates", err)
        status, _, err = self.secmsg("pki", "--dir", d, "issue", "x", "--ou", "a\x01")
        self.assertEqual(status, 2)
        self.assertIn("--ou takes 1 to 64 printable characters", err)
        status, _, err = self.secmsg("pki", "--dir", d, "issue", "x", "--rsa", "2048")
        self.assertEqual(status, 1)
        self.assertIn("RSA keys are 3072 or 4096 bits, not 2048", err)
        self.assertFalse((self.directory / "clients").exists())
        fresh = temporary_directory(self) / "fresh"
        status, _, err = self.secmsg("pki", "init", str(fresh), "--rsa", "2048")
        self.assertEqual((status, fresh.exists()), (1, False))
        status, _, err = self.secmsg("pki", "init", str(fresh), "--cn", "")
        self.assertEqual(status, 1)
        self.assertIn("--cn or --org", err)

    def test_init_never_overwrites_an_operators_files(self) -> None:
        """
        secmsg init into a directory that already has a policy (or a config,
        or a CA) changes nothing and says which file is in the way.
        """
        self.directory.mkdir(parents=True)
        policy = self.directory / "policy.toml"
        policy.write_text("# mine\n")
        status, _, err = self.secmsg("init", str(self.directory))
        self.assertEqual(status, 1)
        self.assertIn("policy.toml already exists", err)
        self.assertEqual(policy.read_text(), "# mine\n")
        self.assertFalse((self.directory / "ca.key").exists())
        policy.unlink()
        (self.directory / "clients").mkdir()
        (self.directory / "clients" / "bob.pem").write_text("mine")
        status, _, err = self.secmsg("init", str(self.directory))
        self.assertEqual(status, 1)
        self.assertIn("bob.pem already exists", err)
        self.assertEqual(
            sorted(p.name for p in self.directory.rglob("*")), ["bob.pem", "clients"]
        )

    def test_options_after_arguments_and_double_dash(self) -> None:
        """
        Options may follow the positional arguments; an escape sequence in
        an argument is shown escaped.
        """
        d = str(self.directory)
        self.secmsg("pki", "init", d)
        status, out, _ = self.secmsg("pki", "issue", "carol", "--days", "3", "--dir", d)
        self.assertEqual(status, 0, out)
        status, _, err = self.secmsg("pki", "--dir", d, "issue", "\x1b]0;x\x07")
        self.assertEqual(status, 1)
        self.assertIn("\\x1b]0;x\\x07", err)
        self.assertNotIn("\x1b", err)

    def test_no_private_key_is_printed(self) -> None:
        """
        Nothing the commands print holds key material.
        """
        d = str(self.directory)
        outputs = [
            self.secmsg("pki", "init", d),
            self.secmsg("pki", "--dir", d, "issue", "alice"),
            self.secmsg("pki", "--dir", d, "list"),
        ]
        for _, out, err in outputs:
            self.assertNotIn("PRIVATE KEY", out + err)
            self.assertNotIn("BEGIN", out + err)

    def test_each_pki_command_says_what_it_does(self) -> None:
        """
        secmsg pki --help lists every subcommand, and it and each
        subcommand's --help give the command's own usage line and
        description, not the program's docstring.
        """
        helps = {}
        for command in ["", *_PKI_COMMANDS]:
            words = [command] if command else []
            with self.assertRaises(SystemExit) as caught:
                self.secmsg("pki", *words, "--help")
            self.assertEqual(caught.exception.code, 0)
            helps[command] = sys.stdout.getvalue()
        for command, text in helps.items():
            self.assertIn(f"Usage: secmsg pki {command}".rstrip(), text)
            self.assertNotIn("python -m secmsg", text)
            self.assertNotIn("C{", text)
        listed = helps[""].split("Commands:")[1].split()
        for command in _PKI_COMMANDS:
            self.assertIn(command, listed)


_PKI_COMMANDS = ("init", "request", "sign", "issue", "renew", "revoke", "crl", "list")
