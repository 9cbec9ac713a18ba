"""
A secmsg daemon in memory, spoken to over real TLS.

L{Instance} writes a test PKI and policy to a temporary directory, builds
the daemon with the same L{secmsg.tap.build_daemon} that C{twistd secmsg}
uses, and connects clients to it through Twisted's in-memory transports
(C{iosim}), so that every handshake is a real OpenSSL handshake without a
socket or the global reactor.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from secmsg.client.protocol import ClientProtocol
from secmsg.client.tls import client_tls_options
from secmsg.daemon.interfaces import IHub
from secmsg.daemon.settings import Settings
from secmsg.daemon.store.memory import MemoryStore
from secmsg.tap import Daemon, build_daemon
from tests.certs import CertificateAuthority, Pair, now

POLICY = """\
default_roles = ["guest"]

[roles.guest]
commands = ["HELP", "WHOAMI", "WHO", "PING", "QUIT", "ACK"]
# Tests stream commands; the rate's own tests set their own.
rate = 1000000

[roles.user]
inherits = ["guest"]
commands = ["MSG", "JOIN", "PART", "SAY", "ROOMS", "HISTORY"]

[roles.admin]
inherits = ["user"]
commands = ["KICK", "BROADCAST", "RELOAD", "METRICS", "BACKUP"]

[identities]
admin = ["admin"]
alice = ["user"]
bob = ["user"]
"""


class LineClient(Protocol):
    """
    A client that records the lines it receives and why it was closed.
    """

    def __init__(self, early: tuple[bytes, ...]) -> None:
        self.lines: list[str] = []
        self.lost: Failure | None = None
        self._early = early
        self._buffer = b""

    def connectionMade(self) -> None:
        for line in self._early:
            self.transport.write(line)

    def dataReceived(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        self.lines.extend(line.decode("utf-8") for line in lines)

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason

    def send(self, *lines: str) -> None:
        self.transport.write(b"".join(f"{line}\n".encode() for line in lines))

    @property
    def greeted(self) -> bool:
        """
        Whether the server accepted us: judged by its greeting, never by
        the client's own handshake, which under TLS 1.3 completes before the
        server has looked at our certificate.
        """
        return any(line.startswith("200 secmsg ") for line in self.lines)

    def take(self) -> list[str]:
        """
        The lines received since the last call.
        """
        lines, self.lines = self.lines, []
        return lines


PRESENCE_PUSHES = (b"JOINED ", b"PARTED ", b"ONLINE ", b"OFFLINE ")
"""How the presence pushes begin."""


TERMINAL_CONTROLS = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"
"""Any run of the terminal control sequences prompt_toolkit draws with: a
console test joins the letters of what it expects with it, since the
terminal may redraw between what was typed and what Tab added."""


def next_but_presence(lines: IO[bytes]) -> bytes:
    """
    The next line read from a session that is not a presence push: the
    development instance tells its users who comes and goes, which a test
    of something else reads past, as a client that ignores them does.
    """
    line = lines.readline()
    while line.startswith(PRESENCE_PUSHES):
        line = lines.readline()
    return line


def capture_log(testcase: SynchronousTestCase) -> list[str]:
    """
    Collect the text of every log event until the test ends.
    """
    texts: list[str] = []

    def observe(event: LogEvent) -> None:
        texts.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return texts


def temporary_directory(testcase: SynchronousTestCase) -> Path:
    """
    A fresh directory under the system's temporary directory, removed when
    the test ends (trial's C{mktemp} writes under the working directory when
    pytest runs the test).
    """
    path = Path(tempfile.mkdtemp(prefix="secmsg-test-"))
    testcase.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


class Instance:
    """
    A daemon built from files in a fresh directory, with its own test CA.
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        policy: str = POLICY,
        hub: IHub | None = None,
        **settings: Any,
    ) -> None:
        """
        @param hub: the daemon's hub, if not one in-process.
        @param settings: L{Settings} fields to set other than by default.
        """
        self.directory = temporary_directory(testcase)
        self.ca = CertificateAuthority()
        server = self.ca.server()
        self.write("server.pem", server.certificate_pem)
        self.write("server.key", server.key_pem)
        self.write("ca.pem", self.ca.pem)
        self.write("crl.pem", self.ca.crl_pem())
        self.write("policy.toml", policy.encode())
        self.clock = Clock()
        self.clock.advance(now().timestamp())
        self.store = MemoryStore()
        self._overrides = settings
        self.daemon: Daemon = build_daemon(self.settings(), self.clock, self.store, hub)
        self._pumps: list[IOPump] = []
        self._ports = iter(range(40000, 50000))

    def write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def settings(self) -> Settings:
        d = self.directory
        overrides = {"crl": d / "crl.pem", **self._overrides}
        return Settings(
            cert=d / "server.pem",
            key=d / "server.key",
            ca=d / "ca.pem",
            policy=d / "policy.toml",
            data_dir=d / "data",
            **overrides,
        )

    def connect(
        self,
        pair: Pair | None,
        tls_version: TLSVersion | None = None,
        early: tuple[bytes, ...] = (),
        complete: bool = True,
    ) -> LineClient:
        """
        Connect a client presenting C{pair} (or no certificate) and, unless
        C{complete} is false, run the handshake and greeting to completion.
        """
        if pair is None:
            extra = {}
            if tls_version is not None:
                extra = {
                    "raiseMinimumTo": tls_version,
                    "lowerMaximumSecurityTo": tls_version,
                }
            options = optionsForClientTLS(
                "localhost",
                trustRoot=Certificate.loadPEM(self.ca.pem),
                extraCertificateOptions=extra,
            )
        else:
            options = client_tls_options(
                "localhost",
                self.ca.pem,
                pair.certificate_pem,
                pair.key_pem,
                tls_version,
            )
        client = LineClient(early)
        self.connect_protocol(client, options)
        if complete:
            self.flush()
        return client

    def connect_client(self, clock: Clock, pair: Pair) -> ClientProtocol:
        """
        A session of secmsg's own client protocol as C{pair}'s identity,
        connected over TLS in memory, verifying the daemon as localhost.
        """
        session = ClientProtocol(clock, "localhost")
        options = client_tls_options(
            "localhost", self.ca.pem, pair.certificate_pem, pair.key_pem
        )
        self.connect_protocol(session, options)
        return session

    def connect_protocol(
        self,
        client: Protocol,
        options: IOpenSSLClientConnectionCreator,
        server: TLSMemoryBIOFactory | None = None,
    ) -> IOPump:
        """
        Connect any client protocol over TLS with the given options, to the
        daemon's line protocol or to C{server}; bytes move when L{flush} is
        called, or step by step through the pump returned.
        """
        server = server or self.daemon.factory
        client_factory = TLSMemoryBIOFactory(
            options, True, Factory.forProtocol(lambda: client), self.clock
        )
        peer = IPv4Address("TCP", "127.0.0.1", next(self._ports))
        host = IPv4Address("TCP", "127.0.0.1", 7443)
        _, _, pump = connectedServerAndClient(
            lambda: server.buildProtocol(peer),
            lambda: client_factory.buildProtocol(host),
            serverTransportFactory=lambda p: FakeTransport(p, True, host, peer),
            clientTransportFactory=lambda p: FakeTransport(p, False, peer, host),
            greet=False,
            clock=self.clock,
        )
        self._pumps.append(pump)
        return pump

    def flush(self) -> None:
        """
        Move bytes between every client and the daemon until none move.
        """
        while any([pump.flush() for pump in self._pumps]):
            pass
