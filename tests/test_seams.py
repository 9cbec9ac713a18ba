"""
Every provider at a seam provides its interface, checked by zope.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

from secmsg import wire
from secmsg.daemon.auth import CertificateChecker, PolicyRealm, SessionAvatar
from secmsg.daemon.commands import Commands, Terms
from secmsg.daemon.delivery import Delivery
from secmsg.daemon.hub import InProcessHub
from secmsg.daemon.identity import IdentityRule
from secmsg.daemon.interfaces import IHandshakeObserver, IHub, IPeer, ISessionAvatar
from secmsg.daemon.limits import RoomLimits
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.policy import Grant, RoomRules
from secmsg.daemon.reload import ReloadReport
from secmsg.daemon.rooms import Rooms
from secmsg.daemon.store.memory import MemoryStore
from secmsg.daemon.tls import TLSFiles, VerifyingServerTLS, load_server_tls
from secmsg.messages import WaitingLimit
from secmsg.rate import DEFAULT_RATE
from tests.certs import now
from tests.harness import Instance
from tests.sessions import Network


class IExample(Interface):
    """
    An interface only a test registers with the realm.
    """


class SeamTests(SynchronousTestCase):
    def test_hub(self) -> None:
        """
        The in-process hub provides IHub.
        """
        self.assertTrue(verifyObject(IHub, InProcessHub()))

    def test_avatar(self) -> None:
        """
        The session avatar provides ISessionAvatar.
        """
        avatar = SessionAvatar(
            "alice",
            Grant(
                ("user",),
                frozenset({"PING"}),
                DEFAULT_RATE,
                frozenset({"user"}),
                RoomRules(),
                "test",
            ),
        )
        self.assertTrue(verifyObject(ISessionAvatar, avatar))

    def test_protocol_is_peer_and_observer(self) -> None:
        """
        The session protocol is the hub's peer and the TLS layer's observer.
        """
        protocol = Network().connect("alice").protocol
        self.assertTrue(verifyObject(IPeer, protocol))
        self.assertTrue(verifyObject(IHandshakeObserver, protocol))

    def test_cred_pieces(self) -> None:
        """
        The checker and the realm provide twisted.cred's interfaces.
        """
        self.assertTrue(
            verifyObject(ICredentialsChecker, CertificateChecker(IdentityRule()))
        )
        network = Network()
        realm = PolicyRealm(None, network.hub)
        self.assertTrue(verifyObject(IRealm, realm))

    def test_realm_answers_a_registered_interface_with_its_view(self) -> None:
        """
        A login asking for an interface registered with the realm (as the
        admin interface registers IResource) gets what its view makes of
        the avatar and the mind, with nothing to undo at logout.
        """
        network = Network()
        network.realm.register(IExample, lambda avatar, mind: (avatar.identity, mind))
        certificate = network.ca.issue("alice").certificate
        mind = SimpleNamespace(certificate_chain=[certificate])
        interface, view, logout = network.realm.requestAvatar("alice", mind, IExample)
        self.assertEqual((interface, view), (IExample, ("alice", mind)))
        self.assertIsNone(logout())

    def test_realm_refuses_an_interface_nothing_registered(self) -> None:
        """
        The realm serves no interface that nothing registered, and says
        which it serves.
        """
        network = Network()
        certificate = network.ca.issue("alice").certificate
        mind = SimpleNamespace(certificate_chain=[certificate])
        with self.assertRaises(NotImplementedError) as caught:
            network.realm.requestAvatar("alice", mind, IExample)
        self.assertEqual(str(caught.exception), "secmsg provides ISessionAvatar")

    def test_tls_connection_creator(self) -> None:
        """
        The daemon's TLS layer is a server connection creator.
        """
        settings = Instance(self).settings()
        files = TLSFiles(settings.cert, settings.key, settings.ca, settings.crl)
        creator = VerifyingServerTLS(
            load_server_tls(files, now(), False), IdentityRule().identity_of, Clock()
        )
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, creator))

    def test_every_verb_has_a_handler(self) -> None:
        """
        The grammar and the handlers know the same verbs.
        """
        hub, store = InProcessHub(), MemoryStore()
        delivery = Delivery(hub, store, Clock(), frozenset, Metrics(), WaitingLimit())
        terms = Terms(200, 4096, 900.0, WaitingLimit(), 100)
        rooms = Rooms(hub, store, RoomLimits())
        commands = Commands(hub, store, delivery, rooms, ReloadReport, terms)
        self.assertEqual(set(commands._handlers), wire.COMMAND_NAMES)
