"""
What each command does, once the avatar has allowed it.

Handlers run on arguments that L{secmsg.wire.parse_arguments} has already
checked, and return the formatted reply.  They refuse by raising a
L{secmsg.errors.CommandError}, which the protocol turns into a reply; they
never decide whether the caller may run them: the avatar did that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from twisted.internet import defer

from secmsg import wire
from secmsg.capabilities import CAPABILITIES, PROTOCOL_VERSION
from secmsg.daemon.delivery import Delivery
from secmsg.daemon.identity import describe_subject
from secmsg.daemon.interfaces import IHub, IMessageStore, ISessionAvatar
from secmsg.daemon.operations import (
    kick_identity,
    refuse_store_failure,
    reload_as,
    store_refusal,
)
from secmsg.daemon.policy import PRESENCE
from secmsg.daemon.reload import ReloadReport
from secmsg.daemon.rooms import Rooms
from secmsg.errors import NotFound, NotPermitted
from secmsg.messages import Kind, Stored, WaitingLimit


class Session(Protocol):
    """
    What a handler needs of the session that sent the command; it is also
    the L{IPeer} the hub knows it by.
    """

    avatar: ISessionAvatar
    certificate: x509.Certificate
    address: str

    def finish(self) -> None:
        """
        Close the session once the current reply has been sent.
        """


Reply = bytes | defer.Deferred[bytes]
"""A command's reply, at once or once the store has answered."""

Handler = Callable[..., Reply]

HISTORY_DEFAULT = 20
"""Messages HISTORY gives when not told how many."""


HISTORY_BYTES = 64 * 1024
"""The most message text a HISTORY reply holds; older messages past it are
left out, so that even a client pipelining HISTORY without reading costs
the daemon little memory before its backlog has it dropped."""


def _history_listing(messages: list[Stored]) -> bytes:
    """
    A HISTORY reply: the newest messages that fit in L{HISTORY_BYTES},
    oldest first, and whether older ones were left out.
    """
    lines: list[str] = []
    size = 0
    for message in reversed(messages):
        line = " ".join(wire.message_fields(message))
        size += len(line.encode("utf-8")) + 5
        if size > HISTORY_BYTES:
            break
        lines.append(line)
    lines.reverse()
    summary = f"{len(lines)} message" + ("" if len(lines) == 1 else "s")
    if len(lines) < len(messages):
        summary += f" (older ones left out: over {HISTORY_BYTES // 1024} KiB)"
    return wire.listing(211, lines, summary)


@dataclass(frozen=True)
class Terms:
    """
    What the operator's settings hold every session to, which HISTORY
    applies and CAPS tells a client, so that it can keep within them.

    @ivar history_max: the most messages one HISTORY gives.
    @ivar max_line_length: the most bytes a line may hold.
    @ivar idle_timeout: seconds a session may be silent before it is closed.
    @ivar waiting_limit: what may wait unacknowledged for one identity.
    @ivar max_rooms_per_identity: the most rooms one identity may be in.
    """

    history_max: int
    max_line_length: int
    idle_timeout: float
    waiting_limit: WaitingLimit
    max_rooms_per_identity: int


def _confirmation(message: Stored) -> bytes:
    """
    The 250 that confirms a stored message by its id.
    """
    return wire.reply(250, str(message.id))


def _number(value: float) -> str:
    """
    A number as CAPS writes it: whole numbers without a fraction.
    """
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class Commands:
    """
    The handlers of every verb, sharing one hub and one reload.
    """

    def __init__(
        self,
        hub: IHub,
        store: IMessageStore,
        delivery: Delivery,
        rooms: Rooms,
        reload: Callable[[bool], ReloadReport],
        terms: Terms,
    ) -> None:
        self._hub = hub
        self._store = store
        self._delivery = delivery
        self._rooms = rooms
        self._reload = reload
        self._terms = terms
        self._handlers: dict[str, Handler] = {
            "HELP": self.help,
            "CAPS": self.caps,
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
            "ACK": self.ack,
            "HISTORY": self.history,
        }

    def run(self, session: Session, verb: str, arguments: tuple[str, ...]) -> Reply:
        """
        Carry out an allowed, well-formed command.

        @return: the reply, or a Deferred of it for a command that waits for
            the store; a Deferred fails with the CommandError to reply with.
        @raise secmsg.errors.CommandError: it could not be carried out.
        """
        return self._handlers[verb](session, *arguments)

    def logged_in(self, session: Session) -> defer.Deferred[None]:
        """
        A session has been greeted: announce it to those who watch
        presence, and send it what waited for it.
        """
        self._hub.greeted(session)
        self._rooms.follow_reads(session.avatar)
        return self._delivery.catch_up(session, session.avatar)

    def shutting_down(self) -> None:
        """
        Every session is about to be closed: none is to hear of the others
        leaving.
        """
        self._hub.shutting_down()

    def help(self, session: Session) -> bytes:
        allowed = session.avatar.commands
        specs = [spec for verb, spec in wire.COMMANDS.items() if verb in allowed]
        # One column for the usages, as wide as the widest one shown.
        width = max((len(spec.usage) for spec in specs), default=0)
        lines = [f"{spec.usage:<{width}}  {spec.summary}" for spec in specs]
        return wire.listing(211, lines, f"{len(lines)} commands")

    def caps(self, session: Session) -> bytes:
        avatar = session.avatar
        terms = self._terms
        parameters = {
            "store": f"waiting-messages={terms.waiting_limit.messages} "
            f"waiting-bytes={terms.waiting_limit.text_bytes}",
            "history": f"max={terms.history_max} default={HISTORY_DEFAULT} "
            f"bytes={HISTORY_BYTES}",
            "rooms": f"max={terms.max_rooms_per_identity}",
            "presence": f"online={'yes' if PRESENCE in avatar.commands else 'no'}",
        }
        rate = avatar.grant.rate
        lines = [
            f"limits line-bytes={terms.max_line_length} "
            f"idle-seconds={_number(terms.idle_timeout)} "
            f"rate={_number(rate.per_second)} burst={rate.burst}",
            *(f"{name} {parameters.get(name, '')}".rstrip() for name in CAPABILITIES),
        ]
        return wire.listing(
            211,
            lines,
            f"protocol {PROTOCOL_VERSION}, {len(CAPABILITIES)} capabilities",
        )

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
        if room is None:
            online = self._hub.online()
            return wire.listing(211, online, f"{len(online)} online")
        members = sorted(self._store.members(room))
        if not members:
            raise NotFound(f"no room {room}")
        return wire.listing(211, members, f"{len(members)} in {room}")

    def ping(self, session: Session) -> bytes:
        return wire.reply(200, "PONG")

    def quit(self, session: Session) -> bytes:
        session.finish()
        return wire.reply(221, "bye")

    def msg(self, session: Session, recipient: str, text: str) -> Reply:
        if not self._delivery.is_known(recipient):
            raise NotFound(f"no such identity {recipient}")
        return self._accepted(
            self._delivery.send(
                Kind.DIRECT, session, session.avatar.identity, recipient, text
            )
        )

    def join(self, session: Session, room: str) -> Reply:
        session.avatar.authorize_room("JOIN", "join", room)
        joined = self._rooms.join(session.avatar, room)
        joined.addCallback(
            lambda new: wire.reply(200, f"{'joined' if new else 'already in'} {room}")
        )
        return refuse_store_failure(joined)

    def part(self, session: Session, room: str) -> Reply:
        parted = self._rooms.part(session.avatar.identity, room)
        parted.addCallback(lambda _: wire.reply(200, f"left {room}"))
        return refuse_store_failure(parted)

    def say(self, session: Session, room: str, text: str) -> Reply:
        identity = session.avatar.identity
        session.avatar.authorize_room("SAY", "say", room)
        if room not in self._store.rooms_of(identity):
            raise NotPermitted("SAY", identity, f"not a member of {room}")
        return self._accepted(
            self._delivery.send(Kind.ROOM, session, identity, room, text)
        )

    def rooms(self, session: Session) -> bytes:
        rooms = self._store.rooms()
        lines = [f"{room} {count}" for room, count in rooms.items()]
        return wire.listing(211, lines, f"{len(lines)} rooms")

    def kick(self, session: Session, identity: str, reason: str = "") -> bytes:
        count = kick_identity(
            self._hub, session.avatar.identity, session.address, identity, reason
        )
        sessions = "1 session" if count == 1 else f"{count} sessions"
        return wire.reply(200, f"kicked {identity} ({sessions})")

    def broadcast(self, session: Session, text: str) -> Reply:
        return self._accepted(
            self._delivery.send(
                Kind.BROADCAST, session, session.avatar.identity, "", text
            )
        )

    def ack(self, session: Session, *words: str) -> Reply:
        up_to = words[0] == "UPTO"
        message_id = int(words[-1])
        avatar = session.avatar
        readable = frozenset(
            room
            for room in self._store.rooms_of(avatar.identity)
            if avatar.may_read(room)
        )
        acknowledged = self._store.acknowledge(
            avatar.identity, message_id, up_to, readable
        )
        acknowledged.addCallback(lambda count: wire.reply(200, f"acknowledged {count}"))
        return refuse_store_failure(acknowledged)

    def history(self, session: Session, target: str, count: str = "") -> Reply:
        identity = session.avatar.identity
        limit = min(int(count or HISTORY_DEFAULT), self._terms.history_max)
        if target.startswith("#"):
            session.avatar.authorize_room("HISTORY", "read", target)
            if target not in self._store.rooms_of(identity):
                raise NotPermitted("HISTORY", identity, f"not a member of {target}")
            found = self._store.room_history(target, limit, HISTORY_BYTES)
        else:
            found = self._store.conversation(identity, target, limit, HISTORY_BYTES)
        found.addCallback(_history_listing)
        return refuse_store_failure(found)

    def _accepted(self, sent: defer.Deferred[Stored]) -> defer.Deferred[bytes]:
        # One step for the 250 and the 503 alike: the hot path of MSG.
        return sent.addCallbacks(_confirmation, store_refusal)

    def reload(self, session: Session, mode: str = "") -> bytes:
        dry = mode == "DRY"
        report = reload_as(self._reload, session.avatar.identity, dry)
        if dry:
            return wire.listing(
                211,
                report.lines(),
                f"a reload would change {len(report.changes)} of "
                f"{report.checked} sessions; nothing changed",
            )
        return wire.reply(200, report.summary())
