"""
The daemon's log as JSON (log-format json): one event a line with its
named fields, where twistd would write the text log, never a message's
text or key material.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess

from twisted.application.service import Application, IService, MultiService, Service
from twisted.logger import ILogObserver, Logger, eventFromJSON, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from secmsg.daemon.logs import JSONLogRoot, LogDestination
from secmsg.daemon.settings import load_settings
from secmsg.errors import ConfigurationError
from tests.harness import temporary_directory
from tests.test_daemon import BIN, STARTUP_DEADLINE, Daemon, init_instance, twistd
from tests.test_settings import CONFIG, no_flags

BODY = "the crown jewels are under the floorboards"
"""A message text the log must never hold."""


class JSONDaemon(Daemon):
    """
    A daemon logging JSON, whose lines are read as the events they hold.
    """

    def shown(self, line: str) -> str:
        return formatEvent(eventFromJSON(line))


class JSONLogDaemonTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            raise SkipTest("openssl is not installed")
        self.directory = init_instance(self)
        self.daemon = JSONDaemon(self, self.directory, "--log-format", "json")

    def test_every_line_is_an_event_with_its_fields_and_no_secrets(self) -> None:
        """
        Under --log-format json every line of twistd's standard output is
        one JSON event; alice's login is there with its named fields, a
        handshake without a certificate with its reason, and neither her
        message nor any private key is anywhere in the log.
        """
        with self.daemon.client("alice") as alice, alice.makefile("rb") as lines:
            self.assertIn(b"you are alice", lines.readline())
            alice.sendall(f"MSG bob {BODY}\nQUIT\n".encode())
            self.assertEqual(lines.readline(), b"250 1\n")
            self.assertEqual(lines.readline(), b"221 bye\n")
        self.assertNotIn("secmsg", self.daemon.s_client(stdin="PING\n"))
        self.daemon.wait_for("refused handshake")
        self.daemon.stop()
        for line in self.daemon.log:
            # Plain JSON too, for tools that know nothing of Twisted.
            self.assertIsInstance(json.loads(line), dict)
        events = [eventFromJSON(line) for line in self.daemon.log]
        (login,) = [e for e in events if e.get("audit_event") == "login"]
        self.assertEqual((login["identity"], login["roles"]), ("alice", "user"))
        self.assertRegex(login["peer"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual(login["log_namespace"], "secmsg.audit")
        self.assertTrue(formatEvent(login).startswith("login alice (roles: user)"))
        (refused,) = [e for e in events if e.get("audit_event") == "handshake_refused"]
        self.assertIn("no certificate", refused["reason"])
        self.assertEqual(refused["subject"], "(none)")
        log = "\n".join(self.daemon.log)
        self.assertNotIn(BODY, log)
        self.assertNotIn("PRIVATE KEY", log)
        for key in self.directory.rglob("*.key"):
            data = key.read_bytes()
            if data.startswith(b"-----BEGIN"):
                for line in data.decode("ascii").splitlines()[1:-1]:
                    self.assertNotIn(line, log, key)
            else:
                # The audit trail's key: raw bytes, never shown in any form.
                self.assertNotIn(data.hex(), log, key)


class JSONLogStartupTests(SynchronousTestCase):
    """
    A log format twistd's log cannot take stops the daemon before it
    listens, in one line naming the file or the flag at fault.
    """

    def setUp(self) -> None:
        self.directory = init_instance(self)

    def refusal(self, command: list[str]) -> str:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE,
            check=False,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("listening", output)
        (line,) = [line for line in output.splitlines() if "cannot start" in line]
        return line

    def test_unknown_log_format_in_config_refused(self) -> None:
        """
        log-format = "xml" is refused naming the file and the key.
        """
        config = self.directory / "secmsg.toml"
        config.write_text(config.read_text() + 'log-format = "xml"\n')
        self.assertIn(
            f"{config}: log-format: 'xml' is not one of text, json",
            self.refusal(twistd(self.directory, "--port", "0")),
        )

    def test_json_log_and_syslog_refused(self) -> None:
        """
        twistd's --syslog with log-format json is refused rather than one
        of them silently ignored.
        """
        command = [
            str(BIN / "twistd"),
            "--nodaemon",
            "--syslog",
            "--pidfile=",
            "secmsg",
            "--config",
            str(self.directory / "secmsg.toml"),
            "--port",
            "0",
            "--log-format",
            "json",
        ]
        self.assertIn(
            "--syslog: log-format json is written to twistd's log file",
            self.refusal(command),
        )


class LogFormatSettingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = temporary_directory(self) / "secmsg.toml"

    def test_log_format_from_file_or_flag_text_by_default(self) -> None:
        """
        The log is text unless the file or --log-format says json; the
        flag wins over the file.
        """
        self.config.write_text(CONFIG)
        self.assertEqual(load_settings(no_flags(), str(self.config)).log_format, "text")
        self.config.write_text(CONFIG + 'log-format = "json"\n')
        self.assertEqual(load_settings(no_flags(), str(self.config)).log_format, "json")
        flags = no_flags(log_format="text")
        self.assertEqual(load_settings(flags, str(self.config)).log_format, "text")

    def test_unknown_log_format_names_the_key(self) -> None:
        """
        A format that is neither text nor json is refused with its origin.
        """
        self.config.write_text(CONFIG + 'log-format = "xml"\n')
        with self.assertRaises(ConfigurationError) as caught:
            load_settings(no_flags(), str(self.config))
        self.assertEqual(caught.exception.source, f"{self.config}: log-format")
        with self.assertRaises(ConfigurationError) as caught:
            load_settings(no_flags(log_format="yaml"), str(self.config))
        self.assertEqual(caught.exception.source, "--log-format")


class LogDestinationTests(SynchronousTestCase):
    def test_destination_follows_twistds_rule(self) -> None:
        """
        The JSON log goes where twistd puts the text log: standard output
        under -n without --logfile (or with --logfile -), else the file
        named, else twistd.log.
        """
        cases = [
            ((None, True), None),
            (("-", True), None),
            (("secmsg.log", True), "secmsg.log"),
            (("secmsg.log", False), "secmsg.log"),
            ((None, False), "twistd.log"),
        ]
        for (logfile, nodaemon), expected in cases:
            destination = LogDestination.of_twistd(logfile, nodaemon, False)
            self.assertEqual(destination.logfile, expected, (logfile, nodaemon))

    def test_destinations_json_cannot_take_refused(self) -> None:
        """
        Syslog, and standard output for a process that daemonizes, are
        refused naming twistd's flag.
        """
        with self.assertRaises(ConfigurationError) as caught:
            LogDestination.of_twistd(None, True, True)
        self.assertEqual(caught.exception.source, "--syslog")
        with self.assertRaises(ConfigurationError) as caught:
            LogDestination.of_twistd("-", False, False)
        self.assertEqual(caught.exception.source, "--logfile")

    def test_standard_output_gets_an_event_a_line(self) -> None:
        """
        Each event is one line of JSON, without a record separator, that
        reads back as the event with its fields.
        """
        stdout = io.StringIO()
        log = Logger(observer=LogDestination(None).open(stdout))
        log.info("login {identity} from {peer}", identity="carol", peer="::1")
        log.info("second")
        first, second = stdout.getvalue().splitlines()
        event = eventFromJSON(first)
        self.assertEqual((event["identity"], event["peer"]), ("carol", "::1"))
        self.assertEqual(formatEvent(event), "login carol from ::1")
        self.assertEqual(json.loads(second)["log_format"], "second")

    def test_log_file_is_written_and_handles_sigusr1(self) -> None:
        """
        A log file is written as twistd writes its own, and SIGUSR1 gets a
        handler (which rotates it) as twistd gives it for the text log.
        """
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        path = temporary_directory(self) / "secmsg.log"
        stream = LogDestination(str(path)).stream(io.StringIO())
        self.addCleanup(stream.close)
        stream.write("{}\n")
        stream.flush()
        self.assertEqual(path.read_text(), "{}\n")
        self.assertTrue(callable(signal.getsignal(signal.SIGUSR1)))


class JSONLogRootTests(SynchronousTestCase):
    def test_application_gets_the_observer(self) -> None:
        """
        Added to twistd's application, the root makes the JSON observer
        the application's log observer, which twistd's logging picks; the
        daemon's service runs under it.
        """
        application = Application("secmsg")
        observer = LogDestination(None).open(io.StringIO())
        daemon = Service()
        root = JSONLogRoot(daemon, observer)
        root.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)
        self.assertIn(root, list(IService(application)))
        self.assertIn(daemon, list(root))

    def test_other_parents_are_joined_as_usual(self) -> None:
        """
        A parent that is not an application (a test's) is joined as any
        service would be.
        """
        parent = MultiService()
        root = JSONLogRoot(Service(), LogDestination(None).open(io.StringIO()))
        root.setServiceParent(parent)
        self.assertIn(root, list(parent))
