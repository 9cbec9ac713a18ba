"""
One hierarchy of errors for secmsg, rooted at L{SecmsgError}.

Each error carries the structured detail that the place which reports it
needs: a configuration error names its file, a refused certificate names its
reason in the fixed words operators grep for, and a command error carries
the reply code the protocol sends.  Turning them into log lines or protocol
replies happens in one place each (L{secmsg.tap} and L{secmsg.daemon.protocol}).
"""

from __future__ import annotations

import enum


class SecmsgError(Exception):
    """
    The root of every error secmsg raises on purpose.
    """


class ConfigurationError(SecmsgError):
    """
    A file the daemon needs is missing, unreadable or invalid.

    @ivar source: the file (or option) at fault, as the operator named it.
    @ivar problem: what is wrong with it, in words.
    """

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


class PolicyError(ConfigurationError):
    """
    The policy file is not a valid policy: unknown command, unknown role,
    inheritance cycle, or a value of the wrong shape.
    """


class AuthorityError(SecmsgError):
    """
    A C{secmsg pki} request that cannot be carried out as asked: a name that
    is not usable, a file that would be overwritten, a certificate that
    would outlive its CA, nothing to revoke.  Nothing has been changed.
    """


class StoreError(SecmsgError):
    """
    The message store could not do what it was asked: the disk is full,
    the database failed.  Nothing was committed.
    """


class RefusalReason(enum.Enum):
    """
    Why a peer's certificate was refused, in the words the operator's log and
    the client both use.  OpenSSL's numeric verification errors are mapped
    onto these by L{secmsg.daemon.tls}.
    """

    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    UNKNOWN_CA = "unknown CA"
    REVOKED = "revoked"
    REVOCATION_UNKNOWN = "revocation status unknown"
    WRONG_KEY_USAGE = "wrong key usage"
    NO_CERTIFICATE = "no certificate"
    BAD_IDENTITY = "identity not a name token"
    REJECTED = "certificate rejected"
    HANDSHAKE_FAILED = "handshake failed"


class CertificateRefused(SecmsgError):
    """
    A peer certificate was refused during or after the TLS handshake.

    @ivar reason: the category, one of L{RefusalReason}.
    @ivar subject: the refused certificate's subject (RFC 4514), or C{""}
        when the peer sent none.
    @ivar detail: more words for the operator, or C{""}.
    @ivar vouched: whether a CA the server trusts (or trusted until a
        reload) issued the certificate: then the refusal is a fact about an
        identifiable holder (revoked, expired, refused by the policy), and
        is recorded apart from what anyone without a certificate can cause.
    """

    def __init__(
        self,
        reason: RefusalReason,
        subject: str = "",
        detail: str = "",
        vouched: bool = False,
    ) -> None:
        self.reason = reason
        self.subject = subject
        self.detail = detail
        self.vouched = vouched
        super().__init__(self.describe())

    def describe(self) -> str:
        """
        The reason word followed by the detail, as one log-ready phrase.
        """
        if self.detail:
            return f"{self.reason.value} ({self.detail})"
        return self.reason.value


class CommandError(SecmsgError):
    """
    A command that gets an error reply instead of being carried out.

    @cvar code: the three-digit reply code.
    @ivar text: the reply text after the code; it never contains message
        text from a user.
    """

    code = 500

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Malformed(CommandError):
    """
    The line is not valid UTF-8, holds a control or invisible character, or
    its arguments do not match the command's usage.
    """

    code = 400


class NotPermitted(CommandError):
    """
    The rule in force does not allow this identity to do this.

    @ivar verb: the command that was denied.
    @ivar identity: who was denied.
    @ivar rule: the rule that denied, in words.
    """

    code = 403

    def __init__(self, verb: str, identity: str, rule: str) -> None:
        super().__init__(f"{verb} not permitted for {identity}: {rule}")
        self.verb = verb
        self.identity = identity
        self.rule = rule


class NotFound(CommandError):
    """
    No such user online, or no such room for this session.
    """

    code = 404


class UnknownCommand(CommandError):
    """
    The verb is not one secmsg knows.
    """

    code = 405


class LineTooLong(CommandError):
    """
    A line exceeded the maximum length; its remainder was discarded.
    """

    code = 413


class RateLimited(CommandError):
    """
    The identity has sent commands faster than its rate allows; this one
    was not carried out, and may be sent again after the delay given.

    @ivar retry_ms: milliseconds until the next command would be taken.
    """

    code = 429

    def __init__(self, retry_ms: int) -> None:
        super().__init__(f"slow down; retry in {retry_ms} ms")
        self.retry_ms = retry_ms


class MailboxFull(CommandError):
    """
    A recipient already has as much waiting unacknowledged as the daemon
    keeps for one identity, so the message was neither stored nor sent,
    to it or to anyone else; the sender may try again once the recipient
    has read and acknowledged some.  Refusing is the point: taking it and
    dropping it later would lose a message its sender thinks delivered.

    @ivar recipient: the first recipient, in name order, past the bound.
    @ivar unit: what was counted, C{"messages"} or C{"bytes"} (of text).
    @ivar waiting: how much of it waits for the recipient now.
    @ivar limit: the most that may.
    @ivar size: the bytes of text the refused message would have added.
    """

    code = 507

    def __init__(
        self, recipient: str, unit: str, waiting: int, limit: int, size: int
    ) -> None:
        if unit == "bytes":
            what = (
                f"{waiting} bytes of unacknowledged messages waiting, "
                f"and {size} more would pass the limit of {limit}"
            )
        else:
            noun = "message" if waiting == 1 else "messages"
            what = f"{waiting} unacknowledged {noun} waiting (limit {limit})"
        super().__init__(f"not sent: {recipient} has {what}")
        self.recipient = recipient
        self.unit = unit
        self.waiting = waiting
        self.limit = limit
        self.size = size


class NotStored(CommandError):
    """
    A message or an acknowledgement could not be committed (a full disk,
    a failing database); nothing was sent, and the client may try again.
    """

    code = 503


class BackupRefused(CommandError):
    """
    A backup of the message store that was not made: its destination is
    in the way or cannot be written, or another is under way.  Nothing was
    left at the destination.
    """

    code = 409


class ServerFault(CommandError):
    """
    The server could not carry out a valid command (for example, a RELOAD
    whose new files are invalid).
    """

    code = 500
