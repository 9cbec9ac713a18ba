"""
The seams of secmsg.

The protocol talks to the routing hub and the session avatar only through
these interfaces, so that a multi-node hub or another avatar kind can be put
in without touching it.  Each interface has a real provider and tests check
it with C{verifyObject}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence, Set
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from secmsg.errors import CertificateRefused
from secmsg.messages import Draft, Kind, Pending, Retention, Stored

if TYPE_CHECKING:
    # The daemon's modules that provide or use these seams import this one,
    # which comes first in the daemon's order: their types are named for
    # the type checker only, as a runtime import would make a cycle (tls,
    # the store's worker) or turn that order round (policy).
    from cryptography import x509

    from secmsg.daemon.policy import Grant
    from secmsg.daemon.store.worker import Job, LongJob
    from secmsg.daemon.tls import TrustVerdict


class ISessionAvatar(Interface):
    """
    What an authenticated identity may do in one session: the result of a
    twisted.cred login, and the one place where authorization is decided.
    """

    identity = Attribute("The identity (a name token) this session belongs to.")
    roles = Attribute("The roles the policy assigns, as a tuple of names.")
    commands = Attribute("The frozenset of command names the roles grant.")
    grant = Attribute("The secmsg.daemon.policy.Grant in force: roles, commands, rate.")

    def authorize(verb: str) -> None:
        """
        Allow C{verb} or refuse it.

        @raise secmsg.errors.NotPermitted: naming the rule that denied.
        """

    def authorize_room(verb: str, action: str, room: str) -> None:
        """
        Allow C{action} (C{join}, C{read} or C{say}) in C{room}, asked on
        behalf of the command C{verb}, or refuse it.

        @raise secmsg.errors.NotPermitted: naming the room rule that denied.
        """

    def may_read(room: str) -> bool:
        """
        Whether this session may be sent the messages of C{room}.
        """

    def regrant(grant: Grant) -> None:
        """
        Replace the grant after a policy reload, so that the new policy
        applies to the live session at once.
        """


class IPeer(Interface):
    """
    One live session as the hub sees it: something to push lines to and to
    close.  The protocol provides it and is the twisted.cred mind.
    """

    certificate_chain = Attribute(
        "The peer's verified chain as cryptography certificates, leaf first."
    )
    address = Attribute("Where the peer connects from, as host:port.")

    def push(line: bytes, message_id: int) -> None:
        """
        Send the formatted line that delivers a stored message.  A new
        session holds such lines back until L{release}, since what waited
        for it must come first; nothing is sent once the session is closing.
        """

    def send_waiting(lines: Sequence[tuple[int, bytes]]) -> Deferred[bool]:
        """
        Send C{(id, line)} messages that waited for the session, now, while
        newer ones are held back.

        @return: fires with C{True} once the peer can take more, or C{False}
            if the session has ended.
        """

    def release() -> None:
        """
        Send the messages held back that L{send_waiting} did not already
        send, and push as usual from then on.
        """

    def announce(line: bytes) -> None:
        """
        Send a formatted presence line (C{JOINED}, C{PARTED}, C{ONLINE},
        C{OFFLINE}): stored nowhere, so never sent again, but held back
        with the pushes until L{release} so that it keeps its place among
        them.
        """

    def close(reason: str) -> None:
        """
        Tell the peer C{CLOSED <reason>} and end the session.
        """

    def notice(text: str) -> None:
        """
        Tell the peer C{NOTICE <text>}: something about its session that
        it did not ask for, such as a certificate about to expire.
        """

    def kick(by: str, reason: str) -> None:
        """
        Tell the peer C{KICKED <by> <reason>} and end the session.
        """


class IHub(Interface):
    """
    Routing: who is online, and delivery and presence to their sessions.
    Who reads what (a room's members) is the store's; the hub is told.

    The in-process provider keeps all of it in memory; a later backplane may
    spread it over several daemons behind the same methods.
    """

    def attach(avatar: ISessionAvatar, peer: IPeer) -> None:
        """
        Register a session that has just logged in.
        """

    def greeted(peer: IPeer) -> None:
        """
        An attached session has been greeted: if it is its identity's
        first, tell the sessions that hold PRESENCE C{ONLINE <identity>};
        from now on it is told so of others if it holds PRESENCE itself.
        """

    def detach(peer: IPeer) -> None:
        """
        Forget a session that has ended; if it was the identity's last
        greeted session, the sessions that hold PRESENCE are told
        C{OFFLINE}.  Its identity stays in its rooms.
        """

    def shutting_down() -> None:
        """
        Every session of this daemon is about to be closed: tell no one of
        the departures that follow, since whoever would hear of them here
        is going too, and telling each session of all the others would
        cost the square of their number.  There is no way back.
        """

    def regranted(peer: IPeer) -> None:
        """
        A reload changed the grant of C{peer}'s avatar: whether it holds
        PRESENCE follows the new one.
        """

    def sessions() -> list[tuple[ISessionAvatar, IPeer]]:
        """
        Every live session, for reload to re-check.
        """

    def online() -> list[str]:
        """
        The sorted identities online.
        """

    def is_online(identity: str) -> bool:
        """
        Whether C{identity} has a session.
        """

    def sessions_elsewhere(identity: str) -> int:
        """
        How many sessions C{identity} holds on the cluster's other daemons,
        as of their last beat: what a session limit per identity counts
        besides this daemon's own.  0 for a daemon alone.
        """

    def held_elsewhere() -> list[tuple[str, str, int]]:
        """
        The sessions of the cluster's other daemons, as their last beats
        said: C{(daemon, identity, sessions)}, sorted, for the admin
        interface's list.  Empty for a daemon alone.
        """

    def deliver(
        message: Stored, recipients: Set[str], exclude: IPeer | None = None
    ) -> set[str]:
        """
        Push a stored L{secmsg.messages.Stored} message to the sessions of
        C{recipients}, the identities it is for, but C{exclude}; a room's
        message only to the sessions that may read the room.

        @return: the identities whose sessions it was pushed to.
        """

    def joined(room: str, identity: str, members: Set[str]) -> None:
        """
        C{identity} has joined C{room}: tell the sessions of the room's
        C{members} that may read it (but C{identity}'s own) C{JOINED <room>
        <identity>}.
        """

    def parted(room: str, identity: str, members: Set[str]) -> None:
        """
        C{identity} has left C{room}: tell the sessions of C{members} that
        may read it C{PARTED <room> <identity>}, as L{joined} does.
        """

    def kick(identity: str, by: str, reason: str) -> int:
        """
        Kick every session of C{identity}; return how many there were.
        """


class IBus(Interface):
    """
    What carries the events of a cluster's daemons to each other: Redis
    pub/sub in the daemon, memory in tests.  It is unreliable: what it
    loses, a daemon reads from the shared database.
    """

    def start(receive: Callable[[str], None], reached: Callable[[], None]) -> None:
        """
        Subscribe: from now on C{receive} each bus message (this daemon's
        own too), and be told C{reached} each time the subscription is
        made, the first time and each time the bus comes back after it
        was lost.
        """

    def publish(text: str) -> None:
        """
        Send C{text} to every daemon subscribed; dropped while the bus is
        out of reach.
        """

    def stop() -> Deferred[None]:
        """
        Unsubscribe and disconnect.
        """


class IMessageStore(Interface):
    """
    Where accepted messages are kept until their readers have them, and
    for history.  A message is appended once to its stream (an identity's
    inbox, a room, the broadcasts); what each identity has been sent and
    has acknowledged of a stream is a cursor.  Room membership is such a
    cursor, so it belongs to the identity and lasts until C{PART}.

    Every method that reads or writes the data answers with a Deferred,
    since a durable store works off the reactor's thread; a write fires
    only once it is committed, and fails with L{secmsg.errors.StoreError}
    if it could not be.  Who reads what, and how much waits for each, are
    answered from memory.  Two providers: SQLite in the data directory,
    and memory for tests.
    """

    def accept(draft: Draft, recipients: Set[str]) -> Deferred[Stored]:
        """
        Append a L{secmsg.messages.Draft} to its stream; fire with the
        L{secmsg.messages.Stored} message.  It waits, from now until each
        acknowledges it, for C{recipients}: its L{audience}, which the
        caller asked for to hold each to its bound on what may wait.
        """

    def audience(kind: Kind, sender: str, target: str) -> frozenset[str]:
        """
        The identities a message would be for: the recipient of a direct
        message, the members of a room, or every identity known, but the
        sender of a room message or a broadcast; answered from memory.
        """

    def pending(
        identity: str, after: int, limit: int, rooms: frozenset[str]
    ) -> Deferred[list[Pending]]:
        """
        Fire with up to C{limit} L{secmsg.messages.Pending} messages for
        C{identity} that it has not acknowledged and whose ids are above
        C{after}, oldest first: of its inbox, the broadcasts and those of
        its rooms in C{rooms} (the ones the asking session may read).
        """

    def sent(deliveries: Iterable[tuple[str, Stored]]) -> None:
        """
        Note that each C{(identity, message)} was pushed to a session of
        that identity, so that a later delivery of it is marked as a
        repeat.  The note rides on the next write rather than costing a
        transaction of its own.
        """

    def acknowledge(
        identity: str, message_id: int, up_to: bool, rooms: frozenset[str]
    ) -> Deferred[int]:
        """
        Mark one message for C{identity}, or with C{up_to} every one up to
        and including it that was sent to it, as received; fire with how
        many were not acknowledged before.  With C{up_to}, only the
        messages of C{identity}'s inbox, of the broadcasts and of the rooms
        in C{rooms} (those the acknowledging session may read, and so was
        sent) are taken.

        @raise secmsg.errors.NotFound: (as the Deferred's failure) the
            message is none of C{identity}'s.
        """

    def join(identity: str, room: str, reads: bool) -> Deferred[bool]:
        """
        Make C{identity} a member of C{room}, reading what is said there
        from now on (unless C{reads} is false: its session may join but
        not read the room, and nothing is kept for it); fire with whether
        it was not one already.  It is a member, for L{audience} and
        L{members}, from the call on.
        """

    def start_reading(identity: str, room: str) -> Deferred[None]:
        """
        Keep what is said in C{room} for C{identity}, a member that joined
        it by a session that might not read it, from now on: a session of
        it that may has come (a login, a reload).
        """

    def part(identity: str, room: str) -> Deferred[bool]:
        """
        Take C{identity} out of C{room}; what waited for it there no longer
        does.  Fire with whether it was a member.
        """

    def rooms_of(identity: str) -> frozenset[str]:
        """
        The rooms C{identity} is a member of; answered from memory.
        """

    def members(room: str) -> frozenset[str]:
        """
        The members of C{room}; answered from memory.
        """

    def rooms() -> dict[str, int]:
        """
        Each room with members, sorted, and how many it has; answered from
        memory.
        """

    def room_history(room: str, limit: int, budget: int) -> Deferred[list[Stored]]:
        """
        Fire with the newest C{limit} messages said in C{room}, oldest
        first; fewer if their texts pass C{budget} bytes (the one that
        passes it is included, so that a caller can tell it was cut).
        """

    def conversation(
        identity: str, other: str, limit: int, budget: int
    ) -> Deferred[list[Stored]]:
        """
        Fire with the newest C{limit} direct messages between two
        identities, either way, oldest first, within C{budget} as
        L{room_history} is.
        """

    def remember(identity: str, when: datetime) -> Deferred[None]:
        """
        Know C{identity} from now on (it logged in, or the policy names it
        and a message is sent to it): its inbox is kept while it is
        offline, and it reads the broadcasts sent from now.  Nothing is
        written for an identity already known.
        """

    def knows(identity: str) -> bool:
        """
        Whether C{identity} is known; answered from memory.
        """

    def identities() -> frozenset[str]:
        """
        Every identity known; answered from memory.
        """

    def waiting(identity: str, kind: Kind | None = None) -> tuple[int, int]:
        """
        How many messages of C{kind} (or of every kind) wait for
        C{identity} unacknowledged, and how many bytes (UTF-8) their texts
        hold; answered from memory, so that every direct message can be
        held to L{secmsg.messages.WaitingLimit}, and a login with nothing
        waiting costs no query.  A message counts from the moment L{accept}
        is called (unless that fails) until it is acknowledged, its room
        parted, or removed by retention.
        """

    def purge(now: datetime, retention: Retention) -> Deferred[int]:
        """
        Remove what L{secmsg.messages.Retention} no longer keeps; fire with
        how many messages went.
        """

    def backup(destination: Path, replace: bool) -> Deferred[int]:
        """
        Write a consistent copy of the store to C{destination}, a file
        readable by its owner only, whole or not at all, while the store
        goes on serving; fire with its size in bytes.  Every message
        confirmed before the backup began is in it.

        @param replace: whether an existing C{destination} may be replaced.
        @raise secmsg.errors.BackupRefused: (as the Deferred's failure) the
            destination is in the way or cannot be written, a backup is
            already under way, or this store has nothing on disk to copy.
        """

    def close() -> Deferred[None]:
        """
        Finish what was submitted and release the store.
        """


class IStoreWorker(Interface):
    """
    What runs the SQLite store's jobs: one thread that owns the connection
    in the daemon, the caller's own thread in tests.
    """

    def submit(job: Job) -> Deferred[Any]:
        """
        Run C{job} (a function of the connection); fire with its result
        once its transaction has committed, or fail with
        L{secmsg.errors.StoreError}.
        """

    def submit_long(job: LongJob) -> Deferred[Any]:
        """
        Run C{job} (a function of the connection and of a pause) outside
        any transaction, in its turn; it calls the pause between its steps,
        which runs the jobs submitted meanwhile.  Fire with its result, or
        fail with what it raised.
        """

    def stop() -> Deferred[None]:
        """
        Finish every job submitted, refuse new ones, and close the
        connection; fire once that is done.
        """


class IHandshakeObserver(Interface):
    """
    Told by the TLS layer why it refused a peer's certificate, so that the
    refusal is logged once, with the peer address, when the connection ends;
    or how to judge an accepted chain again, should the trust change before
    the connection is a session.
    """

    def certificate_refused(refusal: CertificateRefused) -> None:
        """
        The verify callback refused the certificate, for this reason.
        """

    def certificate_accepted(
        chain: list[x509.Certificate], verdict: TrustVerdict
    ) -> None:
        """
        The verify callback accepted C{chain} (leaf first, parsed there, so
        that nothing parses it again); C{verdict} judges it again by the
        trust in force when the handshake completes and at login.
        """
