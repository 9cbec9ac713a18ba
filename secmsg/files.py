"""
Reading the operator's files, and writing the files secmsg makes, with
errors that name the file and say what is wrong in words rather than with
a traceback.
"""

from __future__ import annotations

import os
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


def install_file(path: Path, data: bytes, *, private: bool) -> None:
    """
    Put C{data} at C{path} in one step, replacing what was there, so that a
    reader (the daemon reading a CRL at a reload, say, or the client its
    profiles) sees the old file or the new one, never half.  Whether a file
    may be replaced at all is the caller's to decide.

    A private file has mode 0600 from the moment it exists; a public one
    (a certificate, a CRL, a signing request) 0644 whatever the umask,
    since the daemon's user must read it: a job that signs the CRL under
    C{UMask=0077} would otherwise leave a CRL only its owner reads.

    @raise ConfigurationError: it cannot be written.
    """
    staging = path.with_name(f".{path.name}.{os.getpid()}.new")
    mode = 0o600 if private else 0o644
    try:
        staging.unlink(missing_ok=True)
        descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    except OSError as failure:
        raise ConfigurationError(
            str(path), f"cannot write: {failure.strerror}"
        ) from None
    finally:
        staging.unlink(missing_ok=True)
