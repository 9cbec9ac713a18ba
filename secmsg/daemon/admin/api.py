"""
The admin interface's API: what an admitted identity may ask, and what
it gets.

L{AdminResource} is one identity's view: it spends the identity's rate,
records the request, refuses one a page of another site made a browser
send, routes it, asks the avatar whether the endpoint's command is
granted, and turns every refusal into the one error shape.  L{AdminApi}
holds the endpoints themselves, which do what the line protocol's
commands do through the same operations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from secmsg import wire
from secmsg.daemon.admin.guard import WebClient
from secmsg.daemon.admin.http import (
    MAX_BODY,
    ApiError,
    BoundedRequest,
    send_bytes,
    send_error,
    send_json,
)
from secmsg.daemon.audit import record_denial, record_login
from secmsg.daemon.auth import SessionAvatar
from secmsg.daemon.delivery import Delivery
from secmsg.daemon.interfaces import IHub
from secmsg.daemon.metrics import CONTENT_TYPE, Metrics
from secmsg.daemon.operations import (
    BACKUP_NAME,
    Backups,
    back_up,
    kick_identity,
    refuse_store_failure,
    reload_as,
)
from secmsg.daemon.reload import ReloadReport
from secmsg.daemon.rooms import Rooms
from secmsg.errors import (
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


_COMMAND_STATUS = {
    400: HTTPStatus.BAD_REQUEST,
    403: HTTPStatus.FORBIDDEN,
    404: HTTPStatus.NOT_FOUND,
    409: HTTPStatus.CONFLICT,
    429: HTTPStatus.TOO_MANY_REQUESTS,
    500: HTTPStatus.INTERNAL_SERVER_ERROR,
    503: HTTPStatus.SERVICE_UNAVAILABLE,
    507: HTTPStatus.INSUFFICIENT_STORAGE,
}


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
        rooms: Rooms,
        delivery: Delivery,
        reload: Callable[[bool], ReloadReport],
        metrics: Metrics,
        rate_limiter: RateLimiter,
        max_text: int,
        backups: Backups,
        node: str,
    ) -> None:
        """
        @param rooms: whose the rooms are, which the sessions list shows.
        @param backups: where backups of the message store go.
        @param node: the daemon's name, which the sessions list and the
            health check give: behind one name, the daemon that answered.
        """
        self._node = node
        self._hub = hub
        self._rooms = rooms
        self._delivery = delivery
        self._reload = reload
        self.metrics = metrics
        self.rate_limiter = rate_limiter
        self._max_text = max_text
        self._backups = backups
        self.routes: dict[bytes, dict[bytes, Endpoint]] = {
            b"/v1/sessions": {b"GET": Endpoint("WHO", self.sessions)},
            b"/v1/kick": {b"POST": Endpoint("KICK", self.kick)},
            b"/v1/reload": {b"POST": Endpoint("RELOAD", self.reload)},
            b"/v1/broadcast": {b"POST": Endpoint("BROADCAST", self.broadcast)},
            b"/v1/messages": {b"POST": Endpoint("MSG", self.message)},
            b"/v1/backup": {b"POST": Endpoint("BACKUP", self.backup)},
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
        Every session of this daemon, and the rooms it is in that the
        asker may read; where it connects from and its roles only for an
        asker who may also KICK, as WHO on the line shows names alone.
        In a cluster, also how many sessions each identity holds on each
        other daemon, as its last beat said (which carries no more).
        """
        detailed = "KICK" in call.avatar.commands
        listed = []
        for avatar, peer in self._hub.sessions():
            entry: dict[str, Any] = {
                "identity": avatar.identity,
                "rooms": self._rooms_for(call, avatar.identity),
            }
            if detailed:
                entry.update(roles=list(avatar.roles), address=peer.address)
            listed.append(entry)
        listed.sort(key=lambda entry: (entry["identity"], entry.get("address", "")))
        elsewhere = [
            {
                "node": node,
                "identity": identity,
                "sessions": count,
                "rooms": self._rooms_for(call, identity),
            }
            for node, identity, count in self._hub.held_elsewhere()
        ]
        return {"node": self._node, "sessions": listed, "elsewhere": elsewhere}

    def _rooms_for(self, call: Call, identity: str) -> list[str]:
        """
        The rooms C{identity} is in that the asker may read.
        """
        return [
            room
            for room in sorted(self._rooms.of(identity))
            if call.avatar.may_read(room)
        ]

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

    def backup(self, call: Call) -> defer.Deferred[dict[str, Any]]:
        """
        A copy of the message store, under the name given, in the daemon's
        backup directory, answered once it is whole there.
        """
        name = call.body.get("name")
        if not isinstance(name, str) or not BACKUP_NAME.fullmatch(name):
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "name must be a file name (letters, digits and ._-, 1 to 128 "
                "characters, not starting with a dot): backups go in the "
                "daemon's backup-dir",
            )
        replace = call.body.get("replace", False)
        if not isinstance(replace, bool):
            raise ApiError(HTTPStatus.BAD_REQUEST, "replace must be true or false")
        made = back_up(self._backups, call.avatar.identity, call.address, name, replace)
        return made.addCallback(
            lambda size: {"path": str(self._backups.destination(name)), "bytes": size}
        )

    def scrape(self, call: Call) -> bytes:
        call.request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return self.metrics.exposition()

    def health(self, call: Call) -> dict[str, str]:
        return {"status": "ok", "identity": call.avatar.identity, "node": self._node}

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
            record_login(
                self._avatar.identity,
                self._avatar.grant,
                self._client.certificate_chain[0],
                self._address,
                admin=True,
            )
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

    def _refuse_cross_site(self, request: BoundedRequest, command: str) -> None:
        """
        Refuse, before anything is looked up or done, a request that a page
        of another site made a browser send: a browser that holds an
        admin's certificate presents it to whoever asks it to.
        """
        reason = _cross_site(request)
        if reason is not None:
            record_denial(
                self._avatar.identity,
                self._address,
                command,
                f"refused as cross-site: {reason}",
                admin=True,
            )
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
            record_denial(
                self._avatar.identity, self._address, command, denial.rule, admin=True
            )
            raise

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
    wanted = "a non-empty string" if required else "a string"
    if not isinstance(value, str) or (required and wire.is_blank(value)):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key} must be {wanted}")
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) > limit:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key} may hold {limit} bytes")
    try:
        wire.decode_line(encoded)
    except Malformed as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key}: {error.text}") from None
    return value
