"""
What the client says when things go wrong, and its exit status: a server's
refusal in send and in the scripted mode, a line it will not send itself,
a server that is not a secmsg daemon's messaging port (the admin port, a
plain HTTP port), a server of another instance, a missing argument, and
help texts that read the right way round.
"""

from __future__ import annotations

import os
import re
import subprocess

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from secmsg.client.protocol import (
    PROBE_WAIT,
    QUIET_AFTER_HANDSHAKE,
    ClientProtocol,
    ExitStatus,
    SessionEnded,
)
from secmsg.client.tls import client_tls_options
from tests.harness import Instance
from tests.test_client_daemon import secmsg
from tests.test_daemon import BIN, STARTUP_DEADLINE, Daemon, init_instance


class _Answering(Protocol):
    """
    A server that says nothing until asked, then answers C{answer} (an
    HTTPS server's part), or never answers if C{answer} is empty.
    """

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.heard = b""

    def dataReceived(self, data: bytes) -> None:
        self.heard += data
        if self.answer:
            self.transport.write(self.answer)


class NotTheMessagingPortTests(SynchronousTestCase):
    """
    Over real TLS in memory, on the test clock: a server that completes
    the handshake and then waits to be asked is told apart in seconds.
    """

    def setUp(self) -> None:
        self.instance = Instance(self)
        self.alice = self.instance.ca.issue("alice")

    def session(self, server: Protocol, tls: bool = True) -> ClientProtocol:
        session = ClientProtocol(self.instance.clock, "localhost", 30)
        options = client_tls_options(
            "localhost",
            self.instance.ca.pem,
            self.alice.certificate_pem,
            self.alice.key_pem,
        )
        factory = Factory.forProtocol(lambda: server)
        if tls:
            pair = self.instance.ca.server()
            certificate = PrivateCertificate.loadPEM(
                pair.certificate_pem + pair.key_pem
            )
            factory = TLSMemoryBIOFactory(
                certificate.options(), False, factory, self.instance.clock
            )
        self.instance.connect_protocol(session, options, factory)
        self.instance.flush()
        return session

    def ending(self, session: ClientProtocol) -> SessionEnded:
        self.instance.flush()
        return self.failureResultOf(session.greeted, SessionEnded).value

    def test_https_server_is_asked_and_named(self) -> None:
        """
        A server silent for a few seconds after the handshake is asked as
        HTTP asks; an HTTP answer is named as the admin port's, long
        before the greeting's timeout.
        """
        server = _Answering(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        session = self.session(server)
        self.assertNoResult(session.greeted)
        self.instance.clock.advance(QUIET_AFTER_HANDSHAKE)
        ending = self.ending(session)
        self.assertTrue(server.heard.startswith(b"HEAD / HTTP/1.0\r\n"))
        self.assertEqual(ending.status, ExitStatus.CONNECTION)
        self.assertIn("an HTTPS server answered: is this the admin port?", ending.words)
        self.assertIn("The messaging port is another (7443", ending.words)

    def test_server_silent_even_when_asked(self) -> None:
        """
        A server that answers nothing at all is given up on a moment after
        the question, in words that say a daemon greets at once.
        """
        session = self.session(_Answering(b""))
        self.instance.clock.advance(QUIET_AFTER_HANDSHAKE)
        self.instance.flush()
        self.assertNoResult(session.greeted)
        self.instance.clock.advance(PROBE_WAIT)
        ending = self.ending(session)
        self.assertEqual(ending.status, ExitStatus.CONNECTION)
        self.assertIn("completed the TLS handshake but sends nothing", ending.words)

    def test_plain_service_is_said_not_to_speak_tls(self) -> None:
        """
        A plain HTTP service answering the TLS hello is named as not
        speaking TLS, not with OpenSSL's record-layer words.
        """
        server = _Answering(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        ending = self.ending(self.session(server, tls=False))
        self.assertEqual(ending.status, ExitStatus.CONNECTION)
        self.assertIn("the server does not speak TLS", ending.words)
        self.assertNotIn("wrong version number", ending.words)


class RefusalsAgainstDaemonTests(SynchronousTestCase):
    """
    Refusals and exit statuses of the secmsg command against a daemon.
    """

    def setUp(self) -> None:
        self.directory = init_instance(self)
        self.daemon = Daemon(self, self.directory, "--admin-port", "0")
        line = self.daemon.wait_for("admin interface listening on https://")
        self.admin_port = int(line.rsplit(":", 1)[1].rstrip("/"))
        self.address = f"localhost:{self.daemon.port}"
        self.alice = ["--instance", str(self.directory), "--as", "alice"]

    def test_scripted_refusals_on_standard_error_with_a_status(self) -> None:
        """
        A line the server refuses is said on standard error as secmsg:
        with its line number and verb, not its text; the transcript on
        standard output is whole; the first line that went wrong gives the
        exit status, a line not sent included.
        """
        result = secmsg(
            "connect",
            self.address,
            *self.alice,
            stdin="MSG nobody secret\nPING\nMSG bob \x01\n",
        )
        self.assertEqual(result.returncode, ExitStatus.NO_SUCH_RECIPIENT)
        self.assertEqual(
            result.stderr.splitlines(),
            [
                "secmsg: line 3 not sent: control characters are not allowed",
                "secmsg: line 1: the server refused MSG: 404 no such identity nobody",
            ],
        )
        self.assertEqual(
            result.stdout.splitlines()[1:], ["404 no such identity nobody", "200 PONG"]
        )
        not_sent = secmsg("connect", self.address, *self.alice, stdin="PING\n\x7f\n")
        self.assertEqual(not_sent.returncode, ExitStatus.NOT_SENT)

    def test_send_refusal_says_secmsg_on_standard_error(self) -> None:
        """
        send's refusal is one secmsg: line on standard error, naming what
        was refused, and nothing on standard output.
        """
        result = secmsg("send", self.address, *self.alice, "--to", "nobody", "hi")
        self.assertEqual(result.returncode, ExitStatus.NO_SUCH_RECIPIENT)
        self.assertEqual(
            result.stderr,
            "secmsg: the server refused MSG: 404 no such identity nobody\n",
        )
        self.assertEqual(result.stdout, "")

    def test_admin_port_named_as_such(self) -> None:
        """
        Dialling the admin port (HTTPS on the same certificates) says so,
        and exits 3, well within the greeting's timeout.
        """
        result = secmsg(
            "send", f"localhost:{self.admin_port}", *self.alice, "--to", "bob", "x"
        )
        self.assertEqual(result.returncode, ExitStatus.CONNECTION, result.stderr)
        self.assertIn(
            "an HTTPS server answered: is this the admin port?", result.stderr
        )

    def test_admin_port_answer_is_not_shown_raw(self) -> None:
        """
        The scripted mode, which shows every line a server sends, shows
        none of the HTTP reply that told it this is the admin port.
        """
        result = secmsg(
            "connect", f"localhost:{self.admin_port}", *self.alice, stdin="PING\n"
        )
        self.assertEqual(result.returncode, ExitStatus.CONNECTION, result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertIn(
            "an HTTPS server answered: is this the admin port?", result.stderr
        )

    def test_server_of_another_instance_under_instance(self) -> None:
        """
        Under --instance, a server the instance's CA did not sign is said
        to be another instance's, without advice to give --ca.
        """
        other = init_instance(self)
        result = secmsg(
            "connect", self.address, "--instance", str(other), "--as", "alice"
        )
        self.assertEqual(result.returncode, ExitStatus.CONNECTION)
        self.assertIn(
            f"the instance's CA ({other}/ca.pem) did not sign the server's "
            "certificate: is it a server of a different instance?",
            result.stderr,
        )
        self.assertNotIn("--ca", result.stderr)


class CommandLineWordsTests(SynchronousTestCase):
    def test_missing_host_names_the_argument_and_the_usage(self) -> None:
        """
        connect without a host says which argument is missing, after the
        usage line, and exits 2.
        """
        result = secmsg("connect", "--instance", "dev", "--as", "alice")
        self.assertEqual(result.returncode, ExitStatus.USAGE)
        usage_line, refusal = result.stderr.splitlines()
        self.assertTrue(usage_line.startswith("Usage: secmsg connect HOST[:PORT]"))
        self.assertTrue(refusal.startswith("secmsg: missing HOST[:PORT], the server"))

    def test_option_descriptions_stand_alone(self) -> None:
        """
        No option's description continues another's (options are listed
        alphabetically), none of connect's speaks of send, and every
        continued description stays in its column.
        """
        for command in ("connect", "send", "backup", "profile add"):
            text = secmsg(*command.split(), "--help").stdout
            descriptions = re.findall(r"^ {6}--\S+ +(.*)$", text, re.MULTILINE)
            self.assertTrue(descriptions, text)
            for description in descriptions:
                self.assertFalse(description.startswith("..."), description)
            if command == "connect":
                self.assertNotIn("(send)", text)
            columns = {
                len(line) - len(line.lstrip(" "))
                for line in text.splitlines()
                if line.startswith("  ") and not line.lstrip().startswith("--")
            }
            self.assertLessEqual(len(columns), 1, text)

    def test_help_to_a_reader_that_has_gone_is_quiet(self) -> None:
        """
        secmsg connect --help | head, with head gone before the help is
        written, ends with status 0 and no traceback.
        """
        reading, writing = os.pipe()
        os.close(reading)
        try:
            result = subprocess.run(
                [str(BIN / "secmsg"), "connect", "--help"],
                stdout=writing,
                stderr=subprocess.PIPE,
                text=True,
                timeout=STARTUP_DEADLINE,
                check=False,
            )
        finally:
            os.close(writing)
        self.assertEqual((result.returncode, result.stderr), (0, ""))

    def test_help_under_python_m_shows_no_docstring(self) -> None:
        """
        python -m secmsg's help is the options alone, not the docstring of
        secmsg/__main__.py in epytext markup.
        """
        result = subprocess.run(
            [str(BIN / "python"), "-m", "secmsg", "connect", "--help"],
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(
            result.stdout.rstrip().endswith(
                "--version       Print secmsg's version and exit."
            )
        )
        self.assertNotIn("C{", result.stdout)

    def test_commands_described_in_the_options_column(self) -> None:
        """
        secmsg's and secmsg pki's help describe their commands in the
        column their options are described in, not one of their own.
        """
        for command in ([], ["pki"], ["profile"]):
            text = secmsg(*command, "--help").stdout
            starts = {
                len(match.group())
                for match in re.finditer(r"^ +-?-?[\w-]+=? +(?=\S)", text, re.MULTILINE)
            }
            self.assertEqual(len(starts), 1, text)
