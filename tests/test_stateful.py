"""
Whole sessions under hypothesis: people log in, send any command with any
argument, leave, and the operator reloads between policies, in any order.

After every step: each command got exactly one reply, nobody holds a
command the policy in force does not grant, a command outside one's grant
was refused with 403, no reply was a server fault, every push was of a
kind the client knows, no session was told of its own presence, and no
identity is in more rooms, nor the daemon holds more, than the limits.
A room an identity is in needs no session that may join it now: its
membership outlives the sessions, and the policy may change while it is
away.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
)
from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.daemon.identity import IdentityRule
from secmsg.daemon.limits import Limits, RoomLimits
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.reload import ReloadableFiles, Reloader
from secmsg.daemon.tls import TLSFiles, VerifyingServerTLS, load_server_tls
from tests.certs import now
from tests.harness import POLICY
from tests.sessions import Network, Session

STRICTER = (
    POLICY.replace('default_roles = ["guest"]', "default_roles = []").replace(
        'bob = ["user"]', 'bob = ["guest"]'
    )
    + '[[rooms]]\npattern = "#ops-*"\njoin = ["admin"]\n'
)
"""The policy reloads switch to and from: unlisted identities refused, bob
demoted, #ops-* for admins only."""

POLICIES = (POLICY, STRICTER)

IDENTITIES = ("alice", "bob", "admin", "zoe")

ROOM_LIMITS = RoomLimits(max_rooms=1, max_per_identity=1)
"""Fewer rooms than the arguments name, so that JOIN meets both limits:
one identity in a room is refused another by its own, any other by the
daemon's."""

ARGUMENTS = st.sampled_from(
    [
        "",
        "alice",
        "bob",
        "zoe hello there",
        "#ops-db",
        "#lobby",
        "#lobby hi all",
        "#tea",
        "UPTO 3",
        "1",
        "DRY",
        "bob bye",
    ]
)

_FINAL_REPLY = re.compile(r"[0-9]{3} ")

_PRESENCE = frozenset({"JOINED", "PARTED", "ONLINE", "OFFLINE"})


class SessionMachine(RuleBasedStateMachine):
    """
    A network of sessions with a real reloader over policy files.
    """

    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="secmsg-stateful-"))
        self.network = Network(
            POLICY,
            reload=lambda dry: self.reloader.reload(dry),
            limits=Limits(rooms=ROOM_LIMITS),
        )
        clock = self.network.clock
        clock.advance(now().timestamp() - clock.seconds())
        ca, server = self.network.ca, self.network.ca.server()
        for name, data in [
            ("ca.pem", ca.pem),
            ("crl.pem", ca.crl_pem()),
            ("server.pem", server.certificate_pem),
            ("server.key", server.key_pem),
        ]:
            (self.directory / name).write_bytes(data)
        self.policy = 0
        self.gone: set[Session] = set()
        self.write_policy()
        d = self.directory
        files = ReloadableFiles(
            TLSFiles(d / "server.pem", d / "server.key", d / "ca.pem", d / "crl.pem"),
            d / "policy.toml",
        )
        tls = VerifyingServerTLS(
            load_server_tls(files.tls, now(), False), IdentityRule().identity_of, clock
        )
        self.reloader = Reloader(
            files,
            clock,
            tls,
            self.network.realm,
            self.network.hub,
            self.network.rooms,
            Metrics(),
        )

    def write_policy(self) -> None:
        (self.directory / "policy.toml").write_text(POLICIES[self.policy])

    def teardown(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    @rule(target=sessions, identity=st.sampled_from(IDENTITIES))
    def log_in(self, identity: str) -> Session:
        session = self.network.connect(identity)
        (first, *_) = session.take()
        grant = self.network.realm.policy.grant_for(
            identity, session.protocol.certificate
        )
        if grant is None:
            assert first.startswith("CLOSED login refused"), first
            assert session.closed
        else:
            assert first.startswith("200 secmsg "), first
            assert f"you are {identity}" in first, first
        return session

    @rule(
        session=sessions,
        verb=st.sampled_from(sorted(wire.COMMANDS)),
        argument=ARGUMENTS,
    )
    def command(self, session: Session, verb: str, argument: str) -> None:
        if session.closed or session in self.gone:
            return
        avatar = session.protocol.avatar
        lines = session.send(f"{verb} {argument}".rstrip())
        replies = [line for line in lines if _FINAL_REPLY.match(line)]
        assert len(replies) == 1, (verb, argument, lines)
        (reply,) = replies
        assert not reply.startswith("5"), reply
        pushes = [
            push
            for push in map(wire.parse_server_line, lines)
            if isinstance(push, wire.PushLine)
        ]
        assert all(push.kind for push in pushes), lines
        assert not any(
            push.kind in _PRESENCE and push.fields[-1] == avatar.identity
            for push in pushes
        ), lines
        if verb not in avatar.commands:
            assert reply.startswith("403 "), (verb, reply)
        if reply.startswith("2"):
            assert verb in avatar.commands, (verb, reply)

    @rule(session=sessions, room=st.sampled_from(("#lobby", "#tea", "#ops-db")))
    def join(self, session: Session, room: str) -> None:
        """
        JOIN as the model expects: refused by the policy, by the rooms the
        identity is in, or by the rooms the daemon holds, changing nothing;
        else taken.
        """
        if session.closed or session in self.gone:
            return
        store, avatar = self.network.store, session.protocol.avatar
        before = store.rooms()
        theirs = store.rooms_of(avatar.identity)
        already = room in theirs
        lines = session.send(f"JOIN {room}")
        (reply,) = [line for line in lines if _FINAL_REPLY.match(line)]
        grant = avatar.grant
        if "JOIN" not in avatar.commands or grant.rooms.refusal(
            "join", room, grant.lineage
        ):
            expected = "403 JOIN not permitted for "
        elif already:
            expected = f"200 already in {room}"
        elif room not in theirs and len(theirs) >= ROOM_LIMITS.max_per_identity:
            expected = "(max-rooms-per-identity); PART one to join another"
        elif room not in before and len(before) >= ROOM_LIMITS.max_rooms:
            expected = "(max-rooms); join one that has members"
        else:
            expected = f"200 joined {room}"
        assert expected in reply, (expected, reply, before, theirs)
        if reply.startswith("403 "):
            assert store.rooms() == before, (reply, before, store.rooms())
            assert room not in store.rooms_of(avatar.identity), reply

    @rule(session=sessions)
    def leave(self, session: Session) -> None:
        if session not in self.gone:
            self.gone.add(session)
            session.protocol.connectionLost(None)

    @rule(dry=st.booleans())
    def reload(self, dry: bool) -> None:
        before = {id(a): a.commands for a, _ in self.network.hub.sessions()}
        self.policy = 1 - self.policy
        self.write_policy()
        report = self.reloader.reload(dry)
        assert report.checked == len(before)
        if dry:
            after = {id(a): a.commands for a, _ in self.network.hub.sessions()}
            assert after == before, "a dry run changed a session"
            # Put back the file of the policy still in force.
            self.policy = 1 - self.policy
            self.write_policy()

    @invariant()
    def nobody_holds_more_than_the_policy_grants(self) -> None:
        policy = self.network.realm.policy
        for avatar, peer in self.network.hub.sessions():
            grant = policy.grant_for(avatar.identity, peer.certificate_chain[0])
            assert grant is not None, avatar.identity
            assert avatar.commands == grant.commands, avatar.identity

    @invariant()
    def nobody_is_in_more_rooms_than_the_limits(self) -> None:
        store = self.network.store
        assert all(
            len(store.rooms_of(identity)) <= ROOM_LIMITS.max_per_identity
            for identity in IDENTITIES
        )
        assert len(store.rooms()) <= ROOM_LIMITS.max_rooms, store.rooms()


SessionMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None
)


class StatefulTests(SynchronousTestCase):
    def test_sessions_keep_the_invariants(self) -> None:
        """
        Any sequence of logins, commands, departures and reloads keeps one
        reply per command and every right within the policy in force.
        """
        SessionMachine.TestCase("runTest").runTest()
