"""
C{secmsg profile}: add a named profile of the client's (a server, our
certificate, key and CA) to C{client.toml}, and list them, so that
C{secmsg connect NAME} and C{secmsg send --profile NAME} need nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from twisted.python import usage

from secmsg.cli.connection import is_host, parse_address
from secmsg.cli.options import CommandOptions
from secmsg.client.profile_files import add_profile, check_key_private, read_profiles
from secmsg.client.profiles import PROFILE_NAME, Profile, Settings, profile_path
from secmsg.client.tls import load_client_files
from secmsg.wire import escape_controls


class AddOptions(CommandOptions):
    """
    secmsg profile add NAME --server HOST[:PORT] --cert F --key F --ca F
    """

    synopsis = (
        "NAME --server HOST[:PORT] --cert F --key F --ca F [--server-name N] [--force]"
    )
    optParameters = [
        ["server", None, None, "The daemon's HOST[:PORT]."],
        ["cert", None, None, "Our certificate (PEM)."],
        ["key", None, None, "Our private key (PEM), readable by us alone."],
        ["ca", None, None, "The CA the server's certificate must be signed by (PEM)."],
        [
            "server-name",
            None,
            None,
            "Check the server's certificate for this name, not the host dialled.",
        ],
    ]
    optFlags = [["force", None, "Replace a profile of the same name."]]

    def parseArgs(self, *words: str) -> None:
        if len(words) != 1:
            raise usage.UsageError("give the profile's NAME, one word")
        (name,) = words
        if not PROFILE_NAME.fullmatch(name):
            raise usage.UsageError(
                f"{name!r} is not a profile name (letters, digits, _ and -)"
            )
        self["name"] = name

    def postOptions(self) -> None:
        missing = [
            f"--{option}"
            for option in ("server", "cert", "key", "ca")
            if not self[option]
        ]
        if missing:
            raise usage.UsageError(f"give {', '.join(missing)}")
        parse_address(self["server"])
        if self["server-name"] and not is_host(self["server-name"]):
            raise usage.UsageError(
                f"--server-name {self['server-name']!r} is not a host"
            )


class ListOptions(CommandOptions):
    """
    secmsg profile list
    """

    synopsis = ""


class Options(CommandOptions):
    """
    secmsg profile add|list
    """

    synopsis = "add|list ..."
    subCommands = [
        ["add", None, AddOptions, "Add a profile (--force replaces one)."],
        ["list", None, ListOptions, "List the profiles."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("give add or list")


def run(options: Options, environment: Mapping[str, str]) -> list[str]:
    """
    Run C{secmsg profile}; return the lines to print.

    @raise ConfigurationError: a file named is unusable, the profile exists
        (without C{--force}), or the profile file cannot be read or written.
    """
    home = environment.get("HOME")
    path = profile_path(environment, Path(home) if home else Path.home())
    if options.subCommand == "add":
        return _add(options.subOptions, path)
    return _list(path)


def _add(options: AddOptions, path: Path) -> list[str]:
    """
    Check the files as a connection would, then write the profile, its
    paths made absolute so that it works from any directory.
    """
    cert, key, ca = (
        Path(os.path.abspath(Path(options[name]).expanduser()))
        for name in ("cert", "key", "ca")
    )
    load_client_files(cert, key, ca)
    check_key_private(key)
    profile = Profile(
        options["name"],
        Settings(options["server"], cert, key, ca, options["server-name"]),
    )
    add_profile(path, profile, replace=bool(options["force"]))
    return [escape_controls(f"wrote profile {profile.name} to {path}")]


def _list(path: Path) -> list[str]:
    profiles = read_profiles(path)
    if not profiles:
        return [
            escape_controls(
                f"no profiles in {path} (secmsg profile add NAME --server "
                "HOST[:PORT] --cert F --key F --ca F makes one)"
            )
        ]
    return [escape_controls(_listed(profile)) for profile in profiles.values()]


def _listed(profile: Profile) -> str:
    settings = profile.settings
    shown = [profile.name, settings.server or "(no server)"]
    for word, value in (
        ("cert", settings.cert),
        ("key", settings.key),
        ("ca", settings.ca),
        ("server-name", settings.server_name),
    ):
        if value is not None:
            shown.append(f"{word} {value}")
    return "  ".join(shown)
