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

from cryptography import x509
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import Attribute, implementer

from secmsg.errors import CertificateRefused, NotPermitted
from secmsg.identity import IdentityRule
from secmsg.interfaces import IHub, IPeer, ISessionAvatar
from secmsg.policy import Policy


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

    def requestAvatarId(
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

    It holds the frozen set of commands its roles grant and decides every
    command against it; a reload replaces that set whole.
    """

    def __init__(
        self, identity: str, roles: tuple[str, ...], commands: frozenset[str]
    ) -> None:
        self.identity = identity
        self.roles = roles
        self.commands = commands

    def authorize(self, verb: str) -> None:
        """
        Allow C{verb} if a role grants it.

        @raise NotPermitted: naming the roles that do not grant it.
        """
        if verb not in self.commands:
            raise NotPermitted(
                verb,
                self.identity,
                f"not granted by {_roles_phrase(self.roles)}",
            )

    def regrant(self, roles: tuple[str, ...], commands: frozenset[str]) -> None:
        """
        Take the roles and commands of a reloaded policy.
        """
        self.roles = roles
        self.commands = commands


def _roles_phrase(roles: tuple[str, ...]) -> str:
    noun = "role" if len(roles) == 1 else "roles"
    return f"{noun} {', '.join(roles)}"


@implementer(IRealm)
class PolicyRealm:
    """
    Gives each identity a L{SessionAvatar} by the current policy, and
    registers its session with the hub for as long as the login lasts.

    @ivar policy: the policy in force; a reload replaces it.
    """

    def __init__(self, policy: Policy, hub: IHub) -> None:
        self.policy = policy
        self._hub = hub

    def requestAvatar(
        self, avatarId: str, mind: IPeer, *interfaces: type
    ) -> tuple[type, SessionAvatar, Callable[[], None]]:
        """
        The avatar for C{avatarId}, attached to the hub with C{mind} as its
        peer, and the logout that detaches it.

        @raise UnauthorizedLogin: the policy gives the identity no role.
        """
        if ISessionAvatar not in interfaces:
            raise NotImplementedError("secmsg only provides ISessionAvatar")
        grant = self.policy.grant_for(avatarId)
        if grant is None:
            raise UnauthorizedLogin(f"the policy gives {avatarId} no role")
        avatar = SessionAvatar(avatarId, grant.roles, grant.commands)
        self._hub.attach(avatar, mind)
        return ISessionAvatar, avatar, lambda: self._hub.detach(mind)
