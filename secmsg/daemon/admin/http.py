"""
The admin interface's HTTP plumbing: connections, requests and answers,
knowing nothing of identities or endpoints.

Each connection carries one request and is closed after its answer, so
that every request is judged by a handshake against the trust in force
(a reload that revokes a certificate leaves it no open connection to go
on with), and a client cannot queue answers it never reads.  Connections
are capped, in all and per address, and cut after L{CONNECTION_DEADLINE}.
Bodies are bounded by L{MAX_BODY}, and every answer leaves through
L{send_json} or L{send_bytes}, every error in the one shape of
L{send_error}.
"""

from __future__ import annotations

import io
import json
from http import HTTPStatus
from typing import Any

from cryptography import x509
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import LogLevel
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from zope.interface import implementer

from secmsg.daemon.audit import (
    RecordBudget,
    RefusalRecords,
    audit,
    record_handshake_refused,
)
from secmsg.daemon.interfaces import IHandshakeObserver
from secmsg.daemon.limits import Admissions, Limits, address_group, describe_address
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.tls import TrustVerdict, refusal_for_handshake_failure
from secmsg.errors import CertificateRefused
from secmsg.transport import IConnection

MAX_BODY = 64 * 1024
"""Bytes a request body may hold; the rest is not kept, and the request
gets 413."""

CONNECTION_DEADLINE = 30.0
"""Seconds an admin connection may last, handshake, request and answer
together; a client that dribbles bytes to hold it open is cut then."""

_ERROR_WORDS = {
    HTTPStatus.BAD_REQUEST: "bad request",
    HTTPStatus.UNAUTHORIZED: "unauthorized",
    HTTPStatus.FORBIDDEN: "forbidden",
    HTTPStatus.NOT_FOUND: "not found",
    HTTPStatus.METHOD_NOT_ALLOWED: "method not allowed",
    HTTPStatus.CONFLICT: "conflict",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "content too large",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "unsupported media type",
    HTTPStatus.TOO_MANY_REQUESTS: "too many requests",
    HTTPStatus.INTERNAL_SERVER_ERROR: "internal server error",
    HTTPStatus.SERVICE_UNAVAILABLE: "service unavailable",
    HTTPStatus.INSUFFICIENT_STORAGE: "insufficient storage",
}
"""The C{error} word of each status, fixed here rather than taken from
Python's phrases, which change between versions."""


class BoundedRequest(server.Request):
    """
    A request that keeps at most L{MAX_BODY} bytes of its body, and says
    whether it was sent more, and whether its client has gone.
    """

    channel: AdminChannel
    content: io.BytesIO
    too_large = False
    gone = False

    def gotLength(self, length: int | None) -> None:
        """
        Keep the body in memory, never in a temporary file: at most
        L{MAX_BODY} of it is kept, and a body declared longer is refused
        as soon as it is read.
        """
        self.content = io.BytesIO()
        if length is not None and length > MAX_BODY:
            self.too_large = True

    def connectionLost(self, reason: Failure) -> None:
        self.gone = True
        super().connectionLost(reason)

    def handleContentChunk(self, data: bytes) -> None:
        if self.content.tell() + len(data) > MAX_BODY:
            self.too_large = True
            return
        super().handleContentChunk(data)


@implementer(IHandshakeObserver, IHandshakeListener)
class AdminChannel(http.HTTPChannel):
    """
    An HTTP/1.1 connection of the admin interface, which learns from the
    TLS layer why a certificate was refused, so that a refused handshake
    is recorded as on the line port, and how to judge an accepted chain
    again, should a reload change the trust before its request is answered.

    @ivar chain: the chain the verify callback accepted, leaf first; empty
        without a certificate.
    @ivar verdict: the L{TrustVerdict} of the accepted chain, or L{None}
        without a certificate.
    """

    transport: IConnection

    site: AdminSite
    chain: list[x509.Certificate] = []
    verdict: TrustVerdict | None = None
    _refusal: CertificateRefused | None = None
    _handshake_done = False

    def certificate_refused(self, refusal: CertificateRefused) -> None:
        if self._refusal is None:
            self._refusal = refusal

    def certificate_accepted(
        self, chain: list[x509.Certificate], verdict: TrustVerdict
    ) -> None:
        self.chain, self.verdict = chain, verdict

    def handshakeCompleted(self) -> None:
        """
        Judge the chain again by the trust in force: a reload may have come
        while the handshake was under way.
        """
        refusal = self.refusal_now()
        if refusal is not None:
            self._refusal = refusal
            self.transport.abortConnection()
            return
        self._handshake_done = True

    def refusal_now(self) -> CertificateRefused | None:
        """
        Why the trust in force refuses the peer's chain, or L{None}.
        """
        if self.verdict is None:
            return None
        return self.verdict.again(self.chain)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._handshake_done:
            self.site.handshake_refused(
                describe_address(self.transport.getPeer()),
                self._refusal or refusal_for_handshake_failure(reason),
            )
        super().connectionLost(reason)


class AdminSite(server.Site):
    """
    The admin interface's HTTP site, to be served over TLS: one request a
    connection, bodies bounded, no tracebacks shown.
    """

    protocol = AdminChannel
    requestFactory = BoundedRequest
    displayTracebacks = False
    noisy = False

    def __init__(
        self, guard: Resource, metrics: Metrics, refusal_records: RefusalRecords
    ) -> None:
        super().__init__(guard, timeout=CONNECTION_DEADLINE)
        self._metrics = metrics
        self._refusal_records = refusal_records

    def handshake_refused(self, address: str, refusal: CertificateRefused) -> None:
        """
        Count and record a connection that did not get past TLS.
        """
        self._metrics.handshake(refusal.reason.value)
        if self._refusal_records.allow(refusal):
            record_handshake_refused(address, refusal, admin=True)


class _DeadlineWrapper(ProtocolWrapper):
    """
    A connection that is aborted once L{CONNECTION_DEADLINE} has passed.
    """

    transport: IConnection

    host = "?"
    _deadline: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        self._deadline = self.factory.clock.callLater(
            CONNECTION_DEADLINE, transport.abortConnection
        )
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        super().connectionLost(reason)


class AdminGate(WrappingFactory):
    """
    Bounds the admin port's connections, per address and in all, as the
    line port bounds those not logged in: past a bound the oldest
    connection of the address (or of all) is cut to make room, so that
    connections held open cannot keep a request out; and cuts each one
    after L{CONNECTION_DEADLINE} whatever it is doing.
    """

    protocol = _DeadlineWrapper
    noisy = False

    def __init__(
        self,
        wrapped: Factory,
        clock: IReactorTime,
        limits: Limits,
        anonymous_records: RecordBudget,
    ) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self._anonymous_records = anonymous_records
        # Counted as the line port counts connections not logged in; a
        # request logs in anew each time, so none is ever admitted.
        self._open: Admissions[_DeadlineWrapper] = Admissions(
            limits.max_handshakes_per_address, limits.max_handshakes, ()
        )

    def buildProtocol(self, addr: IAddress | None) -> _DeadlineWrapper:
        wrapper = super().buildProtocol(addr)
        wrapper.host = address_group(str(getattr(addr, "host", addr)))
        displaced = self._open.arrive(wrapper, wrapper.host)
        if displaced is not None:
            if self._anonymous_records.allow():
                audit(
                    "limit_reached",
                    "admin interface: cut the oldest connection from {peer} to "
                    "make room",
                    LogLevel.warn,
                    peer=displaced.host,
                    reason="admin connection limit",
                )
            # Older than the connection just made: it has its transport.
            displaced.transport.abortConnection()
        return wrapper

    def unregisterProtocol(self, p: _DeadlineWrapper) -> None:
        super().unregisterProtocol(p)
        self._open.leave(p)


class ApiError(Exception):
    """
    A request refused with C{status} and words for the client.
    """

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def send_json(request: BoundedRequest, status: HTTPStatus, body: Any) -> None:
    """
    Answer C{request} with C{body} as JSON, unless its client has gone.
    """
    if request.finished or request.gone:
        return
    request.setResponseCode(status.value)
    request.setHeader(b"content-type", b"application/json")
    send_bytes(request, json.dumps(body, ensure_ascii=True).encode() + b"\n")


def send_bytes(request: BoundedRequest, data: bytes) -> None:
    """
    Finish C{request} with C{data}, whole, unless its client has gone.
    """
    if request.finished or request.gone:
        return
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"server", b"secmsg")
    request.setHeader(b"content-length", str(len(data)).encode())
    request.write(data)
    request.finish()


def send_error(request: BoundedRequest, status: HTTPStatus, detail: str) -> None:
    """
    Answer with the one shape every error has.
    """
    send_json(
        request,
        status,
        {"status": status.value, "error": _ERROR_WORDS[status], "detail": detail},
    )
