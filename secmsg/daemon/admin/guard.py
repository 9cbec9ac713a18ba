"""
The certificate guard: the root of the admin site, which logs each
request in through the twisted.cred portal by its TLS client certificate
and hands it to the resource the realm gives for the avatar.

It refuses, each in the one error shape, a request without a certificate
(401), one whose certificate a reload since its handshake no longer
trusts, and one whose login the checker or the realm refuses (403); the
two refusals are audited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from cryptography import x509
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource, Resource

from secmsg.daemon.admin.http import BoundedRequest, send_error
from secmsg.daemon.audit import audit
from secmsg.daemon.auth import VerifiedCertificate
from secmsg.daemon.limits import describe_address
from secmsg.errors import CertificateRefused

log = Logger()


@dataclass(frozen=True)
class WebClient:
    """
    The twisted.cred mind of an admin request: the verified certificate
    chain the realm reads attribute rules from, and where it comes from.
    """

    certificate_chain: list[x509.Certificate]
    address: str


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
        # One request a connection: see the docstring of admin.http.
        request.channel.persistent = False
        request.setHeader(b"connection", b"close")
        address = describe_address(request.getClientAddress())
        chain = request.channel.chain
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
