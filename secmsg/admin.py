"""
The HTTPS admin and metrics interface, on the same identities as the line
protocol.

Every request is authenticated by its TLS client certificate and logged
in through the same twisted.cred portal; the realm answers with an
L{AdminResource} wrapped around the same kind of avatar a line session
gets, so that an endpoint is allowed exactly when the policy grants its
command (C{GET /v1/sessions} needs WHO, C{POST /v1/kick} needs KICK, and
so on).  Without a certificate the answer is 401; with one the policy
does not allow, 403 naming the rule.  Bodies and answers are JSON, errors
have one shape: C{{"status": 403, "error": "forbidden", "detail": "..."}}.
docs/admin-api.md and docs/openapi.json describe it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from cryptography import x509
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource, Resource

from secmsg import wire
from secmsg.audit import audit
from secmsg.auth import SessionAvatar, VerifiedCertificate
from secmsg.commands import kick_identity, reload_as
from secmsg.delivery import Delivery
from secmsg.errors import (
    CommandError,
    Malformed,
    NotFound,
    NotPermitted,
    NotStored,
    StoreError,
)
from secmsg.interfaces import IHub
from secmsg.messages import Kind, Stored
from secmsg.metrics import CONTENT_TYPE, Metrics
from secmsg.reload import ReloadReport

log = Logger()

MAX_BODY = 64 * 1024
"""Bytes a request body may hold; the rest is not kept, and the request
gets 413."""

REQUEST_TIMEOUT = 60
"""Seconds an admin connection may stay idle before it is closed."""


class BoundedRequest(server.Request):
    """
    A request that keeps at most L{MAX_BODY} bytes of its body, and says
    whether it was sent more, and whether its client has gone.
    """

    too_large = False
    gone = False

    def connectionLost(self, reason: Failure) -> None:
        self.gone = True
        super().connectionLost(reason)

    def handleContentChunk(self, data: bytes) -> None:
        if self.content.tell() + len(data) > MAX_BODY:
            self.too_large = True
            return
        super().handleContentChunk(data)


def admin_site(guard: Resource) -> server.Site:
    """
    The admin interface's HTTP site, to be served over TLS.
    """
    site = server.Site(guard, timeout=REQUEST_TIMEOUT)
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    site.noisy = False
    return site


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
    500: HTTPStatus.INTERNAL_SERVER_ERROR,
    503: HTTPStatus.SERVICE_UNAVAILABLE,
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
        {"status": status.value, "error": status.phrase.lower(), "detail": detail},
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
        address = _address(request)
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
        login = self._portal.login(
            VerifiedCertificate(chain[0]), WebClient(chain, address), IResource
        )
        login.addCallbacks(
            lambda result: _render_avatar(result, request),
            lambda failure: _login_refused(failure, request, address),
        )
        return server.NOT_DONE_YET


def _render_avatar(
    result: tuple[Any, Resource, Callable[[], None]], request: BoundedRequest
) -> None:
    _, resource, logout = result
    try:
        resource.render(request)
    finally:
        logout()


def _login_refused(failure: Failure, request: BoundedRequest, address: str) -> None:
    if failure.check(UnauthorizedLogin):
        reason = str(failure.value)
    else:
        log.failure("admin login failed", failure)
        reason = "internal error during login"
    audit(
        "login_refused",
        "refused admin request from {peer}: {reason}",
        LogLevel.warn,
        peer=address,
        reason=reason,
    )
    send_error(request, HTTPStatus.FORBIDDEN, f"login refused: {reason}")


def _address(request: BoundedRequest) -> str:
    peer = request.getClientAddress()
    host, port = getattr(peer, "host", "?"), getattr(peer, "port", "?")
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


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
        max_text: int,
    ) -> None:
        self._hub = hub
        self._delivery = delivery
        self._reload = reload
        self._metrics = metrics
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
        return AdminResource(self, avatar, client.address)

    def sessions(self, call: Call) -> dict[str, Any]:
        del call  # Everyone's sessions, whoever asks.
        listed = [
            {
                "identity": avatar_of.identity,
                "roles": list(avatar_of.roles),
                "address": peer.address,
                "rooms": self._hub.rooms_of(peer),
            }
            for avatar_of, peer in self._hub.sessions()
        ]
        listed.sort(key=lambda entry: (entry["identity"], entry["address"]))
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
        return self._metrics.exposition()

    def health(self, call: Call) -> dict[str, str]:
        return {"status": "ok", "identity": call.avatar.identity}

    def _sent(self, sent: defer.Deferred[Stored]) -> defer.Deferred[dict[str, int]]:
        def refused(failure: Failure) -> None:
            failure.trap(StoreError)
            log.error("message store failed: {error}", error=failure.getErrorMessage())
            raise NotStored(f"not done, the message store failed: {failure.value}")

        sent.addCallbacks(lambda message: {"id": message.id}, refused)
        return sent


class AdminResource(Resource):
    """
    One admitted identity's view of the admin interface: each request is
    checked against its avatar, the one place where the decision is made.
    """

    isLeaf = True

    def __init__(self, api: AdminApi, avatar: SessionAvatar, address: str) -> None:
        super().__init__()
        self._api = api
        self._avatar = avatar
        self._address = address

    def render(self, request: BoundedRequest) -> int:
        try:
            endpoint = self._endpoint(request)
            call = Call(request, self._avatar, self._address, self._body(request))
            result = endpoint.handler(call)
        except Exception:  # noqa: BLE001 -- one bad request must not end the daemon
            self._failed(Failure(), request)
            return server.NOT_DONE_YET
        defer.maybeDeferred(lambda: result).addCallbacks(
            lambda answer: self._answer(request, answer),
            lambda failure: self._failed(failure, request),
        )
        return server.NOT_DONE_YET

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
        if endpoint.command is not None:
            self._authorize(endpoint.command)
        return endpoint

    def _authorize(self, command: str) -> None:
        try:
            self._avatar.authorize(command)
        except NotPermitted as denial:
            audit(
                "denied",
                "denied {verb} to {identity} at the admin interface: {rule}",
                LogLevel.warn,
                identity=self._avatar.identity,
                peer=self._address,
                verb=command,
                rule=denial.rule,
            )
            raise

    def _body(self, request: BoundedRequest) -> dict[str, Any]:
        if request.method != b"POST":
            return {}
        if getattr(request, "too_large", False):
            raise ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body may hold {MAX_BODY} bytes",
            )
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if kind.lower() != b"application/json":
            raise ApiError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json"
            )
        request.content.seek(0)
        try:
            body = json.loads(request.content.read())
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _answer(self, request: BoundedRequest, answer: Any) -> None:
        if isinstance(answer, bytes):
            send_bytes(request, answer)
            return
        send_json(request, HTTPStatus.OK, answer)

    def _failed(self, failure: Failure, request: BoundedRequest) -> None:
        error = failure.value
        if isinstance(error, ApiError):
            send_error(request, error.status, error.detail)
        elif isinstance(error, CommandError):
            send_error(request, _COMMAND_STATUS[error.code], error.text)
        else:
            log.failure("internal error answering {path}", failure, path=request.path)
            send_error(request, HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")


def _shown(path: bytes) -> str:
    return wire.escape_controls(path.decode("utf-8", "replace"))[:200]


def _identity(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not wire.NAME_TOKEN.fullmatch(value):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key} must be an identity")
    return value


def _text(body: dict[str, Any], key: str, limit: int, required: bool = True) -> str:
    """
    A text field, held to the rules of a protocol line: UTF-8 of at most
    C{limit} bytes, no control characters.
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
