"""
What each command does, once the avatar has allowed it.

Handlers run on arguments that L{secmsg.wire.parse_arguments} has already
checked, and return the formatted reply.  They refuse by raising a
L{secmsg.errors.CommandError}, which the protocol turns into a reply; they
never decide whether the caller may run them: the avatar did that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cryptography import x509
from twisted.logger import Logger

from secmsg import wire
from secmsg.errors import ConfigurationError, NotFound, ServerFault
from secmsg.identity import describe_subject
from secmsg.interfaces import IHub, ISessionAvatar
from secmsg.reload import ReloadReport

log = Logger()


class Session(Protocol):
    """
    What a handler needs of the session that sent the command; it is also
    the L{IPeer} the hub knows it by.
    """

    avatar: ISessionAvatar
    certificate: x509.Certificate

    def finish(self) -> None:
        """
        Close the session once the current reply has been sent.
        """


Handler = Callable[..., bytes]


class Commands:
    """
    The handlers of every verb, sharing one hub and one reload.
    """

    def __init__(self, hub: IHub, reload: Callable[[], ReloadReport]) -> None:
        self._hub = hub
        self._reload = reload
        self._handlers: dict[str, Handler] = {
            "HELP": self.help,
            "WHOAMI": self.whoami,
            "WHO": self.who,
            "PING": self.ping,
            "QUIT": self.quit,
            "MSG": self.msg,
            "JOIN": self.join,
            "PART": self.part,
            "SAY": self.say,
            "ROOMS": self.rooms,
            "KICK": self.kick,
            "BROADCAST": self.broadcast,
            "RELOAD": self.reload,
        }

    def run(self, session: Session, verb: str, arguments: tuple[str, ...]) -> bytes:
        """
        Carry out an allowed, well-formed command.

        @raise secmsg.errors.CommandError: it could not be carried out.
        """
        return self._handlers[verb](session, *arguments)

    def help(self, session: Session) -> bytes:
        allowed = session.avatar.commands
        lines = [
            f"{spec.usage:<26} {spec.summary}"
            for verb, spec in wire.COMMANDS.items()
            if verb in allowed
        ]
        return wire.listing(211, lines, f"{len(lines)} commands")

    def whoami(self, session: Session) -> bytes:
        avatar = session.avatar
        certificate = session.certificate
        lines = [
            f"identity {avatar.identity}",
            f"roles {','.join(avatar.roles)}",
            f"commands {','.join(v for v in wire.COMMANDS if v in avatar.commands)}",
            f"subject {describe_subject(certificate)}",
            f"serial {certificate.serial_number:x}",
            f"expires {certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        ]
        return wire.listing(211, lines, f"you are {avatar.identity}")

    def who(self, session: Session, room: str | None = None) -> bytes:
        identities = self._hub.online(room)
        where = f"in {room}" if room else "online"
        return wire.listing(211, identities, f"{len(identities)} {where}")

    def ping(self, session: Session) -> bytes:
        return wire.reply(200, "PONG")

    def quit(self, session: Session) -> bytes:
        session.finish()
        return wire.reply(221, "bye")

    def msg(self, session: Session, recipient: str, text: str) -> bytes:
        message_id = self._hub.send_direct(session.avatar.identity, recipient, text)
        return wire.reply(250, message_id)

    def join(self, session: Session, room: str) -> bytes:
        if self._hub.join(session, room):
            return wire.reply(200, f"joined {room}")
        return wire.reply(200, f"already in {room}")

    def part(self, session: Session, room: str) -> bytes:
        self._hub.part(session, room)
        return wire.reply(200, f"left {room}")

    def say(self, session: Session, room: str, text: str) -> bytes:
        message_id = self._hub.say(session, session.avatar.identity, room, text)
        return wire.reply(250, message_id)

    def rooms(self, session: Session) -> bytes:
        rooms = self._hub.rooms()
        lines = [f"{room} {count}" for room, count in rooms.items()]
        return wire.listing(211, lines, f"{len(lines)} rooms")

    def kick(self, session: Session, identity: str, reason: str = "") -> bytes:
        by = session.avatar.identity
        count = self._hub.kick(identity, by, reason or "no reason given")
        if not count:
            raise NotFound(f"{identity} is not online")
        log.info(
            "{by} kicked {identity} from {count} session(s)",
            by=by,
            identity=identity,
            count=count,
        )
        sessions = "1 session" if count == 1 else f"{count} sessions"
        return wire.reply(200, f"kicked {identity} ({sessions})")

    def broadcast(self, session: Session, text: str) -> bytes:
        message_id = self._hub.broadcast(session.avatar.identity, text)
        return wire.reply(250, message_id)

    def reload(self, session: Session) -> bytes:
        try:
            report = self._reload()
        except ConfigurationError as error:
            log.error(
                "reload by {identity} failed, configuration unchanged: {error}",
                identity=session.avatar.identity,
                error=str(error),
            )
            raise ServerFault(
                f"reload failed, configuration unchanged: {error}"
            ) from None
        return wire.reply(200, report.summary())
