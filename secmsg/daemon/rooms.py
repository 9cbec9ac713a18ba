"""
Room membership, which belongs to the identity: C{JOIN} lasts until
C{PART}, or until a reload takes away the right to join, across sessions
and restarts, as users of always-on chat expect.

A membership is a cursor in the store (L{IMessageStore.join}): the member
reads what is said in the room from then on, and what it missed while
offline waits for its next session.  The hub tells the room's readers once
the change is committed.  Rooms are bounded (L{RoomLimits}): the rooms an
identity is in, and the rooms the daemon holds; a JOIN past either is
refused with C{403} in words and changes nothing.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from secmsg.daemon.interfaces import IHub, IMessageStore, IPeer, ISessionAvatar
from secmsg.daemon.limits import RoomLimits
from secmsg.errors import NotFound, NotPermitted

log = Logger()


class Rooms:
    """
    Joins and parts, made durable in the store and told through the hub.
    """

    def __init__(self, hub: IHub, store: IMessageStore, limits: RoomLimits) -> None:
        self._hub = hub
        self._store = store
        self._limits = limits

    def of(self, identity: str) -> frozenset[str]:
        """
        The rooms C{identity} is a member of.
        """
        return self._store.rooms_of(identity)

    def join(self, avatar: ISessionAvatar, room: str) -> defer.Deferred[bool]:
        """
        Make C{avatar}'s identity a member of C{room}, that what is said
        there is kept for if the session may read it; fire with whether it
        was not one already, once that is committed and the room told.

        @raise NotPermitted: past a bound on rooms; nothing changed.
        """
        identity = avatar.identity
        if room in self._store.rooms_of(identity):
            if not avatar.may_read(room):
                return defer.succeed(False)
            # A member that joined by a session that might not read the
            # room has what is said there kept for it from now.
            started = self._store.start_reading(identity, room)
            return started.addCallback(lambda _: False)
        self._check_limits(identity, room)
        joined = self._store.join(identity, room, avatar.may_read(room))

        def told(new: bool) -> bool:
            if new:
                self._hub.joined(room, identity, self._store.members(room))
            return new

        return joined.addCallback(told)

    def part(self, identity: str, room: str) -> defer.Deferred[None]:
        """
        Take C{identity} out of C{room}; fire once that is committed and
        the room told.

        @raise NotFound: it was not a member.
        """
        if room not in self._store.rooms_of(identity):
            raise NotFound(f"you are not in {room}")
        members = self._store.members(room)
        parted = self._store.part(identity, room)

        def told(was_member: bool) -> None:
            if was_member:
                self._hub.parted(room, identity, members)

        return parted.addCallback(told)

    def follow_reads(self, avatar: ISessionAvatar) -> None:
        """
        A session of C{avatar}'s identity has logged in, or a reload has
        given it new rights: in each of the identity's rooms that it may
        read, what is said is kept for the identity from now, if it was
        not (it joined by a session that might not read the room).  A
        session that may not read never stops what another could: rights
        follow the certificate, and one identity may hold several.
        """
        for room in self.of(avatar.identity):
            if avatar.may_read(room):
                self._store.start_reading(avatar.identity, room).addErrback(
                    self._log_failure, "keep messages for a member of", room
                )

    def leave_refused(self, identity: str, peer: IPeer, room: str) -> None:
        """
        Take C{identity} out of C{room}, which its session C{peer} may no
        longer join, and tell that session so once it is done.
        """
        if room not in self.of(identity):
            return
        parted = self.part(identity, room)
        parted.addCallbacks(
            lambda _: peer.notice(
                f"you have left {room}: the policy no longer lets you join it"
            ),
            self._log_failure,
            errbackArgs=("part", room),
        )

    def _log_failure(self, failure: Failure, doing: str, room: str) -> None:
        log.error(
            "message store: could not {doing} {room}: {error}",
            doing=doing,
            room=room,
            error=failure.getErrorMessage(),
        )

    def _check_limits(self, identity: str, room: str) -> None:
        """
        Refuse C{identity} one more room, or the daemon one more, past the
        operator's bounds, saying which and what to do.

        @raise NotPermitted: naming the bound.
        """
        joined = len(self._store.rooms_of(identity))
        if joined >= self._limits.max_per_identity:
            raise NotPermitted(
                "JOIN",
                identity,
                f"already in {joined} rooms, the most one identity may be in "
                f"(max-rooms-per-identity); PART one to join another",
            )
        if self._store.members(room):
            return
        held = len(self._store.rooms())
        if held >= self._limits.max_rooms:
            raise NotPermitted(
                "JOIN",
                identity,
                f"the server holds {held} rooms, the most it may "
                f"(max-rooms); join one that has members, or try again later",
            )
