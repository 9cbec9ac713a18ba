"""
The HTTPS admin and metrics interface, on the same identities as the line
protocol.

Every request is authenticated by its TLS client certificate and logged
in through the same twisted.cred portal; the realm answers with an
L{AdminResource} wrapped around the same kind of avatar a line session
gets, so that an endpoint is allowed exactly when the policy grants its
command (C{GET /v1/sessions} needs WHO, C{POST /v1/kick} needs KICK, and
so on), and it draws on the identity's rate as its line sessions do.
Without a certificate the answer is 401; with one the policy does not
allow, 403 naming the rule.  Bodies and answers are JSON, errors have one
shape: C{{"status": 403, "error": "forbidden", "detail": "..."}}.

Each connection carries one request and is closed after its answer, so
that every request is judged by a handshake against the trust in force
(a reload that revokes a certificate leaves it no open connection to go
on with), and a client cannot queue answers it never reads.  Connections
are capped, in all and per address, and cut after L{CONNECTION_DEADLINE}.
docs/admin-api.md and docs/openapi.json describe it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from secmsg import wire
from secmsg.daemon.audit import RecordBudget, RefusalRecords, audit
from secmsg.daemon.auth import SessionAvatar, VerifiedCertificate
from secmsg.daemon.commands import kick_identity, refuse_store_failure, reload_as
from secmsg.daemon.delivery import Delivery
from secmsg.daemon.identity import describe_subject, fingerprint
from secmsg.daemon.interfaces import IHandshakeObserver, IHub
from secmsg.daemon.limits import Limits, OldestMakesRoom, address_group
from secmsg.daemon.metrics import CONTENT_TYPE, Metrics
from secmsg.daemon.protocol import describe_address
from secmsg.daemon.reload import ReloadReport
from secmsg.daemon.tls import TrustVerdict, refusal_for_handshake_failure
from secmsg.errors import (
    CertificateRefused,
    CommandError,
    Malformed,
    NotFound,
    NotPermitted,
    RateLimited,
    StoreError,
)
from secmsg.messages import Kind, Stored
from secmsg.rate import RateLimiter

log = Logger()

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

    @ivar verdict: the L{TrustVerdict} of the accepted chain, or L{None}
        without a certificate.
    """

    site: AdminSite
    verdict: TrustVerdict | None = None
    _refusal: CertificateRefused | None = None
    _handshake_done = False

    def certificate_refused(self, refusal: CertificateRefused) -> None:
        if self._refusal is None:
            self._refusal = refusal

    def certificate_accepted(self, verdict: TrustVerdict) -> None:
        self.verdict = verdict

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
        return self.verdict.again(
            self.transport.getHandle().get_verified_chain(as_cryptography=True)
        )

    def connectionLost(self, reason: Failure) -> None:
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
            audit(
                "handshake_refused",
                "refused admin handshake from {peer}: subject {subject}: {reason}",
                peer=address,
                subject=refusal.subject or "(none)",
                reason=refusal.describe(),
            )


class _DeadlineWrapper(ProtocolWrapper):
    """
    A connection that is aborted once L{CONNECTION_DEADLINE} has passed.
    """

    host = "?"
    _deadline: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        self._deadline = self.factory.clock.callLater(
            CONNECTION_DEADLINE, transport.abortConnection
        )
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
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
        self._open: OldestMakesRoom[_DeadlineWrapper] = OldestMakesRoom(
            limits.max_handshakes_per_address, limits.max_handshakes
        )

    def buildProtocol(self, addr: IAddress) -> _DeadlineWrapper:
        wrapper = super().buildProtocol(addr)
        wrapper.host = address_group(str(getattr(addr, "host", addr)))
        displaced = self._open.add(wrapper, wrapper.host)
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
        self._open.discard(p)


@dataclass(frozen=True)
class WebClient:
    """
    The twisted.cred mind of an admin request: the verified certificate
    chain the realm reads attribute rules from, and where it comes from.
    """

    certificate_chain: list[x509.Certificate]
    address: str


class ApiError(Exception):
    """
    A request refused with C{status} and words for the client.
    """

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_COMMAND_STATUS = {
    400: HTTPStatus.BAD_REQUEST,
    403: HTTPStatus.FORBIDDEN,
    404: HTTPStatus.NOT_FOUND,
    429: HTTPStatus.TOO_MANY_REQUESTS,
    500: HTTPStatus.INTERNAL_SERVER_ERROR,
    503: HTTPStatus.SERVICE_UNAVAILABLE,
    507: HTTPStatus.INSUFFICIENT_STORAGE,
}


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


class CertificateGuard(Resource):
    """
    The root of the admin site: logs each request in through the portal
    with its client certificate, and lets the avatar resource the realm
    gives answer it, as twisted.web.guard does with passwords.
    """

    isLeaf = True

    def __init__(self, portal: Portal) -> None:
        super().__init__()
        self._portal = portal

    def render(self, request: BoundedRequest) -> int:
        # One request a connection: see the module's docstring.
        request.channel.persistent = False
        request.setHeader(b"connection", b"close")
        address = describe_address(request.getClientAddress())
        chain = request.channel.transport.getHandle().get_verified_chain(
            as_cryptography=True
        )
        if not chain:
            request.setHeader(b"www-authenticate", b'ClientCertificate realm="secmsg"')
            send_error(
                request,
                HTTPStatus.UNAUTHORIZED,
                "a client certificate is required: present one issued by this "
                "server's CA (curl --cert FILE --key FILE)",
            )
            return server.NOT_DONE_YET
        refusal = request.channel.refusal_now()
        if refusal is not None:
            _refused_since_handshake(request, address, refusal)
            return server.NOT_DONE_YET
        login = self._portal.login(
            VerifiedCertificate(chain[0]), WebClient(chain, address), IResource
        )
        login.addCallback(_render_avatar, request)
        login.addErrback(_login_refused, request, address)
        return server.NOT_DONE_YET


def _refused_since_handshake(
    request: BoundedRequest, address: str, refusal: CertificateRefused
) -> None:
    """
    Refuse a request whose certificate a reload since its handshake no
    longer trusts, saying why.
    """
    audit(
        "login_refused",
        "refused admin request from {peer}, after a reload: subject {subject}: "
        "{reason}",
        LogLevel.warn,
        peer=address,
        subject=refusal.subject,
        reason=refusal.describe(),
    )
    send_error(
        request, HTTPStatus.FORBIDDEN, f"certificate refused: {refusal.reason.value}"
    )


def _render_avatar(
    result: tuple[Any, Resource, Callable[[], None]], request: BoundedRequest
) -> None:
    _, resource, logout = result
    try:
        resource.render(request)
    finally:
        logout()


def _login_refused(failure: Failure, request: BoundedRequest, address: str) -> None:
    if not failure.check(UnauthorizedLogin):
        log.failure("admin request failed", failure)
        send_error(request, HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
        return
    audit(
        "login_refused",
        "refused admin request from {peer}: {reason}",
        LogLevel.warn,
        peer=address,
        reason=str(failure.value),
    )
    send_error(request, HTTPStatus.FORBIDDEN, f"login refused: {failure.value}")


@dataclass(frozen=True)
class Call:
    """
    One authorized request, as a handler gets it.

    @ivar address: where the client connects from.
    @ivar body: the JSON object of a POST, empty for a GET.
    """

    request: BoundedRequest
    avatar: SessionAvatar
    address: str
    body: dict[str, Any]


Handler = Callable[[Call], Any]
"""Answers a call: a JSON-able value, bytes as they are, or a Deferred of
either; or raises L{ApiError} or L{CommandError}."""


@dataclass(frozen=True)
class Endpoint:
    """
    What one method on one path needs and does.

    @ivar command: the policy command it needs, or L{None} for any
        admitted identity.
    """

    command: str | None
    handler: Handler


class AdminApi:
    """
    The admin interface's operations, shared by every avatar resource.
    """

    def __init__(
        self,
        hub: IHub,
        delivery: Delivery,
        reload: Callable[[bool], ReloadReport],
        metrics: Metrics,
        rate_limiter: RateLimiter,
        max_text: int,
    ) -> None:
        self._hub = hub
        self._delivery = delivery
        self._reload = reload
        self.metrics = metrics
        self.rate_limiter = rate_limiter
        self._max_text = max_text
        self.routes: dict[bytes, dict[bytes, Endpoint]] = {
            b"/v1/sessions": {b"GET": Endpoint("WHO", self.sessions)},
            b"/v1/kick": {b"POST": Endpoint("KICK", self.kick)},
            b"/v1/reload": {b"POST": Endpoint("RELOAD", self.reload)},
            b"/v1/broadcast": {b"POST": Endpoint("BROADCAST", self.broadcast)},
            b"/v1/messages": {b"POST": Endpoint("MSG", self.message)},
            b"/metrics": {b"GET": Endpoint("METRICS", self.scrape)},
            b"/healthz": {b"GET": Endpoint(None, self.health)},
        }

    def resource_for(self, avatar: SessionAvatar, client: WebClient) -> AdminResource:
        """
        The resource that answers for C{avatar}: what the realm returns.
        """
        return AdminResource(self, avatar, client)

    def sessions(self, call: Call) -> dict[str, Any]:
        """
        Every session, and the rooms it is in that the asker may read;
        where it connects from and its roles only for an asker who may
        also KICK, as WHO on the line shows names alone.
        """
        detailed = "KICK" in call.avatar.commands
        listed = []
        for avatar, peer in self._hub.sessions():
            entry: dict[str, Any] = {
                "identity": avatar.identity,
                "rooms": [
                    room
                    for room in self._hub.rooms_of(peer)
                    if call.avatar.may_read(room)
                ],
            }
            if detailed:
                entry.update(roles=list(avatar.roles), address=peer.address)
            listed.append(entry)
        listed.sort(key=lambda entry: (entry["identity"], entry.get("address", "")))
        return {"sessions": listed}

    def kick(self, call: Call) -> dict[str, Any]:
        identity = _identity(call.body, "identity")
        reason = _text(call.body, "reason", self._max_text, required=False)
        count = kick_identity(
            self._hub, call.avatar.identity, call.address, identity, reason
        )
        return {"kicked": identity, "sessions": count}

    def reload(self, call: Call) -> dict[str, Any]:
        dry = call.body.get("dry", False)
        if not isinstance(dry, bool):
            raise ApiError(HTTPStatus.BAD_REQUEST, "dry must be true or false")
        report = reload_as(self._reload, call.avatar.identity, dry)
        return {
            "dry": dry,
            "checked": report.checked,
            "closed": [
                {"identity": identity, "reason": reason}
                for identity, reason in report.closed
            ],
            "changes": report.lines() if dry else [],
            "warnings": report.warnings,
        }

    def broadcast(self, call: Call) -> defer.Deferred[dict[str, int]]:
        text = _text(call.body, "text", self._max_text)
        return self._sent(
            self._delivery.send(Kind.BROADCAST, None, call.avatar.identity, "", text)
        )

    def message(self, call: Call) -> defer.Deferred[dict[str, int]]:
        recipient = _identity(call.body, "to")
        text = _text(call.body, "text", self._max_text)
        if not self._delivery.is_known(recipient):
            raise NotFound(f"no such identity {recipient}")
        return self._sent(
            self._delivery.send(
                Kind.DIRECT, None, call.avatar.identity, recipient, text
            )
        )

    def scrape(self, call: Call) -> bytes:
        call.request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return self.metrics.exposition()

    def health(self, call: Call) -> dict[str, str]:
        return {"status": "ok", "identity": call.avatar.identity}

    def _sent(self, sent: defer.Deferred[Stored]) -> defer.Deferred[dict[str, int]]:
        refuse_store_failure(sent)
        return sent.addCallback(lambda message: {"id": message.id})


class AdminResource(Resource):
    """
    One admitted identity's view of the admin interface: each request is
    checked against its avatar, the one place where the decision is made.
    """

    isLeaf = True

    def __init__(self, api: AdminApi, avatar: SessionAvatar, client: WebClient) -> None:
        super().__init__()
        self._api = api
        self._avatar = avatar
        self._client = client
        self._address = client.address

    def render(self, request: BoundedRequest) -> int:
        methods = self._api.routes.get(request.path, {})
        known = methods.get(request.method)
        command = "?" if known is None else known.command or "HEALTHZ"
        try:
            self._spend_token(command)
            self._record_login()
            self._refuse_cross_site(request, command)
            endpoint = self._endpoint(request)
            if endpoint.command is not None:
                self._authorize(endpoint.command)
            call = Call(request, self._avatar, self._address, self._body(request))
            result = endpoint.handler(call)
        except Exception:  # noqa: BLE001 -- one bad request must not end the daemon
            self._failed(Failure(), request, command)
            return server.NOT_DONE_YET
        answering = defer.maybeDeferred(lambda: result)
        answering.addCallback(self._answer, request, command)
        answering.addErrback(self._failed, request, command)
        return server.NOT_DONE_YET

    def _spend_token(self, command: str) -> None:
        """
        A request costs one of the identity's tokens, shared with its line
        sessions.
        """
        avatar = self._avatar
        wait = self._api.rate_limiter.take(avatar.identity, avatar.grant.rate)
        if wait:
            self._api.metrics.rate_limited(command)
            raise RateLimited(max(1, math.ceil(wait * 1000)))

    def _record_login(self) -> None:
        """
        Record who the request comes from and with which certificate, as a
        line session's login is, so that what it does can be traced.
        """
        certificate = self._client.certificate_chain[0]
        audit(
            "login",
            "admin request by {identity} (roles: {roles}) from {peer}",
            identity=self._avatar.identity,
            roles=",".join(self._avatar.roles),
            granted_by=self._avatar.grant.granted_by,
            peer=self._address,
            subject=describe_subject(certificate),
            serial=f"{certificate.serial_number:x}",
            fingerprint=fingerprint(certificate),
            interface="admin",
        )

    def _refuse_cross_site(self, request: BoundedRequest, command: str) -> None:
        """
        Refuse, before anything is looked up or done, a request that a page
        of another site made a browser send: a browser that holds an
        admin's certificate presents it to whoever asks it to.
        """
        reason = _cross_site(request)
        if reason is not None:
            self._record_denial(command, f"refused as cross-site: {reason}")
            raise ApiError(HTTPStatus.FORBIDDEN, f"refused as cross-site: {reason}")

    def _endpoint(self, request: BoundedRequest) -> Endpoint:
        methods = self._api.routes.get(request.path)
        if methods is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such path {_shown(request.path)}")
        endpoint = methods.get(request.method)
        if endpoint is None:
            request.setHeader(b"allow", b", ".join(methods))
            allowed = ", ".join(method.decode() for method in methods)
            raise ApiError(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{_shown(request.path)} takes {allowed}"
            )
        return endpoint

    def _authorize(self, command: str) -> None:
        try:
            self._avatar.authorize(command)
        except NotPermitted as denial:
            self._record_denial(command, denial.rule)
            raise

    def _record_denial(self, command: str, rule: str) -> None:
        """
        Record a request refused before it was carried out, and why.
        """
        audit(
            "denied",
            "denied {verb} to {identity} at the admin interface: {rule}",
            LogLevel.warn,
            identity=self._avatar.identity,
            peer=self._address,
            verb=command,
            rule=rule,
        )

    def _body(self, request: BoundedRequest) -> dict[str, Any]:
        if request.method != b"POST":
            return {}
        if request.too_large:
            raise ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body may hold {MAX_BODY} bytes",
            )
        # The type even of an empty body: a page of another site may send a
        # form or a bodiless POST without asking, never one of this type.
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if kind.lower() != b"application/json":
            raise ApiError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "send the body, even an empty one, as application/json",
            )
        request.content.seek(0)
        raw = request.content.read()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _answer(self, answer: Any, request: BoundedRequest, command: str) -> None:
        self._api.metrics.admin_request(command, HTTPStatus.OK.value)
        if isinstance(answer, bytes):
            send_bytes(request, answer)
            return
        send_json(request, HTTPStatus.OK, answer)

    def _failed(self, failure: Failure, request: BoundedRequest, command: str) -> None:
        error = failure.value
        if isinstance(error, ApiError):
            status, detail = error.status, error.detail
        elif isinstance(error, CommandError) and error.code in _COMMAND_STATUS:
            status, detail = _COMMAND_STATUS[error.code], error.text
            if isinstance(error, RateLimited):
                request.setHeader(
                    b"retry-after", str(math.ceil(error.retry_ms / 1000)).encode()
                )
        elif isinstance(error, StoreError):
            status = HTTPStatus.SERVICE_UNAVAILABLE
            detail = f"not done, the message store failed: {error}"
        else:
            log.failure("internal error answering {path}", failure, path=request.path)
            status, detail = HTTPStatus.INTERNAL_SERVER_ERROR, "internal error"
        self._api.metrics.admin_request(command, status.value)
        send_error(request, status, detail)


def _shown(path: bytes) -> str:
    return wire.escape_controls(path.decode("utf-8", "replace"))[:200]


_OTHER_SITES = (b"cross-site", b"same-site")
"""The Sec-Fetch-Site values of a request a page of another origin made."""


def _cross_site(request: BoundedRequest) -> str | None:
    """
    Why C{request} was sent for a page of another origin than the admin
    interface's own (https and the Host it names), in words, or L{None}.

    Browsers say where a request comes from (Origin, Referer,
    Sec-Fetch-Site); scripts such as curl or a scraper send none of these
    and are let through.  C{Origin: null}, sent for sandboxed and opaque
    pages, is another origin too.
    """
    headers = request.requestHeaders
    for site in headers.getRawHeaders(b"sec-fetch-site", []):
        if site.strip().lower() in _OTHER_SITES:
            return (
                f"Sec-Fetch-Site {_shown(site.strip())} says a page of another "
                "site sent it"
            )
    own = _origin_of(b"https://" + (request.getHeader(b"host") or b""))
    for name in (b"Origin", b"Referer"):
        for value in headers.getRawHeaders(name, []):
            origin = _origin_of(value)
            if not origin or origin != own:
                return (
                    f"{name.decode()} {_shown(value.strip())} is not this "
                    f"interface's own origin, {_shown(own)}"
                )
    return None


def _origin_of(url: bytes) -> bytes:
    """
    The scheme and host (with its port but for https's 443) that C{url}
    names, lower-case; C{b""} for what names none.
    """
    try:
        parts = urlsplit(url.strip().lower())
    except ValueError:
        return b""
    host = parts.netloc.rpartition(b"@")[2]
    if parts.scheme == b"https" and host.endswith(b":443"):
        host = host[: -len(b":443")]
    return parts.scheme + b"://" + host if parts.scheme and host else b""


def _identity(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not wire.NAME_TOKEN.fullmatch(value):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key} must be an identity")
    return value


def _text(body: dict[str, Any], key: str, limit: int, required: bool = True) -> str:
    """
    A text field, held to the rules of a protocol line: UTF-8 of at most
    C{limit} bytes, no control or invisible characters.
    """
    value = body.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value.strip(" \t")):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key} must be a non-empty string")
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) > limit:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key} may hold {limit} bytes")
    try:
        wire.decode_line(encoded)
    except Malformed as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key}: {error.text}") from None
    return value
