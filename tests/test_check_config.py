"""
Tests for C{secmsg check-config}: every problem of a configuration named
with its file, in one run; what the policy grants; the warnings of what
will go wrong soon; and that it changes nothing.
"""

from __future__ import annotations

import io
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from datetime import timedelta
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from secmsg.cli import main as cli
from secmsg.cli.check_config import Findings, check
from secmsg.pki.instance import create_instance
from tests.certs import SERVER_AUTH, CertificateAuthority, now
from tests.harness import temporary_directory
from tests.test_daemon import BIN, STARTUP_DEADLINE

POLICY = b"""\
default_roles = ["guest"]

[roles.guest]
commands = ["HELP", "PING", "QUIT"]

[roles.user]
inherits = ["guest"]
commands = ["MSG", "JOIN"]
rate = 5
burst = 10

[[rules]]
subject = { OU = "ops" }
roles = ["user"]

[[rooms]]
pattern = "#ops-*"
join = ["user"]
say = []

[identities]
alice = ["user"]
"""

CONFIG = b"""\
cert = "server.pem"
key = "server.key"
ca = "ca.pem"
crl = "crl.pem"
policy = "policy.toml"
data-dir = "data"
"""


class Configuration:
    """
    A daemon's configuration in a fresh directory, made from a test CA:
    good until a test spoils one of its files.
    """

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.directory = temporary_directory(testcase)
        self.ca = CertificateAuthority()
        self.server = self.ca.issue(
            "localhost", usages=SERVER_AUTH, valid_for=timedelta(days=365)
        )
        self.write("ca.pem", self.ca.pem)
        self.write("server.pem", self.server.certificate_pem)
        self.write("server.key", self.server.key_pem).chmod(0o600)
        self.write("crl.pem", self.ca.crl_pem(next_update=timedelta(days=90)))
        self.write("policy.toml", POLICY)
        self.config = self.write("secmsg.toml", CONFIG)

    def write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def check(self) -> Findings:
        return check(self.config, now())


def run_command(*argv: str) -> tuple[int, str, str]:
    """
    Run C{secmsg} in this process: its status, standard output and error.
    """
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = cli.main(list(argv))
    return status, out.getvalue(), err.getvalue()


class GoodConfigurationTests(SynchronousTestCase):
    def test_development_instance_passes_and_lists_its_grants(self) -> None:
        """
        What secmsg init makes passes with status 0, its grants listed,
        and checking it creates neither the data directory nor a database.
        """
        directory = temporary_directory(self) / "instance"
        config = create_instance(directory, now())
        status, out, _ = run_command("check-config", str(config))
        self.assertEqual(status, 0, out)
        lines = out.splitlines()
        self.assertNotIn("problem:", out)
        self.assertIn(f"grants of {directory / 'policy.toml'}:", lines)
        self.assertIn("  identity admin: admin", lines)
        self.assertIn("  default_roles: user", lines)
        self.assertIn("  rooms #ops-*: join admin; read admin; say admin", lines)
        self.assertIn(
            "  role guest: HELP, PING, QUIT, WHO, WHOAMI; rate 20/s, burst 60", lines
        )
        self.assertTrue(lines[-1].startswith("no problems, 0 warnings"))
        self.assertFalse((directory / "data").exists())

    def test_grants_name_inheritance_rates_rules_and_rooms(self) -> None:
        """
        The listing shows inherited commands, a role's own rate, the rules
        that grant roles and each room action's roles.
        """
        findings = Configuration(self).check()
        self.assertEqual(findings.problems, [])
        self.assertEqual(findings.warnings, [])
        grants = findings.grants
        self.assertIn(
            "  role user: HELP, JOIN, MSG, PING, QUIT (inherits guest); "
            "rate 5/s, burst 10",
            grants,
        )
        self.assertIn("  rule 1 (OU=ops): user", grants)
        self.assertIn("  identity alice: user", grants)
        self.assertIn("  rooms #ops-*: join user; read user; say (none)", grants)

    def test_the_command_runs_as_a_process(self) -> None:
        """
        The installed secmsg command checks an instance and exits 0, and
        exits 1 naming the file once the policy is broken.
        """
        directory = temporary_directory(self) / "instance"
        config = create_instance(directory, now())
        command = [str(BIN / "secmsg"), "check-config", str(config)]
        good = subprocess.run(
            command, capture_output=True, text=True, timeout=STARTUP_DEADLINE
        )
        self.assertEqual(good.returncode, 0, good.stdout + good.stderr)
        self.assertIn("the daemon would start", good.stdout)
        (directory / "policy.toml").write_text("default_roles = [\n")
        bad = subprocess.run(
            command, capture_output=True, text=True, timeout=STARTUP_DEADLINE
        )
        self.assertEqual(bad.returncode, 1)
        self.assertIn(
            f"problem: {directory / 'policy.toml'}: not valid TOML", bad.stdout
        )


class ProblemTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.configuration = Configuration(self)
        self.directory = self.configuration.directory

    def problems(self) -> list[str]:
        return self.configuration.check().problems

    def test_missing_file_named(self) -> None:
        """
        A file the config names that is not there is named, with why.
        """
        (self.directory / "policy.toml").unlink()
        self.assertEqual(
            self.problems(),
            [
                f"{self.directory / 'policy.toml'}: cannot read: "
                "No such file or directory"
            ],
        )

    def test_missing_config_file_named(self) -> None:
        """
        A config file that is not there is the one problem, and the files
        it would name are said to be unchecked.
        """
        findings = check(self.directory / "nowhere.toml", now())
        self.assertEqual(len(findings.problems), 1)
        self.assertIn("nowhere.toml: cannot read", findings.problems[0])
        self.assertEqual(
            findings.unchecked,
            [f"{self.directory / 'nowhere.toml'}: the files it names"],
        )

    def test_bad_toml_named(self) -> None:
        """
        A config file that is not TOML is named with the parser's words.
        """
        self.configuration.write("secmsg.toml", b"cert = \n")
        [problem] = self.problems()
        self.assertTrue(
            problem.startswith(f"{self.configuration.config}: not valid TOML"), problem
        )

    def test_unknown_setting_named_and_other_files_still_checked(self) -> None:
        """
        An unknown key in the config file is named, and the files the
        config names are checked all the same.
        """
        self.configuration.write("secmsg.toml", CONFIG + b"colour = 1\n")
        self.configuration.write(
            "policy.toml", b"[roles.x]\ncommands = []\nbogus = 1\n"
        )
        problems = self.problems()
        self.assertEqual(len(problems), 2, problems)
        self.assertTrue(
            problems[0].startswith(
                f"{self.configuration.config}: unknown setting colour"
            )
        )
        self.assertTrue(
            problems[1].startswith(
                f"{self.directory / 'policy.toml'}: [roles.x] has unknown key bogus"
            )
        )

    def test_policy_with_unknown_command_named(self) -> None:
        """
        A policy granting a command that does not exist is named.
        """
        self.configuration.write("policy.toml", b'[roles.x]\ncommands = ["FLY"]\n')
        [problem] = self.problems()
        self.assertTrue(
            problem.startswith(
                f"{self.directory / 'policy.toml'}: [roles.x] grants unknown command "
                "FLY"
            ),
            problem,
        )

    def test_key_not_matching_certificate_named(self) -> None:
        """
        A server key that is not the certificate's is named by the key.
        """
        self.configuration.write("server.key", self.configuration.ca.issue("x").key_pem)
        self.assertEqual(
            self.problems(),
            [
                f"{self.directory / 'server.key'}: key does not match the "
                f"certificate in {self.directory / 'server.pem'}"
            ],
        )

    def test_crl_not_signed_by_the_ca_named(self) -> None:
        """
        A CRL that no CA of the bundle signed is named by the CRL file.
        """
        impostor = CertificateAuthority(self.configuration.ca.name)
        self.configuration.write("crl.pem", impostor.crl_pem(timedelta(days=90)))
        [problem] = self.problems()
        self.assertTrue(
            problem.startswith(
                f"{self.directory / 'crl.pem'}: CRL of CN=secmsg test CA"
            )
        )
        self.assertIn("is not signed by a CA in the CA bundle", problem)

    def test_crl_not_checked_without_its_ca_bundle(self) -> None:
        """
        With the CA bundle unreadable, the CRL is said to be unchecked
        rather than refused for a fault of the bundle's.
        """
        self.configuration.write("ca.pem", b"not a certificate\n")
        findings = self.configuration.check()
        self.assertEqual(
            findings.problems,
            [f"{self.directory / 'ca.pem'}: no PEM CA certificate in it"],
        )
        self.assertEqual(
            findings.unchecked,
            [
                f"{self.directory / 'crl.pem'}: the CA bundle it is checked "
                "against failed"
            ],
        )

    def test_expired_server_certificate_is_a_problem(self) -> None:
        """
        The daemon refuses to start with an expired server certificate, so
        the check counts it as a problem.
        """
        expired = self.configuration.ca.issue(
            "localhost",
            usages=SERVER_AUTH,
            valid_from=timedelta(days=-20),
            valid_for=timedelta(days=10),
        )
        self.configuration.write("server.pem", expired.certificate_pem)
        self.configuration.write("server.key", expired.key_pem)
        [problem] = self.problems()
        self.assertTrue(
            problem.startswith(
                f"{self.directory / 'server.pem'}: server certificate expired on"
            )
        )

    def test_unwritable_data_dir_named(self) -> None:
        """
        A data directory that is a file is named; nothing is created.
        """
        self.configuration.write("data", b"")
        self.assertEqual(
            self.problems(), [f"{self.directory / 'data'}: not a directory"]
        )

    def test_two_problems_in_two_files_reported_in_one_run(self) -> None:
        """
        A wrong key and a broken policy are both reported, with status 1.
        """
        self.configuration.write("server.key", self.configuration.ca.issue("x").key_pem)
        self.configuration.write("policy.toml", b'default_roles = ["nobody"]\n')
        status, out, _ = run_command("check-config", str(self.configuration.config))
        self.assertEqual(status, 1)
        problems = [line for line in out.splitlines() if line.startswith("problem:")]
        self.assertEqual(
            problems,
            [
                f"problem: {self.directory / 'server.key'}: key does not match the "
                f"certificate in {self.directory / 'server.pem'}",
                f"problem: {self.directory / 'policy.toml'}: default_roles names "
                "unknown role nobody",
            ],
        )
        self.assertTrue(out.splitlines()[-1].startswith("2 problems, 0 warnings"))

    def test_file_contents_escaped(self) -> None:
        """
        A control character from a file reaches the terminal escaped.
        """
        self.configuration.write(
            "policy.toml", b'[roles."evil\\u001b[2J"]\ncommands = ["FLY"]\n'
        )
        _, out, _ = run_command("check-config", str(self.configuration.config))
        self.assertNotIn("\x1b", out)
        self.assertIn("evil\\x1b[2J", out)


class WarningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.configuration = Configuration(self)
        self.directory = self.configuration.directory

    def warnings(self) -> list[str]:
        findings = self.configuration.check()
        self.assertEqual(findings.problems, [])
        return findings.warnings

    def test_server_certificate_expiring_in_ten_days(self) -> None:
        """
        A server certificate that expires within 30 days is a warning.
        """
        server = self.configuration.ca.issue(
            "localhost", usages=SERVER_AUTH, valid_for=timedelta(days=11)
        )
        self.configuration.write("server.pem", server.certificate_pem)
        self.configuration.write("server.key", server.key_pem)
        [warning] = self.warnings()
        self.assertTrue(
            warning.startswith(
                f"{self.directory / 'server.pem'}: the server certificate expires on"
            )
        )
        self.assertTrue(warning.endswith(", in 10 days"), warning)

    def test_expired_ca_in_the_bundle(self) -> None:
        """
        An expired CA in the bundle is a warning: its certificates are all
        refused, but the daemon starts.
        """
        expired = CertificateAuthority("old CA", lifetime=timedelta(days=300))
        self.configuration.write("ca.pem", self.configuration.ca.pem + expired.pem)
        warnings = self.warnings()
        self.assertEqual(len(warnings), 2, warnings)
        self.assertTrue(
            warnings[0].startswith(
                f"{self.directory / 'ca.pem'}: the CA CN=old CA expired on"
            )
        )
        self.assertIn("no CRL of the CA CN=old CA", warnings[1])

    def test_crl_just_signed_is_not_a_warning(self) -> None:
        """
        A CRL signed for the usual 30 days is fine: a warning for it would
        greet every operator who has just run secmsg pki crl.
        """
        self.configuration.write(
            "crl.pem", self.configuration.ca.crl_pem(next_update=timedelta(days=30))
        )
        self.assertEqual(self.warnings(), [])

    def test_crl_next_update_within_a_week(self) -> None:
        """
        A CRL due within a week has missed its signing schedule: a warning
        naming its issuer and how to renew it.
        """
        self.configuration.write(
            "crl.pem", self.configuration.ca.crl_pem(next_update=timedelta(days=3))
        )
        [warning] = self.warnings()
        self.assertTrue(
            warning.startswith(
                f"{self.directory / 'crl.pem'}: the CRL of CN=secmsg test CA has its "
                "next update on"
            )
        )
        self.assertIn("in 3 days; sign it again before then (secmsg pki crl)", warning)

    def test_long_lived_crl_warns_in_the_last_quarter_of_its_life(self) -> None:
        """
        A CRL signed for a year (a root's, whose key is kept offline) is a
        warning with two months left, time to bring the root online; a
        week's warning would be too late for it.
        """
        self.configuration.write(
            "crl.pem", self.configuration.ca.crl_pem(next_update=timedelta(days=365))
        )
        findings = check(self.configuration.config, now() + timedelta(days=305))
        due = [w for w in findings.warnings if "has its next update on" in w]
        self.assertEqual(len(due), 1)
        self.assertIn("in 60 days; sign it again", due[0])

    def test_crl_past_its_next_update(self) -> None:
        """
        A stale CRL is a warning in the daemon's own words.
        """
        findings = check(self.configuration.config, now() + timedelta(days=100))
        self.assertEqual(findings.problems, [])
        self.assertIn("is past its next update", "".join(findings.warnings))

    def test_key_readable_by_others(self) -> None:
        """
        A server key that others may read, or its group write, is a
        warning, saying which.
        """
        key = self.directory / "server.key"
        for mode, reasons in (
            (0o644, "others can read it"),
            (0o660, "its group can write it"),
            (0o666, "others can read it, others can write it, its group can write it"),
        ):
            key.chmod(mode)
            self.assertEqual(
                self.warnings(),
                [
                    f"{key}: the private key is open too widely ({reasons}; "
                    f"mode {mode:04o}): chmod 640 {key} with the daemon's group "
                    "as its group, or 600 if the daemon runs as its owner"
                ],
            )

    def test_key_readable_by_its_group_only_is_as_systemd_wants(self) -> None:
        """
        Mode 0640, which the systemd unit asks for so that the daemon's
        user reads the key through its group at a reload, is no warning.
        """
        key = self.directory / "server.key"
        for mode in (0o600, 0o640, 0o400, 0o440):
            key.chmod(mode)
            self.assertEqual(self.warnings(), [], oct(mode))

    def test_unreachable_role(self) -> None:
        """
        A role no identity, rule or default_roles names, nor inherits, is a
        warning; one only inherited is not.
        """
        self.configuration.write(
            "policy.toml", POLICY.replace(b"[[rules]]", b"[roles.orphan]\n\n[[rules]]")
        )
        self.assertEqual(
            self.warnings(),
            [
                f"{self.directory / 'policy.toml'}: role orphan is given to nobody: "
                "no identity, rule or default_roles names it or a role that "
                "inherits it"
            ],
        )


class UsageTests(SynchronousTestCase):
    def test_no_file_is_a_usage_error(self) -> None:
        """
        Without a file, the command says what it needs and exits 2.
        """
        status, out, err = run_command("check-config")
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        self.assertIn("give the config file to check", err)

    def test_two_files_is_a_usage_error(self) -> None:
        """
        More than one file is a usage error too.
        """
        status, _, err = run_command("check-config", "a.toml", "b.toml")
        self.assertEqual(status, 2)
        self.assertIn("Usage: secmsg check-config FILE", err)

    def test_unknown_option_is_a_usage_error(self) -> None:
        """
        An option check-config does not have exits 2.
        """
        status, _, _ = run_command("check-config", "--fix", "a.toml")
        self.assertEqual(status, 2)
