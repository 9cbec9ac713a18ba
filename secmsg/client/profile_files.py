"""
The profile file on disk: reading it, checking that a profile's key is
private, and adding a profile in one step.

What the file means is L{secmsg.client.profiles}; this module only moves
its text, so that a reader never sees half a file and the file is never
anyone's but its owner's.
"""

from __future__ import annotations

from pathlib import Path

from secmsg.client.profiles import (
    Profile,
    check_writable,
    format_profile,
    format_profiles,
    key_exposure,
    parse_profiles,
)
from secmsg.errors import ConfigurationError
from secmsg.files import install_file


def read_profiles(path: Path) -> dict[str, Profile]:
    """
    The profiles in the file at C{path}; none if there is no file.

    @raise ConfigurationError: it cannot be read, or is not a profile file.
    """
    return parse_profiles(_text(path), path)


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return ""
    except UnicodeDecodeError:
        raise ConfigurationError(str(path), "not valid TOML: not UTF-8") from None
    except OSError as failure:
        raise ConfigurationError(
            str(path), f"cannot read: {failure.strerror}"
        ) from None


def check_key_private(key: Path) -> None:
    """
    Refuse a profile's key that group or others may read.  A key that is
    not there is left for the loading of the files to name.

    @raise ConfigurationError: saying so, with the C{chmod} that fixes it.
    """
    try:
        mode = key.stat().st_mode
    except OSError:
        return
    problem = key_exposure(mode, key)
    if problem is not None:
        raise ConfigurationError("refusing the profile's key", problem)


def add_profile(path: Path, profile: Profile, replace: bool) -> None:
    """
    Write C{profile} into the file at C{path}, made with its directory if
    need be (the directory 0700, the file 0600).  A new profile is added
    after the others, leaving the file's text as it was; one that replaces
    another rewrites the file.

    @param replace: whether a profile of the same name may be replaced.
    @raise ConfigurationError: the profile exists and may not be replaced,
        a value would not read back, the file is not a profile file, or it
        cannot be written; the file is then left as it was.
    """
    check_writable(profile)
    text = _text(path)
    profiles = parse_profiles(text, path)
    if profile.name in profiles and not replace:
        raise ConfigurationError(
            str(path), f"has a profile {profile.name} already (--force replaces it)"
        )
    if profile.name in profiles:
        text = format_profiles({**profiles, profile.name: profile})
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + format_profile(
            profile
        )
    _check_reads_back(text, path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as failure:
        raise ConfigurationError(
            str(path.parent), f"cannot make the directory: {failure.strerror}"
        ) from None
    install_file(path, text.encode("utf-8"), private=True)


def _check_reads_back(text: str, path: Path) -> None:
    """
    Refuse to install a text that the client would then fail to read.
    """
    try:
        parse_profiles(text, path)
    except ConfigurationError as failure:
        raise ConfigurationError(
            str(path), f"left as it was: the new text would not read ({failure})"
        ) from None
