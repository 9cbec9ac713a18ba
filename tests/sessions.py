"""
Sessions of the secmsg protocol on in-memory string transports.

Faster than a TLS handshake, for driving the protocol's framing, dispatch
and routing with many inputs.  The transport hands the protocol a verified
chain the way the TLS layer does after a handshake.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography import x509
from OpenSSL import SSL
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from secmsg.daemon.auth import CertificateChecker, PolicyRealm
from secmsg.daemon.hub import InProcessHub
from secmsg.daemon.identity import IdentityRule
from secmsg.daemon.interfaces import IHub, IMessageStore
from secmsg.daemon.limits import Limits
from secmsg.daemon.line import LineParts, build_line_sessions
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.policy import parse_policy
from secmsg.daemon.protocol import SessionProtocol
from secmsg.daemon.reload import ReloadReport
from secmsg.daemon.rooms import Rooms
from secmsg.daemon.settings import LineSettings
from secmsg.daemon.store.memory import MemoryStore
from secmsg.messages import WaitingLimit
from tests.certs import CertificateAuthority
from tests.harness import POLICY

MOMENT = datetime(2026, 6, 1, 9, 30, 5, tzinfo=UTC)
"""The clock's time in these sessions: messages sent now carry it."""

STAMP = "2026-06-01T09:30:05Z"
"""L{MOMENT} as the protocol writes it."""


class VerifiedTransport(StringTransport):
    """
    A string transport from a peer's address, standing in for the TLS
    transport whose verify callback accepted the peer's chain.
    """

    def __init__(self, port: int) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.verify_callback: object = "the verifier"

    def getHandle(self) -> VerifiedTransport:
        return self

    def get_verify_mode(self) -> int:
        return SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT

    def set_verify(self, mode: int, callback: object) -> None:
        self.verify_callback = callback


class UnchangedTrust:
    """
    Stands in for a L{secmsg.daemon.tls.TrustVerdict} whose trust has not
    changed since the chain was accepted: it refuses nothing.
    """

    def again(self, chain: list[x509.Certificate]) -> None:
        return None


class Session:
    """
    One connected session and what it has been sent.
    """

    def __init__(self, protocol: SessionProtocol, transport: VerifiedTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes | str) -> list[str]:
        """
        Send raw bytes (or a line of text, LF added) and return the lines
        received since the last call.
        """
        if isinstance(data, str):
            data = f"{data}\n".encode()
        self.protocol.dataReceived(data)
        return self.take()

    def take(self) -> list[str]:
        output = self.transport.value()
        self.transport.clear()
        return output.decode("utf-8").splitlines()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


class Network:
    """
    One hub and policy, and as many sessions on it as a test opens.
    """

    def __init__(
        self,
        policy: str = POLICY,
        reload: Callable[[bool], ReloadReport] | None = None,
        checker: ICredentialsChecker | None = None,
        store: IMessageStore | None = None,
        limits: Limits | None = None,
        waiting_limit: WaitingLimit | None = None,
        hub: IHub | None = None,
    ) -> None:
        limits = limits or Limits()
        self.ca = CertificateAuthority()
        self.hub = hub or InProcessHub()
        self.store = store or MemoryStore()
        self.rooms = Rooms(self.hub, self.store, limits.rooms)
        self.realm = realm = PolicyRealm(
            parse_policy(tomllib.loads(policy), "test"), self.hub
        )
        portal = Portal(realm, [checker or CertificateChecker(IdentityRule())])
        self.clock = Clock()
        self.clock.advance(MOMENT.timestamp())
        self.metrics = Metrics()
        line = build_line_sessions(
            LineSettings(limits, waiting_limit or WaitingLimit()),
            LineParts(
                self.hub,
                self.store,
                self.rooms,
                realm,
                portal,
                self.clock,
                self.metrics,
            ),
            reload or (lambda dry: ReloadReport(dry)),
        )
        self.factory = line.sessions
        self._ports = iter(range(50000, 60000))

    def connect(
        self,
        identity: str,
        early: bytes = b"",
        certificate: x509.Certificate | None = None,
    ) -> Session:
        """
        Open a session for C{identity} (or with C{certificate}), past its
        greeting; C{early} is sent before the handshake completes.
        """
        certificate = certificate or self.ca.issue(identity).certificate
        transport = VerifiedTransport(next(self._ports))
        protocol = self.factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        # What the verify callback tells the session as the handshake ends.
        protocol.certificate_accepted([certificate], UnchangedTrust())
        if early:
            protocol.dataReceived(early)
        protocol.handshakeCompleted()
        return Session(protocol, transport)
