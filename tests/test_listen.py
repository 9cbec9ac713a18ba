"""
Where the daemon listens: the listen settings, the endpoints they name,
and the refusal of endpoints that would bring their own TLS.
"""

from __future__ import annotations

import os
import pwd

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from secmsg.daemon.limits import address_group
from secmsg.daemon.listen import describe_listening, server_endpoint
from secmsg.daemon.ownership import HandOverService, Owner, hand_over
from secmsg.daemon.settings import Settings, load_settings
from secmsg.errors import ConfigurationError
from secmsg.tap import Options, owner_of
from tests.harness import capture_log, temporary_directory

REQUIRED = {
    "cert": "c.pem",
    "key": "k.pem",
    "ca": "ca.pem",
    "policy": "p.toml",
    "data-dir": "data",
}


class SettingsFromText(SynchronousTestCase):
    """
    Settings loaded from a config file's text and flags, beside the
    settings every daemon needs.
    """

    def settings(self, config: str | None = None, **flags: object) -> Settings:
        path = None
        if config is not None:
            file = temporary_directory(self) / "secmsg.toml"
            file.write_text(config)
            path = str(file)
        given = {**REQUIRED, **{k.replace("_", "-"): v for k, v in flags.items()}}
        return load_settings(given, path)


class ListenSettingTests(SettingsFromText):
    def test_listen_flags_are_kept_in_order(self) -> None:
        """
        Repeated --listen flags are all listened on, in the order given.
        """
        settings = self.settings(listen=["tcp:7443", "unix:/run/secmsg.sock"])
        self.assertEqual(settings.listen, ("tcp:7443", "unix:/run/secmsg.sock"))

    def test_listen_in_the_file_is_a_list_or_one_string(self) -> None:
        """
        The config file takes a list of endpoint strings, or one alone.
        """
        listed = self.settings('listen = ["tcp:1", "tcp:2"]\n')
        single = self.settings('admin-listen = "tcp:7445"\n')
        self.assertEqual(
            (listed.listen, single.admin_listen), (("tcp:1", "tcp:2"), ("tcp:7445",))
        )

    def test_listen_flag_overrides_the_files_port(self) -> None:
        """
        secmsg init's config sets a port; --listen on the command line
        replaces it rather than contradicting it.
        """
        settings = self.settings(
            "port = 7443\n", listen=["systemd:domain=INET:index=0"]
        )
        self.assertEqual(settings.listen, ("systemd:domain=INET:index=0",))

    def test_port_flag_overrides_the_files_listen(self) -> None:
        """
        A --port flag wins over the file's listen, as any flag wins over
        the file.
        """
        settings = self.settings('listen = ["tcp:1"]\n', port="0")
        self.assertEqual((settings.listen, settings.port), ((), 0))

    def test_listen_and_port_together_are_refused(self) -> None:
        """
        listen and port at the same level contradict each other: refused,
        saying which.
        """
        error = self.assertRaises(
            ConfigurationError, self.settings, port="1", listen=["tcp:2"]
        )
        self.assertEqual(
            str(error),
            "--listen: set together with port; listen says where to listen in "
            "full, so give one or the other",
        )

    def test_tls_endpoints_are_refused_with_the_reason(self) -> None:
        """
        ssl: and tls: would replace secmsg's verifying TLS: refused, saying
        why and what to give instead.
        """
        for description in ("ssl:7443:privateKey=k.pem", "TLS:7443"):
            error = self.assertRaises(
                ConfigurationError, self.settings, admin_listen=[description]
            )
            self.assertIn("is a TLS endpoint; secmsg puts its own TLS", str(error))
            self.assertIn("give the plain one beneath, such as tcp:7443", str(error))

    def test_tls_endpoints_are_refused_however_they_are_spelled(self) -> None:
        """
        Twisted's parser drops backslashes, ignores a leading keyword and
        unwraps haproxy:, so the type is read as it reads it: an escaped,
        upper-case or wrapped ssl: or tls: is refused like the plain one.
        """
        for description in (
            "\\ssl:7443:privateKey=k.pem",
            "s\\sl:7443",
            "SSL:7443",
            "tls:7443",
            "a=b:ssl:7443",
            "haproxy:ssl:7443",
        ):
            error = self.assertRaises(
                ConfigurationError, self.settings, admin_listen=[description]
            )
            self.assertIn("is a TLS endpoint; secmsg puts its own TLS", str(error))
            self.assertIn("such as tcp:7443 (Twisted reads its type as", str(error))

    def test_a_lone_trailing_backslash_is_refused_saying_so(self) -> None:
        """
        A backslash that escapes nothing is a clear refusal, not a crash
        in Twisted's tokenizer.
        """
        error = self.assertRaises(
            ConfigurationError, self.settings, admin_listen=["tcp:7443\\"]
        )
        self.assertIn("ends in a backslash that escapes nothing", str(error))

    def test_listen_of_the_wrong_shape_is_refused(self) -> None:
        """
        An empty list, a number or an empty string is not somewhere to
        listen.
        """
        for config in ("listen = []\n", "listen = 7443\n", 'listen = [""]\n'):
            error = self.assertRaises(ConfigurationError, self.settings, config)
            self.assertIn("listen: must be endpoint strings", str(error))


class ServerEndpointTests(SynchronousTestCase):
    def test_strings_name_plain_endpoints(self) -> None:
        """
        TCP and UNIX strings give the stream endpoints beneath our TLS.
        """
        reactor = MemoryReactor()
        self.assertIsInstance(
            server_endpoint(reactor, "tcp:7443", "listen"), TCP4ServerEndpoint
        )
        self.assertIsInstance(
            server_endpoint(reactor, "unix:/run/s.sock", "listen"), UNIXServerEndpoint
        )

    def test_systemd_socket_that_was_not_handed_over_is_named(self) -> None:
        """
        A systemd endpoint outside socket activation says what is missing,
        not an index error.
        """
        error = self.assertRaises(
            ConfigurationError,
            server_endpoint,
            MemoryReactor(),
            "systemd:domain=INET:index=0",
            "listen",
        )
        self.assertIn("systemd handed this daemon no such socket", str(error))
        self.assertTrue(str(error).startswith("listen: 'systemd:domain=INET:index=0'"))

    def test_unparsable_strings_are_refused_with_twisteds_reason(self) -> None:
        """
        An unknown type or a bad port says what is wrong with it.
        """
        for description, words in [
            ("carrier-pigeon:1", "Unknown endpoint type"),
            ("tcp:port", "invalid literal"),
        ]:
            error = self.assertRaises(
                ConfigurationError,
                server_endpoint,
                MemoryReactor(),
                description,
                "listen",
            )
            self.assertIn("not an endpoint secmsg can listen on", str(error))
            self.assertIn(words, str(error))

    def test_listening_addresses_read_as_operators_write_them(self) -> None:
        """
        The log's listening line names a UNIX socket by its path.
        """
        self.assertEqual(
            describe_listening(UNIXAddress(b"/run/s.sock")), "unix:/run/s.sock"
        )
        self.assertEqual(
            describe_listening(IPv4Address("TCP", "127.0.0.1", 7443)), "127.0.0.1:7443"
        )


class DualStackTests(SynchronousTestCase):
    def test_ipv4_clients_of_a_dual_stack_socket_count_apart(self) -> None:
        """
        On an IPv6 socket that takes IPv4 too (systemd's ListenStream=7443,
        tcp6:7443), IPv4 clients arrive as ::ffff:a.b.c.d; each counts as
        its own address, not as one /64 that every IPv4 client shares.
        """
        self.assertEqual(address_group("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertNotEqual(
            address_group("::ffff:192.0.2.1"), address_group("::ffff:198.51.100.7")
        )
        self.assertEqual(address_group("2001:db8::1"), "2001:db8::/64")


class OwnerTests(SynchronousTestCase):
    def test_owner_is_the_user_twistd_drops_to(self) -> None:
        """
        twistd's --uid (with its user's group when --gid is not given) is
        whom the state is handed to; no --uid or --gid, no one.
        """
        options = Options()
        self.assertIsNone(owner_of(options))
        options.parent = {"uid": 0, "gid": None}
        self.assertEqual(owner_of(options), Owner(0, pwd.getpwuid(0).pw_gid))
        options.parent = {"uid": None, "gid": 65534}
        self.assertEqual(owner_of(options), Owner(-1, 65534))

    def test_listen_flag_repeats(self) -> None:
        """
        --listen may be given again and again; each is kept.
        """
        options = Options()
        options.parseOptions(["--listen", "tcp:1", "--listen", "unix:/s"])
        self.assertEqual(options["listen"], ["tcp:1", "unix:/s"])


class HandOverTests(SynchronousTestCase):
    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("handing files to another user needs root")
        self.directory = temporary_directory(self) / "data"
        self.directory.mkdir(mode=0o700)
        self.owner = Owner(65534, 65534)

    def test_directory_and_its_files_are_handed_over_links_not_followed(self) -> None:
        """
        The directory and root's files in it go to the user; a symbolic
        link planted in it does not carry the change to its target.
        """
        (self.directory / "secmsg.db").write_bytes(b"")
        target = self.directory.parent / "roots"
        target.write_bytes(b"")
        (self.directory / "link").symlink_to(target)
        hand_over(self.directory, self.owner)
        for path in (self.directory, self.directory / "secmsg.db"):
            self.assertEqual((path.stat().st_uid, path.stat().st_gid), (65534, 65534))
        self.assertEqual(target.stat().st_uid, 0)

    def test_hard_linked_file_is_refused(self) -> None:
        """
        A file sharing its inode with another is refused, since handing it
        over would hand over the other.
        """
        outside = self.directory.parent / "shadow"
        outside.write_bytes(b"")
        os.link(outside, self.directory / "audit.log")
        error = self.assertRaises(
            ConfigurationError, hand_over, self.directory, self.owner
        )
        self.assertIn("has other hard links", str(error))
        self.assertEqual(outside.stat().st_uid, 0)
        self.assertEqual(self.directory.stat().st_uid, 0)

    def test_only_the_daemons_own_files_are_handed_over(self) -> None:
        """
        The database, its side files, the audit trail, its rotated files
        and its key go to the user; a file of root's beside them that the
        daemon did not make keeps its owner.
        """
        names = ["secmsg.db", "secmsg.db-wal", "audit.log", "audit.log.3", "audit.key"]
        for name in [*names, "notes"]:
            (self.directory / name).write_bytes(b"")
        hand_over(self.directory, self.owner)
        for name in names:
            self.assertEqual((self.directory / name).stat().st_uid, 65534, name)
        self.assertEqual((self.directory / "notes").stat().st_uid, 0)

    def test_symbolic_link_in_the_daemons_name_is_not_followed(self) -> None:
        """
        A link put where the daemon's file would be, to a file of root's
        outside, is skipped with a warning: its target keeps its owner.
        """
        texts = capture_log(self)
        target = self.directory.parent / "shadow"
        target.write_bytes(b"")
        (self.directory / "secmsg.db-wal").symlink_to(target)
        hand_over(self.directory, self.owner)
        self.assertEqual((target.stat().st_uid, target.stat().st_gid), (0, 0))
        self.assertEqual(self.directory.stat().st_uid, 65534)
        self.assertEqual(
            texts,
            [
                f"{self.directory / 'secmsg.db-wal'} is a symbolic link: "
                "not followed, not handed over"
            ],
        )

    def test_hard_link_refused_before_anything_changes(self) -> None:
        """
        A hard link to a file of root's among the daemon's files stops the
        hand-over before any file, or the directory, is given away.
        """
        (self.directory / "audit.log").write_bytes(b"")
        outside = self.directory.parent / "shadow"
        outside.write_bytes(b"")
        os.link(outside, self.directory / "secmsg.db-wal")
        error = self.assertRaises(
            ConfigurationError, hand_over, self.directory, self.owner
        )
        self.assertIn("secmsg.db-wal: has other hard links", str(error))
        for path in (outside, self.directory / "audit.log", self.directory):
            self.assertEqual(path.stat().st_uid, 0, path)

    def test_other_than_a_regular_file_in_the_daemons_name_is_refused(self) -> None:
        """
        A FIFO of root's where the daemon's file would be is refused, and
        opening it does not wait for a writer.
        """
        os.mkfifo(self.directory / "secmsg.db-shm")
        error = self.assertRaises(
            ConfigurationError, hand_over, self.directory, self.owner
        )
        self.assertIn("secmsg.db-shm: is not a regular file", str(error))
        self.assertEqual(self.directory.stat().st_uid, 0)

    def test_data_directory_given_as_a_symbolic_link_is_refused(self) -> None:
        """
        A data directory that is itself a symbolic link is refused, and the
        daemon stops saying why; the directory it points to is unchanged.
        """
        (self.directory / "secmsg.db").write_bytes(b"")
        link = self.directory.parent / "link"
        link.symlink_to(self.directory)
        service = HandOverService(link, self.owner)
        with self.assertRaises(SystemExit) as raised:
            service.privilegedStartService()
        self.assertEqual(
            str(raised.exception),
            f"secmsg: cannot start: {link}: is a symbolic link; the daemon "
            "hands over only the data directory itself, never where a link "
            "points",
        )
        for path in (self.directory, self.directory / "secmsg.db"):
            self.assertEqual(path.stat().st_uid, 0)
