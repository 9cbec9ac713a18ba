"""
The floor under secmsg's handshakes: Twisted and pyOpenSSL alone, with no
secmsg code. It requires a client certificate, verifies it against the CA
and its CRL in OpenSSL (no Python verify callback), and writes a greeting
line once the handshake is done, as secmsg does, then reads and drops
whatever comes.

    python -m bench.floor CA CRL CERTIFICATE KEY PORT

What secmsg spends per session beyond this server is its own work: the
verify callback, the identity and its roles, the audit record, the log
line, the login's store query and the session's bookkeeping.
"""

from __future__ import annotations

import sys

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import protocol, reactor
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer


@implementer(IHandshakeListener)
class Greeter(protocol.Protocol):
    def handshakeCompleted(self) -> None:
        self.transport.write(b"200 ready\n")

    def dataReceived(self, data: bytes) -> None:
        """
        Nothing to answer: the benchmark's clients only wait for the greeting.
        """


@implementer(IOpenSSLServerConnectionCreator)
class Connections:
    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def serverConnectionForTLS(self, tls_protocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


def context(ca: str, crl: str, certificate: str, key: str) -> SSL.Context:
    """
    TLS 1.2 or 1.3, a client certificate required and checked against the
    CA and its CRL, no session resumption: secmsg's terms.
    """
    made = SSL.Context(SSL.TLS_METHOD)
    made.set_min_proto_version(SSL.TLS1_2_VERSION)
    made.use_certificate_chain_file(certificate)
    made.use_privatekey_file(key)
    made.load_verify_locations(ca)
    with open(crl, "rb") as crl_file:
        made.get_cert_store().add_crl(x509.load_pem_x509_crl(crl_file.read()))
    made.get_cert_store().set_flags(crypto.X509StoreFlags.CRL_CHECK)
    made.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, None)
    made.set_options(SSL.OP_NO_TICKET)
    made.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return made


def main() -> None:
    ca, crl, certificate, key, port = sys.argv[1:6]
    factory = TLSMemoryBIOFactory(
        Connections(context(ca, crl, certificate, key)),
        False,
        protocol.Factory.forProtocol(Greeter),
    )
    reactor.listenTCP(int(port), factory, backlog=511, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
