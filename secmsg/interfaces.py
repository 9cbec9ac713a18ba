"""
The seams of secmsg.

The protocol talks to the routing hub and the session avatar only through
these interfaces, so that a multi-node hub or another avatar kind can be put
in without touching it.  Each interface has a real provider and tests check
it with C{verifyObject}.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

from secmsg.errors import CertificateRefused


class ISessionAvatar(Interface):
    """
    What an authenticated identity may do in one session: the result of a
    twisted.cred login, and the one place where authorization is decided.
    """

    identity = Attribute("The identity (a name token) this session belongs to.")
    roles = Attribute("The roles the policy assigns, as a tuple of names.")
    commands = Attribute("The frozenset of command names the roles grant.")

    def authorize(verb: str) -> None:
        """
        Allow C{verb} or refuse it.

        @raise secmsg.errors.NotPermitted: naming the rule that denied.
        """

    def regrant(roles: tuple[str, ...], commands: frozenset[str]) -> None:
        """
        Replace the roles and command set after a policy reload, so that the
        new policy applies to the live session at once.
        """


class IPeer(Interface):
    """
    One live session as the hub sees it: something to push lines to and to
    close.  The protocol provides it and is the twisted.cred mind.
    """

    certificate_chain = Attribute(
        "The peer's verified chain as pyOpenSSL X509 objects, leaf first."
    )

    def push(line: bytes) -> None:
        """
        Send a formatted line the peer did not ask for (a message, a
        notice).  Does nothing once the session is closing.
        """

    def close(reason: str) -> None:
        """
        Tell the peer C{CLOSED <reason>} and end the session.
        """

    def kick(by: str, reason: str) -> None:
        """
        Tell the peer C{KICKED <by> <reason>} and end the session.
        """


class IHub(Interface):
    """
    Routing: who is online, who is in which room, and delivery between them.

    The in-process provider keeps all of it in memory; a later backplane may
    spread it over several daemons behind the same methods.
    """

    def attach(avatar: ISessionAvatar, peer: IPeer) -> None:
        """
        Register a session that has just logged in.
        """

    def detach(peer: IPeer) -> None:
        """
        Forget a session that has ended, and its room memberships.
        """

    def sessions() -> list[tuple[ISessionAvatar, IPeer]]:
        """
        Every live session, for reload to re-check.
        """

    def online(room: str | None = None) -> list[str]:
        """
        The sorted identities online, or those in C{room}.

        @raise secmsg.errors.NotFound: C{room} has no members.
        """

    def rooms() -> dict[str, int]:
        """
        Each room with members, and how many distinct identities are in it.
        """

    def join(peer: IPeer, room: str) -> bool:
        """
        Add a session to a room; return whether it was not already in.
        """

    def part(peer: IPeer, room: str) -> None:
        """
        Take a session out of a room.

        @raise secmsg.errors.NotFound: it was not in the room.
        """

    def send_direct(sender: str, recipient: str, text: str) -> str:
        """
        Deliver a direct message to every session of C{recipient}.

        @return: the message id.
        @raise secmsg.errors.NotFound: the recipient has no session.
        """

    def say(peer: IPeer, sender: str, room: str, text: str) -> str:
        """
        Deliver a line to every session in C{room} but the sender's.

        @return: the message id.
        @raise secmsg.errors.NotPermitted: the session is not in the room.
        """

    def broadcast(sender: str, text: str) -> str:
        """
        Deliver a line to every session.

        @return: the message id.
        """

    def kick(identity: str, by: str, reason: str) -> int:
        """
        Kick every session of C{identity}; return how many there were.
        """


class IHandshakeObserver(Interface):
    """
    Told by the TLS layer why it refused a peer's certificate, so that the
    refusal is logged once, with the peer address, when the connection ends.
    """

    def certificate_refused(refusal: CertificateRefused) -> None:
        """
        The verify callback refused the certificate, for this reason.
        """
