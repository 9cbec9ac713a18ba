"""
Reading the operator's files, with errors that name the file and say what
is wrong in words rather than with a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from secmsg.errors import ConfigurationError


def read_bytes(
    path: Path, error: type[ConfigurationError] = ConfigurationError
) -> bytes:
    """
    The file's bytes.

    @raise ConfigurationError: (or the subclass given) it cannot be read.
    """
    try:
        return path.read_bytes()
    except OSError as failure:
        raise error(str(path), f"cannot read: {failure.strerror}") from None


def read_toml(
    path: Path, error: type[ConfigurationError] = ConfigurationError
) -> dict[str, Any]:
    """
    The file parsed as TOML.

    @raise ConfigurationError: (or the subclass given) it cannot be read or
        is not TOML.
    """
    data = read_bytes(path, error)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as failure:
        raise error(str(path), f"not valid TOML: {failure}") from None
