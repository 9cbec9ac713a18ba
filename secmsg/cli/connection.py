"""
What every subcommand that talks to a daemon shares: the server's
C{HOST[:PORT]}, our certificate, key and CA (named one by one, as a name in
a C{secmsg init} or C{secmsg pki} directory, by the environment, or by a
profile of C{client.toml}), the name to check the server's certificate
for, and how long to wait.

A subcommand gets all of it, profiles included, by subclassing
L{ConnectionOptions} and handing its positional words to
L{ConnectionOptions.take_server} in its C{parseArgs}.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python import usage

from secmsg.cli.options import CommandOptions
from secmsg.client.connect import Credentials, connect
from secmsg.client.profile_files import check_key_private, read_profiles
from secmsg.client.profiles import (
    PROFILE_NAME,
    Profile,
    Settings,
    choose,
    environment_settings,
    profile_name,
    profile_path,
)
from secmsg.client.protocol import DEFAULT_PORT, ClientProtocol
from secmsg.errors import ConfigurationError

REPLY_TIMEOUT = 30.0
"""Seconds to wait for the server at each step, by default."""


def _seconds(text: str) -> float:
    """
    A number of seconds, as --timeout takes it.
    """
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 3600:
        raise ValueError(
            f"--timeout takes seconds, more than 0 and at most 3600, not {text!r}"
        )
    return seconds


def parse_address(address: str) -> tuple[str, int]:
    """
    Split C{HOST[:PORT]}; an IPv6 address with a port is written
    C{[::1]:7443}, and one without may be written bare.

    @raise usage.UsageError: the host is not a host name or an IP address,
        or the port is not a port number.
    """
    host, port = address, str(DEFAULT_PORT)
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, port = address.split(":")
    valid_port = port.isascii() and port.isdigit() and 0 < int(port) < 65536
    if not is_host(host) or not valid_port:
        raise usage.UsageError(f"{address!r} is not HOST[:PORT]")
    return host, int(port)


def is_host(text: str) -> bool:
    """
    Whether C{text} is an IP address or a DNS host name.  An IPv6 address's
    scope (C{fe80::1%eth0}) is an interface's name or number, not any text.
    """
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOST_NAME.fullmatch(text))
    _, percent, scope = text.partition("%")
    return not percent or bool(_SCOPE.fullmatch(scope))


_SCOPE = re.compile(r"[A-Za-z0-9_.-]+")


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?"
)


class ConnectionOptions(CommandOptions):
    """
    The server, our certificate and key, the CA, and how long to wait.
    Once parsed, the files are in C{credentials} and the server in
    C{host} and C{port}, whichever way they were named.

    Each setting comes from the first of: the command line, the
    environment (C{SECMSG_CERT}, C{SECMSG_KEY}, C{SECMSG_CA}), the profile
    in use.  The profile in use is the one C{--profile} names, else the one
    the word in the server's place names (when the file has a profile of
    that name), else C{SECMSG_PROFILE}'s.

    @ivar environment: the environment read; tests give their own.
    """

    optParameters = [
        [
            "profile",
            None,
            None,
            "Use this profile of client.toml (else $SECMSG_PROFILE's).",
        ],
        ["cert", None, None, "Our certificate (PEM) [else $SECMSG_CERT]."],
        ["key", None, None, "Our private key (PEM) [else $SECMSG_KEY]."],
        [
            "ca",
            None,
            None,
            "The CA the server's certificate must be signed by (PEM) "
            "[else $SECMSG_CA].",
        ],
        [
            "instance",
            None,
            None,
            "A secmsg init or secmsg pki directory holding our certificate "
            "(with --as).",
        ],
        ["as", None, None, "The name of our certificate in the --instance directory."],
        [
            "server-name",
            None,
            None,
            "Check the server's certificate for this name, not the host dialled.",
        ],
        [
            "timeout",
            None,
            REPLY_TIMEOUT,
            "Seconds to wait for the server at each step: to connect, to greet, "
            "to answer.",
            _seconds,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.environment: Mapping[str, str] = os.environ
        self._profiles: dict[str, Profile] | None = None
        self._word_profile: str | None = None

    def address(self, address: str) -> None:
        """
        Take the positional C{HOST[:PORT]}.
        """
        self["host"], self["port"] = parse_address(address)

    def take_server(
        self, words: Sequence[str], text_follows: bool = False
    ) -> list[str]:
        """
        Take the word that names the server from the front of C{words}, the
        positional words C{parseArgs} was given: C{HOST[:PORT]}, or the name
        of a profile the file has (unless C{--profile} chose one).  It may be
        left out when the profile C{--profile} or C{SECMSG_PROFILE} chose
        names a server, and is then, if C{text_follows}, taken to be left
        out: every word is the text's.

        @return: the words after it.
        @raise usage.UsageError: the server is named nowhere.
        """
        rest = list(words)
        if not self["profile"] and rest and self._is_profile(rest[0]):
            self._word_profile = name = rest.pop(0)
            if not self._read_profiles()[name].settings.server:
                raise usage.UsageError(
                    f"profile {name} names no server: give HOST[:PORT] --profile {name}"
                )
            return rest
        named = self._named_profile()
        if named is not None and named.settings.server and (text_follows or not rest):
            return rest
        if not rest:
            raise usage.UsageError(
                "missing HOST[:PORT], the server to connect to "
                "(or the name of a profile, or --profile NAME)"
            )
        self.address(rest.pop(0))
        return rest

    def postOptions(self) -> None:
        if self["server-name"] and not is_host(self["server-name"]):
            raise usage.UsageError(
                f"--server-name {self['server-name']!r} is not a host"
            )
        profile = self._profile_in_use()
        chosen = choose(
            self._command_line(),
            environment_settings(self.environment),
            None if profile is None else profile.settings,
        )
        settings = chosen.settings
        if self.get("host") is None and profile is not None and settings.server:
            self._profile_address(profile, settings.server)
        if chosen.key_from_profile and settings.key is not None:
            check_key_private(settings.key)
        if settings.cert is None or settings.key is None or settings.ca is None:
            raise usage.UsageError(_missing_files(settings) + self._not_a_profile())
        self.credentials = Credentials(
            settings.cert, settings.key, settings.ca, self._ca_named_by(profile)
        )
        self["server-name"] = settings.server_name

    @property
    def server_name(self) -> str:
        """
        The name the server's certificate must be for: C{--server-name}
        (or the profile's, when its server is the one dialled), or else the
        host connected to.
        """
        name: str = self["server-name"] or self["host"]
        return name

    def dial(self, reactor: Any) -> Deferred[ClientProtocol]:
        """
        Connect and log in with the address, names, files and timeout these
        options give, as every subcommand that talks to a daemon does.
        """
        return connect(
            reactor,
            self["host"],
            self["port"],
            self.server_name,
            self.credentials,
            self["timeout"],
        )

    def _command_line(self) -> Settings:
        """
        What the options themselves say: the files named one by one or by
        C{--instance} and C{--as}, and the server if a word named it.
        """
        host = self.get("host")
        server = None if host is None else _address_text(host, self["port"])
        ca = Path(self["ca"]) if self["ca"] else None
        if self["instance"]:
            if not self["as"]:
                raise usage.UsageError("--instance needs --as NAME")
            if self["cert"] or self["key"]:
                raise usage.UsageError("give --instance or --cert and --key, not both")
            clients = Path(self["instance"]) / "clients"
            return Settings(
                server=server,
                cert=clients / f"{self['as']}.pem",
                key=clients / f"{self['as']}.key",
                ca=ca or Path(self["instance"]) / "ca.pem",
                server_name=self["server-name"],
            )
        return Settings(
            server=server,
            cert=Path(self["cert"]) if self["cert"] else None,
            key=Path(self["key"]) if self["key"] else None,
            ca=ca,
            server_name=self["server-name"],
        )

    def _ca_named_by(self, profile: Profile | None) -> str:
        """
        What named the CA file in use, in the user's terms.
        """
        if self["ca"]:
            return "--ca"
        if self["instance"]:
            return "--instance"
        if self.environment.get("SECMSG_CA"):
            return "SECMSG_CA"
        return "--ca" if profile is None else f"profile {profile.name}"

    def _not_a_profile(self) -> str:
        """
        For a refusal: that the word given as the server, which could have
        named a profile, names none, since a typo there looks like a host.
        """
        host = self.get("host")
        if self._word_profile is not None or self._named_profile() is not None:
            return ""
        if host is None or not PROFILE_NAME.fullmatch(host):
            return ""
        return (
            f"; {host!r} is taken as a host: {self._path()} has no profile of that name"
        )

    def _is_profile(self, word: str) -> bool:
        return bool(PROFILE_NAME.fullmatch(word)) and word in self._read_profiles()

    def _profile_in_use(self) -> Profile | None:
        if self._word_profile is not None:
            return self._read_profiles()[self._word_profile]
        return self._named_profile()

    def _named_profile(self) -> Profile | None:
        """
        The profile C{--profile} or C{SECMSG_PROFILE} names, if either does.

        @raise ConfigurationError: the file has no profile of that name.
        """
        name = profile_name(self["profile"], self.environment)
        if name is None:
            return None
        profiles = self._read_profiles()
        if name not in profiles:
            raise ConfigurationError(
                str(self._path()),
                f"has no profile {name!r} (secmsg profile list shows the "
                "profiles; secmsg profile add makes one)",
            )
        return profiles[name]

    def _read_profiles(self) -> dict[str, Profile]:
        if self._profiles is None:
            self._profiles = read_profiles(self._path())
        return self._profiles

    def _path(self) -> Path:
        home = self.environment.get("HOME")
        return profile_path(self.environment, Path(home) if home else Path.home())

    def _profile_address(self, profile: Profile, server: str) -> None:
        try:
            self.address(server)
        except usage.UsageError:
            raise ConfigurationError(
                str(self._path()),
                f"[{profile.name}]: server {server!r} is not HOST[:PORT]",
            ) from None


def _address_text(host: str, port: int) -> str:
    """
    C{HOST:PORT} as L{parse_address} reads it, an IPv6 address bracketed.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _missing_files(settings: Settings) -> str:
    """
    The refusal for a connection whose files are not all named: which are
    missing, and the ways to name them.
    """
    missing = [
        option
        for option, value in (
            ("--cert", settings.cert),
            ("--key", settings.key),
            ("--ca", settings.ca),
        )
        if value is None
    ]
    return (
        f"no {', '.join(missing)}: give --cert, --key and --ca (or SECMSG_CERT, "
        "SECMSG_KEY, SECMSG_CA), --instance DIR --as NAME, or --profile NAME"
    )
