"""
The client's profiles: the file's grammar and its refusals, which source
gives each setting (the command line, then the environment, then the
profile), how a profile's name is told from a host's, the key that must be
private, C{secmsg profile add} and C{list}, and C{secmsg connect PROFILE}
and C{secmsg send --profile} against a real daemon.

Every test points C{XDG_CONFIG_HOME} and C{HOME} at a fresh directory:
none reads or writes the real profile file.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from secmsg.cli.connect import ConnectOptions, SendOptions
from secmsg.cli.connection import ConnectionOptions
from secmsg.cli.listen import ListenOptions
from secmsg.client.profiles import (
    Profile,
    Settings,
    choose,
    environment_settings,
    format_profiles,
    key_exposure,
    parse_profiles,
    profile_path,
)
from secmsg.errors import ConfigurationError
from tests.harness import next_but_presence, temporary_directory
from tests.test_client_daemon import secmsg as run_secmsg
from tests.test_daemon import Daemon, init_instance

WHERE = Path("/home/u/.config/secmsg/client.toml")

WORK = """\
[work]
server = "chat.example:7500"
cert = "/p/alice.pem"
key = "/p/alice.key"
ca = "/p/ca.pem"
server-name = "chat.internal"
"""


class ProfileFileTests(SynchronousTestCase):
    """
    The file's text, without a file.
    """

    def test_profile_read_with_every_key(self) -> None:
        """
        A profile's five keys fill its settings, paths as paths.
        """
        (work,) = parse_profiles(WORK, WHERE).values()
        self.assertEqual(
            work,
            Profile(
                "work",
                Settings(
                    "chat.example:7500",
                    Path("/p/alice.pem"),
                    Path("/p/alice.key"),
                    Path("/p/ca.pem"),
                    "chat.internal",
                ),
            ),
        )

    def test_written_profiles_read_back_the_same(self) -> None:
        """
        What profile add writes is what the client reads, quotes and
        backslashes in a path included.
        """
        profiles = parse_profiles(WORK, WHERE)
        odd = Profile("odd", Settings("h", Path('/a "b"\\c'), None, None, None))
        both = {**profiles, "odd": odd}
        self.assertEqual(parse_profiles(format_profiles(both), WHERE), both)

    def test_relative_path_is_the_files_directorys(self) -> None:
        """
        A hand-written relative path is taken from the file's directory,
        not from wherever the client runs.
        """
        (home,) = parse_profiles('[home]\ncert = "certs/me.pem"\n', WHERE).values()
        self.assertEqual(home.settings.cert, WHERE.parent / "certs/me.pem")

    def test_bad_files_refused_in_one_line_naming_the_file(self) -> None:
        """
        Text that is not TOML, an unknown key, a value that is not a
        string, a bare value and a name that could be a host are each
        refused in one line that names the file and the fault.
        """
        for text, words in [
            ("[work\n", "not valid TOML"),
            ('[work]\nsevrer = "x"\n', "unknown key 'sevrer'"),
            ("[work]\nserver = 7443\n", "server must be a non-empty string"),
            ('server = "x"\n', "'server' is not a profile"),
            ('["chat.example"]\nserver = "x"\n', "a profile's name is letters"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                parse_profiles(text, WHERE)
            message = str(caught.exception)
            self.assertIn(words, message)
            self.assertTrue(message.startswith(f"{WHERE}: "), message)
            self.assertNotIn("\n", message)

    def test_file_is_under_xdg_config_home_or_home(self) -> None:
        """
        XDG_CONFIG_HOME places the file when set and absolute; otherwise
        it is under ~/.config, as the XDG rules say.
        """
        home = Path("/home/u")
        self.assertEqual(profile_path({}, home), WHERE)
        self.assertEqual(
            profile_path({"XDG_CONFIG_HOME": "/x"}, home),
            Path("/x/secmsg/client.toml"),
        )
        self.assertEqual(profile_path({"XDG_CONFIG_HOME": "rel"}, home), WHERE)

    def test_key_open_to_others_refused_with_the_fix(self) -> None:
        """
        A key group or others may read is refused, naming the chmod that
        fixes it; one that is ours alone is not.
        """
        key = Path("/p/alice.key")
        problem = key_exposure(stat.S_IFREG | 0o644, key)
        self.assertIsNotNone(problem)
        self.assertIn("readable by group or others (mode 0644)", str(problem))
        self.assertIn("chmod 600 /p/alice.key", str(problem))
        self.assertIsNone(key_exposure(stat.S_IFREG | 0o600, key))
        self.assertIsNotNone(key_exposure(stat.S_IFREG | 0o640, key))


class PrecedenceTests(SynchronousTestCase):
    """
    L{choose}: the command line beats the environment, which beats the
    profile, setting by setting.
    """

    profile = parse_profiles(WORK, WHERE)["work"].settings

    def test_each_setting_from_the_first_source_that_gives_it(self) -> None:
        """
        The command line's certificate, the environment's key, the
        profile's CA and server.
        """
        environment = environment_settings(
            {"SECMSG_CERT": "/env/c.pem", "SECMSG_KEY": "/env/k.key"}
        )
        chosen = choose(Settings(cert=Path("/flag/c.pem")), environment, self.profile)
        self.assertEqual(
            chosen.settings,
            Settings(
                "chat.example:7500",
                Path("/flag/c.pem"),
                Path("/env/k.key"),
                Path("/p/ca.pem"),
                "chat.internal",
            ),
        )
        self.assertFalse(chosen.key_from_profile)

    def test_key_from_the_profile_is_marked_for_the_check(self) -> None:
        """
        Only a key the profile gives is the profile's to check; one the
        command line or the environment gives is not.
        """
        empty = environment_settings({"SECMSG_KEY": ""})
        self.assertTrue(choose(Settings(), empty, self.profile).key_from_profile)
        flag = Settings(key=Path("/flag/k.key"))
        self.assertFalse(choose(flag, empty, self.profile).key_from_profile)
        self.assertFalse(choose(Settings(), empty, None).key_from_profile)

    def test_profiles_server_name_not_checked_against_another_server(self) -> None:
        """
        The profile's server name belongs to its server: a server named on
        the command line is checked for its own name.
        """
        chosen = choose(Settings(server="other:7443"), Settings(), self.profile)
        self.assertEqual(chosen.settings.server, "other:7443")
        self.assertIsNone(chosen.settings.server_name)
        chosen = choose(
            Settings(server="other:7443", server_name="n.example"),
            Settings(),
            self.profile,
        )
        self.assertEqual(chosen.settings.server_name, "n.example")


class ProfileOptionsTests(SynchronousTestCase):
    """
    The command line's options over a profile file in a fresh directory.
    """

    def setUp(self) -> None:
        self.config = temporary_directory(self)
        self.files = temporary_directory(self)
        for name in ("alice.pem", "ca.pem"):
            (self.files / name).write_text("")
        key = self.files / "alice.key"
        key.write_text("")
        key.chmod(0o600)
        directory = self.config / "secmsg"
        directory.mkdir()
        self.file = directory / "client.toml"
        self.file.write_text(
            f'[work]\nserver = "chat.example:7500"\ncert = "{self.files}/alice.pem"\n'
            f'key = "{key}"\nca = "{self.files}/ca.pem"\n'
            'server-name = "chat.internal"\n\n[bare]\ncert = "x.pem"\n'
        )
        self.environment = {"XDG_CONFIG_HOME": str(self.config), "HOME": "/nowhere"}

    def parse(
        self, options: ConnectionOptions, *argv: str, **environment: str
    ) -> ConnectionOptions:
        options.environment = {**self.environment, **environment}
        options.parseOptions(list(argv))
        return options

    def test_word_naming_a_profile_is_that_profile(self) -> None:
        """
        connect work: the file has a profile work, so its server, files and
        server name are used.
        """
        options = self.parse(ConnectOptions(), "work")
        self.assertEqual((options["host"], options["port"]), ("chat.example", 7500))
        self.assertEqual(options.server_name, "chat.internal")
        self.assertEqual(options.credentials.key, self.files / "alice.key")

    def test_word_naming_no_profile_is_a_host(self) -> None:
        """
        A word the file has no profile for is a host, as it always was; so
        is any word with a dot or a colon, which no profile's name has.
        """
        for word, host in [
            ("localhost", "localhost"),
            ("work.example", "work.example"),
        ]:
            options = self.parse(ConnectOptions(), word, "--profile", "work")
            self.assertEqual(options["host"], host)
            self.assertEqual(options.server_name, host)
        options = self.parse(
            ConnectOptions(), "localhost", "--cert", "c", "--key", "k", "--ca", "a"
        )
        self.assertEqual(options["host"], "localhost")

    def test_word_naming_no_profile_said_so_when_files_are_missing(self) -> None:
        """
        connect wrok, a typo for a profile, with no files named: the
        refusal says the word was taken as a host since no profile has
        that name; a host with a dot is not said to be a missing profile.
        """
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(ConnectOptions(), "wrok")
        self.assertIn(
            f"'wrok' is taken as a host: {self.file} has no profile of that name",
            str(caught.exception),
        )
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(ConnectOptions(), "chat.example")
        self.assertNotIn("profile of that name", str(caught.exception))

    def test_profile_option_and_environment_choose_a_profile(self) -> None:
        """
        --profile, or SECMSG_PROFILE when it is not given, chooses the
        profile; --profile wins.
        """
        chosen = self.parse(ConnectOptions(), "--profile", "work")
        self.assertEqual(chosen["host"], "chat.example")
        by_environment = self.parse(ConnectOptions(), SECMSG_PROFILE="work")
        self.assertEqual(by_environment["host"], "chat.example")
        with self.assertRaises(ConfigurationError) as caught:
            self.parse(ConnectOptions(), "--profile", "nope", SECMSG_PROFILE="work")
        self.assertIn("has no profile 'nope'", str(caught.exception))

    def test_flags_beat_the_environment_which_beats_the_profile(self) -> None:
        """
        --cert beats SECMSG_CERT, which beats the profile's certificate.
        """
        environment = {"SECMSG_CERT": "/env/c.pem", "SECMSG_CA": "/env/ca.pem"}
        options = self.parse(
            ConnectOptions(), "work", "--cert", "/flag/c.pem", **environment
        )
        self.assertEqual(options.credentials.certificate, Path("/flag/c.pem"))
        self.assertEqual(options.credentials.ca, Path("/env/ca.pem"))
        options = self.parse(ConnectOptions(), "work", **environment)
        self.assertEqual(options.credentials.certificate, Path("/env/c.pem"))

    def test_send_with_a_profile_takes_every_word_as_text(self) -> None:
        """
        send --profile work: the profile names the server, so the words
        are all the message's.
        """
        options = self.parse(
            SendOptions(), "--profile", "work", "--to", "bob", "hi", "all"
        )
        self.assertEqual(options["text"], "hi all")
        self.assertEqual(options["host"], "chat.example")
        options = self.parse(SendOptions(), "work", "--to", "bob", "hi")
        self.assertEqual(options["text"], "hi")

    def test_listen_takes_a_profile_as_connect_does(self) -> None:
        """
        listen shares the options, profiles included: a profile's name in
        the server's place, or --profile with no server at all.
        """
        for argv in (["work"], ["--profile", "work", "--json"]):
            options = self.parse(ListenOptions(), *argv)
            self.assertEqual(options["host"], "chat.example")
            self.assertEqual(options.credentials.ca, self.files / "ca.pem")

    def test_profiles_key_open_to_others_refused(self) -> None:
        """
        A profile whose key group or others may read is refused with the
        chmod that fixes it; the same key named by --key is the user's
        own business.
        """
        key = self.files / "alice.key"
        key.chmod(0o644)
        with self.assertRaises(ConfigurationError) as caught:
            self.parse(ConnectOptions(), "work")
        self.assertIn(f"chmod 600 {key}", str(caught.exception))
        self.parse(ConnectOptions(), "work", "--key", str(key))

    def test_missing_server_says_which_argument(self) -> None:
        """
        With no server named anywhere, the refusal names the argument
        missing rather than counting arguments.
        """
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(ConnectOptions(), "--instance", "dev", "--as", "alice")
        self.assertIn("missing HOST[:PORT]", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(ConnectOptions(), "localhost", "--profile", "bare")
        self.assertIn("no --key, --ca", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(ConnectOptions(), "bare")
        self.assertIn("profile bare names no server", str(caught.exception))


def secmsg(
    environment: dict[str, str], *argv: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """
    Run the secmsg command with C{environment} over the usual one.
    """
    return run_secmsg(*argv, stdin=stdin, environment=environment)


class ProfileCommandTests(SynchronousTestCase):
    """
    secmsg profile add and list, and the profiles they write used against
    a real daemon.
    """

    def setUp(self) -> None:
        self.directory = init_instance(self)
        self.config = temporary_directory(self) / "config"
        self.environment = {
            "XDG_CONFIG_HOME": str(self.config),
            "HOME": str(self.config.parent),
        }
        self.file = self.config / "secmsg" / "client.toml"

    def add(
        self, name: str, server: str, *extra: str
    ) -> subprocess.CompletedProcess[str]:
        clients = self.directory / "clients"
        return secmsg(
            self.environment,
            "profile",
            "add",
            name,
            "--server",
            server,
            "--cert",
            str(clients / f"{name}.pem"),
            "--key",
            str(clients / f"{name}.key"),
            "--ca",
            str(self.directory / "ca.pem"),
            *extra,
        )

    def test_add_writes_a_private_file_once(self) -> None:
        """
        profile add makes the directory 0700 and the file 0600 with
        absolute paths; a second add of the name is refused without
        --force and changes nothing; list shows the profile.
        """
        relative = os.path.relpath(self.directory / "clients", Path.cwd())
        added = secmsg(
            self.environment,
            "profile",
            "add",
            "alice",
            "--server",
            "localhost:7500",
            "--cert",
            f"{relative}/alice.pem",
            "--key",
            f"{relative}/alice.key",
            "--ca",
            str(self.directory / "ca.pem"),
        )
        self.assertEqual(added.returncode, 0, added.stderr)
        self.assertEqual(stat.S_IMODE(self.file.parent.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(self.file.stat().st_mode), 0o600)
        written = self.file.read_text()
        self.assertIn(f'cert = "{self.directory}/clients/alice.pem"', written)
        again = self.add("alice", "localhost:7600")
        self.assertEqual(again.returncode, 1)
        self.assertIn("has a profile alice already (--force replaces it)", again.stderr)
        self.assertEqual(self.file.read_text(), written)
        forced = self.add("alice", "localhost:7600", "--force")
        self.assertEqual(forced.returncode, 0, forced.stderr)
        listed = secmsg(self.environment, "profile", "list")
        self.assertEqual(listed.stdout.count("\n"), 1, listed.stdout)
        self.assertTrue(listed.stdout.startswith("alice  localhost:7600  cert /"))

    def test_add_refuses_a_key_others_may_read(self) -> None:
        """
        profile add refuses a key group or others may read, naming the
        chmod, and writes nothing.
        """
        key = self.directory / "clients" / "alice.key"
        key.chmod(0o644)
        added = self.add("alice", "localhost")
        self.assertEqual(added.returncode, 1)
        self.assertIn(f"chmod 600 {key}", added.stderr)
        self.assertFalse(self.file.exists())

    def test_broken_profile_file_is_one_line(self) -> None:
        """
        connect over a file that is not TOML says so in one line, exit 1.
        """
        self.file.parent.mkdir(parents=True)
        self.file.write_text("[work\n")
        result = secmsg(self.environment, "connect", "work")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertIn(f"secmsg: {self.file}: not valid TOML", result.stderr)

    def test_connect_and_send_by_profile_against_a_daemon(self) -> None:
        """
        connect PROFILE logs in with the profile's server and files;
        send --profile delivers to a listening peer.
        """
        daemon = Daemon(self, self.directory)
        server = f"localhost:{daemon.port}"
        for name in ("alice", "bob"):
            self.assertEqual(self.add(name, server).returncode, 0)
        bob = daemon.client("bob")
        with bob, bob.makefile("rb") as lines:
            self.assertIn(b"you are bob", lines.readline())
            connected = secmsg(self.environment, "connect", "alice", stdin="PING\n")
            self.assertEqual(connected.returncode, 0, connected.stderr)
            self.assertIn("you are alice", connected.stdout)
            sent = secmsg(
                self.environment, "send", "--profile", "alice", "--to", "bob", "hi bob"
            )
            self.assertEqual((sent.returncode, sent.stderr), (0, ""))
            self.assertRegex(
                next_but_presence(lines), rb"^MSG \d+ \S+Z alice hi bob\n$"
            )
        by_environment = secmsg(
            {**self.environment, "SECMSG_PROFILE": "bob"}, "connect", stdin="PING\n"
        )
        self.assertIn("you are bob", by_environment.stdout)
