"""
Several daemons on one port: the reuse-port setting, and the endpoint that
binds its socket with SO_REUSEPORT for the reactor to adopt.
"""

from __future__ import annotations

import errno
import os
import socket
from types import SimpleNamespace
from typing import Any

from twisted.internet import tcp
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from secmsg.daemon import listen as listen_module
from secmsg.daemon.listen import LISTEN_BACKLOG, listen_endpoints
from secmsg.daemon.reuseport import ReusePortEndpoint
from secmsg.errors import ConfigurationError
from secmsg.tap import Options
from tests.test_listen import SettingsFromText


class AdoptingReactor(MemoryReactorClock):
    """
    A memory reactor that adopts a listening socket as Twisted's real
    reactors do (L{twisted.internet.posixbase}): a real TCP port over a
    duplicate of the descriptor, so that its socket can be looked at
    without running the global reactor.
    """

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: Any, factory: Any
    ) -> IListeningPort:
        # Private, but it is the very call posixbase's adoptStreamPort makes.
        port = tcp.Port._fromListeningDescriptor(
            self, fileDescriptor, addressFamily, factory
        )
        port.startListening()
        return port  # type: ignore[no-any-return]


class ReusePortEndpointTests(SynchronousTestCase):
    """
    The endpoint's socket shares its port with others that ask to.
    """

    def setUp(self) -> None:
        self.reactor = AdoptingReactor()
        self.factory = Factory.forProtocol(Protocol)

    def listen(self, endpoint: IStreamServerEndpoint) -> Any:
        """
        Listen on C{endpoint}, which does so at once, and stop at cleanup.
        """
        result = self.successResultOf(endpoint.listen(self.factory))
        self.addCleanup(self.stop, result)
        return result

    def stop(self, port: Any) -> None:
        port.stopListening()
        # The port closes its socket a reactor turn later.
        self.reactor.advance(0)

    def test_endpoint_provides_the_interface(self) -> None:
        """
        The daemon's services take it as any other server endpoint.
        """
        endpoint = ReusePortEndpoint(self.reactor, 0, "127.0.0.1", LISTEN_BACKLOG)
        self.assertTrue(verifyObject(IStreamServerEndpoint, endpoint))

    def test_listening_socket_has_so_reuseport(self) -> None:
        """
        The socket the reactor listens on has SO_REUSEPORT and SO_REUSEADDR
        set, on the interface and port asked for.
        """
        port = self.listen(ReusePortEndpoint(self.reactor, 0, "127.0.0.1", 5))
        options = [
            port.socket.getsockopt(socket.SOL_SOCKET, option)
            for option in (socket.SO_REUSEPORT, socket.SO_REUSEADDR)
        ]
        self.assertEqual(options, [1, 1])
        self.assertEqual(port.getHost().host, "127.0.0.1")
        self.assertNotEqual(port.getHost().port, 0)

    def test_second_endpoint_binds_the_port_the_first_listens_on(self) -> None:
        """
        While one listens, a second endpoint (another daemon's) listens on
        the same port too; a socket without SO_REUSEPORT still cannot.
        """
        first = self.listen(ReusePortEndpoint(self.reactor, 0, "127.0.0.1", 5))
        number = first.getHost().port
        second = self.listen(ReusePortEndpoint(self.reactor, number, "127.0.0.1", 5))
        self.assertEqual(second.getHost().port, number)
        with socket.socket() as intruder:
            error = self.assertRaises(OSError, intruder.bind, ("127.0.0.1", number))
        self.assertEqual(error.errno, errno.EADDRINUSE)

    def test_ipv6_interface_listens_on_ipv6(self) -> None:
        """
        An interface with a colon is an IPv6 address, as for Twisted's own
        endpoints, and two endpoints share its port.
        """
        if not socket.has_ipv6:
            raise SkipTest("no IPv6 on this system")
        try:
            first = self.listen(ReusePortEndpoint(self.reactor, 0, "::1", 5))
        except CannotListenError as error:
            raise SkipTest(f"no IPv6 loopback: {error}") from None
        number = first.getHost().port
        second = self.listen(ReusePortEndpoint(self.reactor, number, "::1", 5))
        self.assertEqual(
            (first.socket.family, second.getHost().host), (socket.AF_INET6, "::1")
        )

    def test_original_descriptor_is_closed_once_adopted(self) -> None:
        """
        The reactor keeps a duplicate; the endpoint's own descriptor is
        closed, so that a daemon leaks none per port.
        """
        given: list[int] = []
        adopt = self.reactor.adoptStreamPort

        def recording(fileDescriptor: int, addressFamily: Any, factory: Any) -> Any:
            given.append(fileDescriptor)
            return adopt(fileDescriptor, addressFamily, factory)

        self.patch(self.reactor, "adoptStreamPort", recording)
        port = self.listen(ReusePortEndpoint(self.reactor, 0, "127.0.0.1", 5))
        self.assertNotEqual(given, [port.fileno()])
        error = self.assertRaises(OSError, os.fstat, given[0])
        self.assertEqual(error.errno, errno.EBADF)

    def test_port_held_without_so_reuseport_fails_as_twisteds_would(self) -> None:
        """
        A port another program holds without SO_REUSEPORT fails with
        Twisted's CannotListenError, which the daemon words with the
        address and its fix, as for any port in use.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        number = holder.getsockname()[1]
        endpoint = ReusePortEndpoint(self.reactor, number, "127.0.0.1", 5)
        failure: Failure = self.failureResultOf(
            endpoint.listen(self.factory), CannotListenError
        )
        self.assertEqual(
            (failure.value.interface, failure.value.port), ("127.0.0.1", number)
        )
        self.assertEqual(failure.value.socketError.errno, errno.EADDRINUSE)

    def test_reuse_port_makes_the_port_settings_endpoint_share(self) -> None:
        """
        listen_endpoints gives the sharing endpoint for port and interface
        when reuse-port is set, and Twisted's own when it is not.
        """
        shared = listen_endpoints(self.reactor, "listen", (), "127.0.0.1", 0, True)
        alone = listen_endpoints(self.reactor, "listen", (), "127.0.0.1", 0, False)
        self.assertEqual(
            [type(shared[0]), type(alone[0])], [ReusePortEndpoint, TCP4ServerEndpoint]
        )


class ReusePortSettingTests(SettingsFromText):
    """
    reuse-port: off unless asked for, a TOML boolean or the flag, and
    refused where the daemon does not make the socket itself.
    """

    def refusal(self, config: str | None = None, **flags: object) -> str:
        error = self.assertRaises(ConfigurationError, self.settings, config, **flags)
        return str(error)

    def test_off_unless_asked_for(self) -> None:
        """
        A daemon shares its port only when told to, in the file or by flag.
        """
        self.assertEqual(
            [
                self.settings().reuse_port,
                self.settings("reuse-port = false\n").reuse_port,
                self.settings("reuse-port = true\n").reuse_port,
                self.settings(reuse_port=True).reuse_port,
            ],
            [False, False, True, True],
        )

    def test_flag_is_unset_until_given(self) -> None:
        """
        Without --reuse-port the option is None, so the file's setting
        stands; with it, the setting is on.
        """
        absent, given = Options(), Options()
        absent.parseOptions([])
        given.parseOptions(["--reuse-port"])
        self.assertEqual((absent["reuse-port"], given["reuse-port"]), (None, True))

    def test_values_other_than_true_or_false_are_refused(self) -> None:
        """
        A string or number in the file is refused naming the file and the
        key, not read as Python would read it ("false" is truthy).
        """
        for value, shown in (('"false"', "'false'"), ('"yes"', "'yes'"), ("1", "1")):
            with self.subTest(value=value):
                refusal = self.refusal(f"reuse-port = {value}\n")
                self.assertTrue(
                    refusal.endswith(f": reuse-port: {shown} is not true or false"),
                    refusal,
                )

    def test_refused_beside_endpoint_strings(self) -> None:
        """
        Endpoint strings name sockets made by Twisted's parser or systemd,
        which reuse-port cannot reach: refused, naming the setting and the
        one it clashes with.
        """
        why = (
            "reuse-port shares only the ports the daemon binds itself, so "
            "give port and interface (admin-port and admin-interface) in "
            "place of endpoint strings"
        )
        line = self.refusal(reuse_port=True, listen=["tcp:7443"])
        admin = self.refusal('admin-listen = "tcp:7445"\nreuse-port = true\n')
        self.assertEqual(line, f"--reuse-port: set together with listen; {why}")
        self.assertTrue(
            admin.endswith(f": reuse-port: set together with admin-listen; {why}"),
            admin,
        )

    def test_taken_where_a_port_flag_replaces_the_files_listen(self) -> None:
        """
        A --port flag replaces the file's listen, and then the daemon binds
        the port itself: reuse-port applies.
        """
        settings = self.settings('listen = ["tcp:1"]\nreuse-port = true\n', port="7443")
        self.assertEqual((settings.listen, settings.reuse_port), ((), True))

    def test_refused_where_the_system_has_no_so_reuseport(self) -> None:
        """
        A system without SO_REUSEPORT is told at start, not at the first
        bind of a port that would not be shared.
        """
        self.patch(listen_module, "socket", SimpleNamespace())
        self.assertEqual(
            self.refusal(reuse_port=True),
            "--reuse-port: this system has no SO_REUSEPORT, by which daemons "
            "share a port",
        )
