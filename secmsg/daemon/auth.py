"""
twisted.cred for secmsg: a verified certificate as a credential, a checker
that maps it to an identity, and a realm that grants that identity its
roles' commands.

The TLS layer has already verified the chain when a credential is made; the
checker's job is the mapping to an identity (refusing one that is not a name
token), and the realm's is the policy.  The avatar it returns is the one
place where a command is allowed or denied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from secmsg.daemon.identity import IdentityRule
from secmsg.daemon.interfaces import IHub, ISessionAvatar
from secmsg.daemon.policy import Grant, Policy
from secmsg.errors import CertificateRefused, NotPermitted


class ICertificateCredential(ICredentials):
    """
    A client certificate that the TLS layer has verified.
    """

    certificate = Attribute("The leaf, a cryptography x509.Certificate.")


@implementer(ICertificateCredential)
@dataclass(frozen=True)
class VerifiedCertificate:
    """
    The verified leaf certificate of a TLS peer.
    """

    certificate: x509.Certificate


@implementer(ICredentialsChecker)
class CertificateChecker:
    """
    Maps a verified certificate to the identity its configured field names.
    """

    credentialInterfaces = (ICertificateCredential,)

    def __init__(self, rule: IdentityRule) -> None:
        self._rule = rule

    # twisted.cred types an avatar id as bytes; ours are identities (str),
    # which cred passes through untouched.
    def requestAvatarId(  # type: ignore[override]
        self, credentials: ICertificateCredential
    ) -> defer.Deferred[str]:
        """
        The identity, or a failure with L{UnauthorizedLogin} saying why not.
        """
        try:
            return defer.succeed(self._rule.identity_of(credentials.certificate))
        except CertificateRefused as refusal:
            return defer.fail(UnauthorizedLogin(refusal.describe()))


@implementer(ISessionAvatar)
class SessionAvatar:
    """
    One identity's rights in one session.

    It holds what the policy granted its roles (commands, rate, room rules)
    and decides every command and room action against that; a reload
    replaces the grant whole.
    """

    def __init__(self, identity: str, grant: Grant) -> None:
        self.identity = identity
        self.grant = grant

    @property
    def roles(self) -> tuple[str, ...]:
        return self.grant.roles

    @property
    def commands(self) -> frozenset[str]:
        return self.grant.commands

    def authorize(self, verb: str) -> None:
        """
        Allow C{verb} if a role grants it.

        @raise NotPermitted: naming the roles that do not grant it.
        """
        if verb not in self.grant.commands:
            raise NotPermitted(
                verb,
                self.identity,
                f"not granted by {_roles_phrase(self.grant.roles)}",
            )

    def authorize_room(self, verb: str, action: str, room: str) -> None:
        """
        Allow C{action} (join, read or say) in C{room} if the room rules
        let one of the roles do it.

        @raise NotPermitted: naming the room rule that denied.
        """
        refusal = self.grant.rooms.refusal(action, room, self.grant.lineage)
        if refusal is not None:
            raise NotPermitted(
                verb,
                self.identity,
                f"{refusal}; you have {_roles_phrase(self.grant.roles)}",
            )

    def may_read(self, room: str) -> bool:
        return self.grant.rooms.refusal("read", room, self.grant.lineage) is None

    def regrant(self, grant: Grant) -> None:
        """
        Take what a reloaded policy grants.
        """
        self.grant = grant


def _roles_phrase(roles: tuple[str, ...]) -> str:
    noun = "role" if len(roles) == 1 else "roles"
    return f"{noun} {', '.join(roles)}"


AvatarView = Callable[[SessionAvatar, Any], object]
"""Makes what a login asking for another interface than L{ISessionAvatar}
gets: a view of the avatar for the mind it serves, such as the admin
interface's resource for an avatar and its web client."""


@implementer(IRealm)
class PolicyRealm:
    """
    Gives each identity a L{SessionAvatar} by the current policy and its
    certificate.  For the line protocol it registers the session with the
    hub for as long as the login lasts; for another interface it hands the
    same avatar to the view registered for it (the admin interface's web
    resource), so that every way in is authorized by the same grant.  The
    realm knows no view itself: whoever serves an interface registers it.

    @ivar policy: the policy in force; a reload replaces it.
    """

    def __init__(self, policy: Policy, hub: IHub) -> None:
        self.policy = policy
        self._hub = hub
        self._views: dict[type[Interface], AvatarView] = {}

    def register(self, interface: type[Interface], view: AvatarView) -> None:
        """
        Answer logins that ask for C{interface} with what C{view} makes of
        the avatar and the mind.
        """
        self._views[interface] = view

    # twisted.cred types an avatar id as bytes; ours are identities (str),
    # which cred passes through untouched.
    def requestAvatar(  # type: ignore[override]
        self, avatarId: str, mind: Any, *interfaces: type[Interface]
    ) -> tuple[type[Interface], object, Callable[[], None]]:
        """
        The avatar for C{avatarId} as the interface asked for, and its
        logout.  Rules on certificate attributes are read from the leaf of
        the mind's verified chain.

        @param mind: the L{IPeer} of a line session, or the mind of a
            registered view (the admin interface's web client).
        @raise UnauthorizedLogin: the policy gives the identity no role.
        """
        grant = self.policy.grant_for(avatarId, mind.certificate_chain[0])
        if grant is None:
            raise UnauthorizedLogin(f"the policy gives {avatarId} no role")
        avatar = SessionAvatar(avatarId, grant)
        if ISessionAvatar in interfaces:
            self._hub.attach(avatar, mind)
            return ISessionAvatar, avatar, lambda: self._hub.detach(mind)
        for interface in interfaces:
            if interface in self._views:
                return interface, self._views[interface](avatar, mind), lambda: None
        provided = " and ".join(
            interface.__name__ for interface in (ISessionAvatar, *self._views)
        )
        raise NotImplementedError(f"secmsg provides {provided}")
