"""
The client's profiles: named sets of a server, our certificate, key and CA
and the server's name, kept in C{client.toml} so that C{secmsg connect work}
need not repeat five options.

Everything here is pure: it reads and writes the file's text, and decides
which of the command line, the environment and the file gives each setting
(the command line first, then C{SECMSG_CERT}, C{SECMSG_KEY}, C{SECMSG_CA},
then the profile), so that tests can pin those rules without a file.  The
reading and writing of the file itself is L{secmsg.client.profile_files}.
"""

from __future__ import annotations

import json
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from secmsg.errors import ConfigurationError

PROFILE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A profile's name: no dot and no colon, so that no host name with a
domain and no C{HOST:PORT} can be mistaken for one."""

PROFILE_ENVIRONMENT = "SECMSG_PROFILE"
"""The environment variable that chooses a profile when no option does."""

ENVIRONMENT_FILES = {
    "cert": "SECMSG_CERT",
    "key": "SECMSG_KEY",
    "ca": "SECMSG_CA",
}
"""The environment variables that name our files, by the setting each gives."""

_KEYS = {
    "server": "server",
    "cert": "cert",
    "key": "key",
    "ca": "ca",
    "server-name": "server_name",
}
"""The keys a profile may hold, each with the L{Settings} field it fills."""

T = TypeVar("T")

_UNWRITABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""What a profile's value may not hold: a control character, which TOML
forbids raw and no terminal should be sent, or a byte that is not UTF-8
(a lone surrogate, as Python decodes one in a path)."""


@dataclass(frozen=True)
class Settings:
    """
    What one source (the command line, the environment, a profile) says
    about a connection; L{None} where it says nothing.
    """

    server: str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class Profile:
    """
    One named profile of C{client.toml}.
    """

    name: str
    settings: Settings


@dataclass(frozen=True)
class Chosen:
    """
    The settings in force once every source has spoken.

    @ivar key_from_profile: whether the key is the profile's, whose file
        must then be private to its owner.
    """

    settings: Settings
    key_from_profile: bool


def profile_path(environment: Mapping[str, str], home: Path) -> Path:
    """
    Where the profiles are: C{$XDG_CONFIG_HOME/secmsg/client.toml}, or
    C{~/.config/secmsg/client.toml}.  A relative C{XDG_CONFIG_HOME} is
    ignored, as the XDG base directory rules say.
    """
    configured = environment.get("XDG_CONFIG_HOME", "")
    base = Path(configured) if Path(configured).is_absolute() else home / ".config"
    return base / "secmsg" / "client.toml"


def parse_profiles(text: str, where: Path) -> dict[str, Profile]:
    """
    The profiles in the text of a C{client.toml} found at C{where}.  A
    relative path in it is taken from the file's directory, and C{~} is
    the user's home.

    @raise ConfigurationError: naming the file, in one line: it is not
        TOML, or holds something that is not a profile as this client
        knows one.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as failure:
        raise ConfigurationError(str(where), f"not valid TOML: {failure}") from None
    return {name: _profile(name, table, where) for name, table in data.items()}


def _profile(name: str, table: object, where: Path) -> Profile:
    if not isinstance(table, dict):
        raise _bad(where, f"{name!r} is not a profile ([{name}] and its keys)")
    if not PROFILE_NAME.fullmatch(name):
        raise _bad(where, f"[{name}]: a profile's name is letters, digits, _ and -")
    values: dict[str, str] = {}
    for key, value in table.items():
        if key not in _KEYS:
            known = ", ".join(_KEYS)
            raise _bad(where, f"[{name}]: unknown key {key!r} (known: {known})")
        if not isinstance(value, str) or not value:
            raise _bad(where, f"[{name}]: {key} must be a non-empty string")
        values[key] = value
    return Profile(
        name,
        Settings(
            server=values.get("server"),
            cert=_absolute(values.get("cert"), where.parent),
            key=_absolute(values.get("key"), where.parent),
            ca=_absolute(values.get("ca"), where.parent),
            server_name=values.get("server-name"),
        ),
    )


def _absolute(text: str | None, directory: Path) -> Path | None:
    if text is None:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() else directory / path


def _bad(where: Path, problem: str) -> ConfigurationError:
    return ConfigurationError(str(where), problem)


def check_writable(profile: Profile) -> None:
    """
    Refuse a profile whose file would not read back as it was given.

    @raise ConfigurationError: naming the value that holds a control
        character or bytes that are not UTF-8.
    """
    for key, field in _KEYS.items():
        value = getattr(profile.settings, field)
        if value is not None and _UNWRITABLE.search(str(value)):
            raise ConfigurationError(
                f"profile {profile.name}",
                f"{key} {str(value)!a} holds a control character or bytes "
                "that are not UTF-8; rename it, or give it on the command line",
            )


def format_profile(profile: Profile) -> str:
    """
    A profile as a TOML table, in the keys L{parse_profiles} reads.
    """
    lines = [f"[{profile.name}]"]
    for key, field in _KEYS.items():
        value = getattr(profile.settings, field)
        if value is not None:
            # A JSON string is a TOML basic string: quotes, backslashes and
            # every character past ASCII come out escaped in a form TOML
            # reads (raw, DEL is not TOML).
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"


def format_profiles(profiles: Mapping[str, Profile]) -> str:
    """
    A whole C{client.toml} holding C{profiles}.
    """
    return "\n".join(format_profile(profile) for profile in profiles.values())


def environment_settings(environment: Mapping[str, str]) -> Settings:
    """
    What C{SECMSG_CERT}, C{SECMSG_KEY} and C{SECMSG_CA} say; an empty
    variable says nothing.
    """

    def path(field: str) -> Path | None:
        value = environment.get(ENVIRONMENT_FILES[field])
        return Path(value).expanduser() if value else None

    return Settings(cert=path("cert"), key=path("key"), ca=path("ca"))


def profile_name(option: str | None, environment: Mapping[str, str]) -> str | None:
    """
    The profile chosen by name: C{--profile}, else C{SECMSG_PROFILE}.
    """
    return option or environment.get(PROFILE_ENVIRONMENT) or None


def choose(
    command_line: Settings, environment: Settings, profile: Settings | None
) -> Chosen:
    """
    Each setting from the first source that gives it: the command line,
    then the environment, then the profile.  A profile's server name
    belongs to its server: when the command line names another server, it
    is not used, and the name checked is the one dialled.
    """
    if profile is not None and command_line.server is not None:
        profile = replace(profile, server_name=None)
    sources = (command_line, environment, profile or Settings())
    merged = Settings(
        server=_first(source.server for source in sources),
        cert=_first(source.cert for source in sources),
        key=_first(source.key for source in sources),
        ca=_first(source.ca for source in sources),
        server_name=_first(source.server_name for source in sources),
    )
    key_from_profile = (
        profile is not None
        and command_line.key is None
        and environment.key is None
        and profile.key is not None
    )
    return Chosen(merged, key_from_profile)


def _first(values: Iterable[T | None]) -> T | None:
    return next((value for value in values if value is not None), None)


def key_exposure(mode: int, key: Path) -> str | None:
    """
    Why a profile's key file may not be used, from its mode, or L{None}:
    a key that the file's group or anyone else may read is no longer ours
    alone.
    """
    permissions = stat.S_IMODE(mode)
    if permissions & 0o077:
        return (
            f"{key} is readable by group or others (mode {permissions:04o}); "
            f"a profile's key must be yours alone: chmod 600 {key}"
        )
    return None
