"""
Settings: flags over the config file over defaults, and clear errors.
"""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from secmsg.daemon.identity import IdentityField
from secmsg.daemon.limits import RoomLimits
from secmsg.daemon.settings import (
    OPTIONS,
    check_data_dir,
    load_settings,
    prepare_data_dir,
)
from secmsg.errors import ConfigurationError
from secmsg.messages import Retention, WaitingLimit
from tests.harness import temporary_directory

CONFIG = """\
port = 8000
cert = "server.pem"
key = "server.key"
ca = "ca.pem"
policy = "policy.toml"
data-dir = "data"
identity = "san-email"
"""


def no_flags(**given: str) -> dict[str, str | None]:
    flags: dict[str, str | None] = dict.fromkeys(OPTIONS)
    flags.update({name.replace("_", "-"): value for name, value in given.items()})
    return flags


class SettingsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        self.config = self.directory / "secmsg.toml"
        self.config.write_text(CONFIG)

    def test_file_paths_are_relative_to_the_file(self) -> None:
        """
        Paths in the config file are taken from its own directory.
        """
        settings = load_settings(no_flags(), str(self.config))
        self.assertEqual(settings.cert, self.directory / "server.pem")
        self.assertEqual(settings.data_dir, self.directory / "data")
        self.assertEqual(settings.port, 8000)
        self.assertEqual(settings.identity, IdentityField.SAN_EMAIL)
        self.assertIsNone(settings.crl)
        self.assertEqual(settings.interface, "127.0.0.1")

    def test_retention_and_history_settings(self) -> None:
        """
        Retention and HISTORY's maximum come from the file or flags, with
        defaults, and a value out of range is refused naming the setting.
        """
        defaults = load_settings(no_flags(), str(self.config))
        self.assertEqual(defaults.retention.max_age, timedelta(days=30))
        self.assertEqual(defaults.history_max, 200)
        self.config.write_text(CONFIG + "retention-days = 7\nroom-max = 50\n")
        settings = load_settings(no_flags(mailbox_max="20"), str(self.config))
        self.assertEqual(
            settings.retention,
            Retention(max_age=timedelta(days=7), room_max=50, mailbox_max=20),
        )
        with self.assertRaises(ConfigurationError) as caught:
            load_settings(no_flags(history_max="0"), str(self.config))
        self.assertIn("--history-max", str(caught.exception))
        for line in ("history-max = 2.9", 'history-max = "30"', "history-max = true"):
            self.config.write_text(CONFIG + line + "\n")
            with self.assertRaises(ConfigurationError) as caught:
                load_settings(no_flags(), str(self.config))
            self.assertIn("secmsg.toml: history-max", str(caught.exception))

    def test_waiting_limit_settings(self) -> None:
        """
        The bound on what waits unacknowledged per identity defaults to
        10000 messages and 16 MiB, is set from the file or flags, and a
        value out of range is refused naming the setting.
        """
        defaults = load_settings(no_flags(), str(self.config))
        self.assertEqual(defaults.waiting_limit, WaitingLimit(10_000, 16 * 1024**2))
        self.config.write_text(CONFIG + "mailbox-max-waiting = 50\n")
        settings = load_settings(
            no_flags(mailbox_max_waiting_bytes="4096"), str(self.config)
        )
        self.assertEqual(settings.waiting_limit, WaitingLimit(50, 4096))
        for flags, words in [
            (no_flags(mailbox_max_waiting="0"), "--mailbox-max-waiting: '0'"),
            (no_flags(mailbox_max_waiting_bytes="x"), "--mailbox-max-waiting-bytes"),
        ]:
            error = self.assertRaises(
                ConfigurationError, load_settings, flags, str(self.config)
            )
            self.assertIn(words, str(error))

    def test_room_limit_settings(self) -> None:
        """
        The bounds on rooms default to 10000 held and 100 an identity, are
        set from the file or flags, and a value out of range or of the
        wrong kind is refused naming the setting and its range.
        """
        defaults = load_settings(no_flags(), str(self.config))
        self.assertEqual(defaults.limits.rooms, RoomLimits(10_000, 100))
        self.config.write_text(CONFIG + "max-rooms = 500\n")
        settings = load_settings(
            no_flags(max_rooms_per_identity="12"), str(self.config)
        )
        self.assertEqual(settings.limits.rooms, RoomLimits(500, 12))
        self.assertEqual(settings.line.limits.rooms, RoomLimits(500, 12))
        for flags, words in [
            (
                no_flags(max_rooms="0"),
                "--max-rooms: '0' is not a whole number from 1 to 50000",
            ),
            (
                no_flags(max_rooms_per_identity="50001"),
                "--max-rooms-per-identity: '50001' is not a whole number "
                "from 1 to 50000",
            ),
            (no_flags(max_rooms_per_identity="-1"), "--max-rooms-per-identity"),
        ]:
            error = self.assertRaises(
                ConfigurationError, load_settings, flags, str(self.config)
            )
            self.assertIn(words, str(error))
        for line in ('max-rooms = "10"', "max-rooms-per-identity = 2.5"):
            self.config.write_text(CONFIG + line + "\n")
            error = self.assertRaises(
                ConfigurationError, load_settings, no_flags(), str(self.config)
            )
            self.assertIn(f"secmsg.toml: {line.split()[0]}", str(error))

    def test_commit_delay_setting(self) -> None:
        """
        The commit delay defaults to 1 ms, is set in milliseconds from the
        file or a flag, fractions allowed, and 0 turns it off.
        """
        defaults = load_settings(no_flags(), str(self.config))
        self.assertEqual(defaults.commit_delay, timedelta(milliseconds=1))
        for line, expected in [
            ("commit-delay = 0.5", timedelta(microseconds=500)),
            ("commit-delay = 2", timedelta(milliseconds=2)),
            ("commit-delay = 0", timedelta(0)),
            ("commit-delay = 10", timedelta(milliseconds=10)),
        ]:
            self.config.write_text(CONFIG + line + "\n")
            settings = load_settings(no_flags(), str(self.config))
            self.assertEqual(settings.commit_delay, expected, line)
        settings = load_settings(no_flags(commit_delay="0.25"), str(self.config))
        self.assertEqual(settings.commit_delay, timedelta(microseconds=250))

    def test_database_setting(self) -> None:
        """
        No database means SQLite in the data directory; a PostgreSQL URL
        is taken from the file or a flag, as written.
        """
        self.assertIsNone(load_settings(no_flags(), str(self.config)).database)
        url = "postgresql://secmsg@db.example:5433/chat?sslmode=verify-full"
        self.config.write_text(CONFIG + f'database = "{url}"\n')
        self.assertEqual(load_settings(no_flags(), str(self.config)).database, url)
        flag = "postgres://secmsg@127.0.0.1/secmsg"
        settings = load_settings(no_flags(database=flag), str(self.config))
        self.assertEqual(settings.database, flag)

    def test_database_that_is_no_url_or_holds_a_password(self) -> None:
        """
        A database that is not a PostgreSQL URL naming a host and a
        database is refused in words; so is one with a password, which
        belongs in a file of the daemon's user alone.
        """
        for value, words in [
            ("sqlite:///var/secmsg.db", "must be a URL such as"),
            ("postgresql:///secmsg", "must be a URL such as"),
            ("postgresql://db.example:99999/x", "must be a URL such as"),
            ("postgresql://db.example", "names no database"),
            ("postgresql://secmsg:hunter2@db.example/x", "holds a password"),
            ("postgresql://db.example/x?password=hunter2", "holds a password"),
            ("postgresql://db.example/x\x1b[2J", "must be a URL such as"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                load_settings(no_flags(database=value), str(self.config))
            self.assertIn("--database", str(caught.exception), value)
            self.assertIn(words, str(caught.exception), value)
            self.assertNotIn("hunter2", str(caught.exception), value)
        self.config.write_text(CONFIG + "database = 5432\n")
        with self.assertRaises(ConfigurationError) as caught:
            load_settings(no_flags(), str(self.config))
        self.assertIn("secmsg.toml: database", str(caught.exception))

    def test_commit_delay_out_of_range_or_not_a_number(self) -> None:
        """
        A negative, too long or non-numeric commit delay is refused with
        words naming the key, where it was set, and the range.
        """
        for line in [
            "commit-delay = -1",
            "commit-delay = 10.5",
            "commit-delay = 1000",
            'commit-delay = "1"',
            "commit-delay = true",
            "commit-delay = nan",
            "commit-delay = inf",
        ]:
            self.config.write_text(CONFIG + line + "\n")
            with self.assertRaises(ConfigurationError) as caught:
                load_settings(no_flags(), str(self.config))
            self.assertIn("secmsg.toml: commit-delay", str(caught.exception), line)
            self.assertIn("milliseconds from 0", str(caught.exception), line)
        self.config.write_text(CONFIG)
        for text in ("-1", "11", "1ms", "nan", "1e3", ""):
            with self.assertRaises(ConfigurationError) as caught:
                load_settings(no_flags(commit_delay=text), str(self.config))
            self.assertIn(
                f"--commit-delay: {text!r} is not a number of milliseconds from 0",
                str(caught.exception),
            )

    def test_flags_override_the_file(self) -> None:
        """
        A flag wins over the same setting in the file.
        """
        settings = load_settings(
            no_flags(port="9000", cert="other.pem"), str(self.config)
        )
        self.assertEqual(settings.port, 9000)
        self.assertEqual(settings.cert, Path("other.pem"))

    def test_missing_required_setting(self) -> None:
        """
        A required setting given nowhere is named with how to give it.
        """
        error = self.assertRaises(ConfigurationError, load_settings, no_flags(), None)
        self.assertEqual(
            str(error), "--cert: not set; give --cert or set cert in the config file"
        )

    def test_bad_values(self) -> None:
        """
        A port out of range or an unknown identity field is refused.
        """
        for flags, words in [
            (no_flags(port="70000"), "--port: '70000' is not a whole number"),
            (no_flags(port="http"), "--port: 'http' is not a whole number"),
            (no_flags(identity="dn"), "--identity: 'dn' is not one of cn, san-email"),
        ]:
            error = self.assertRaises(
                ConfigurationError, load_settings, flags, str(self.config)
            )
            self.assertIn(words, str(error))

    def test_bad_value_in_file_names_the_file(self) -> None:
        """
        A bad value from the config file is reported against the file and
        key, not against a flag the operator never gave.
        """
        self.config.write_text(CONFIG.replace("port = 8000", 'port = "8000x"'))
        error = self.assertRaises(
            ConfigurationError, load_settings, no_flags(), str(self.config)
        )
        self.assertEqual(
            str(error),
            f"{self.config}: port: '8000x' is not a whole number from 0 to 65535",
        )

    def test_interface_in_file_must_be_a_string(self) -> None:
        """
        An interface the file gives as a number or a list is refused, not
        turned into the text of its value for the daemon to listen on.
        """
        for key in ("interface", "admin-interface"):
            for value in ("0", '["::1"]'):
                self.config.write_text(f"{CONFIG}{key} = {value}\n")
                error = self.assertRaises(
                    ConfigurationError, load_settings, no_flags(), str(self.config)
                )
                self.assertEqual(
                    str(error),
                    f"{self.config}: {key}: must be an address string, "
                    'such as "127.0.0.1" or "::"',
                )

    def test_path_with_nul_is_refused(self) -> None:
        """
        A path the file writes with a NUL (through a TOML escape) is
        refused naming the key, rather than accepted for the daemon to fail
        on with a ValueError when it opens the file.
        """
        self.config.write_text(CONFIG.replace('"server.pem"', '"ser\\u0000ver.pem"'))
        error = self.assertRaises(
            ConfigurationError, load_settings, no_flags(), str(self.config)
        )
        self.assertEqual(
            str(error), f"{self.config}: cert holds a NUL character, which no path can"
        )

    def test_unknown_setting_is_named_escaped(self) -> None:
        """
        A misspelt setting whose quoted key holds an escape sequence is
        named escaped, so that the refusal cannot drive the terminal.
        """
        self.config.write_text(CONFIG + '"prot\\u001b[2J" = 1\n')
        error = self.assertRaises(
            ConfigurationError, load_settings, no_flags(), str(self.config)
        )
        self.assertIn("unknown setting prot\\x1b[2J; known: ", str(error))

    def test_unknown_setting_and_bad_toml(self) -> None:
        """
        A misspelt setting and a file that is not TOML are both refused.
        """
        self.config.write_text(CONFIG + "prot = 1\n")
        error = self.assertRaises(
            ConfigurationError, load_settings, no_flags(), str(self.config)
        )
        self.assertIn("unknown setting prot", str(error))
        self.config.write_text("port = \n")
        error = self.assertRaises(
            ConfigurationError, load_settings, no_flags(), str(self.config)
        )
        self.assertIn("not valid TOML", str(error))

    def test_data_dir_is_created_private(self) -> None:
        """
        A missing data directory is created, readable by its owner only.
        """
        data = self.directory / "state" / "data"
        prepare_data_dir(data)
        self.assertEqual(stat.S_IMODE(data.stat().st_mode), 0o700)

    def test_data_dir_that_is_a_file(self) -> None:
        """
        A data directory path that is a file is refused.
        """
        path = self.directory / "file"
        path.write_text("")
        error = self.assertRaises(ConfigurationError, prepare_data_dir, path)
        self.assertIn("cannot create", str(error))

    def test_data_dir_check_makes_nothing(self) -> None:
        """
        The check made before the daemon listens leaves a missing data
        directory, and the directories above it, unmade.
        """
        data = self.directory / "state" / "data"
        check_data_dir(data)
        self.assertFalse((self.directory / "state").exists())

    def test_data_dir_check_refuses_a_file_in_the_way(self) -> None:
        """
        A file where the data directory, or one above it, would be is
        refused before the daemon starts, naming the file.
        """
        blocker = self.directory / "file"
        blocker.write_text("")
        for data in (blocker, blocker / "data"):
            with self.subTest(data=data):
                error = self.assertRaises(ConfigurationError, check_data_dir, data)
                self.assertEqual(
                    str(error), f"{data}: cannot create: {blocker} is not a directory"
                )
