"""
The CA's private key on disk: unencrypted, or encrypted with a passphrase
that is asked for only when something is to be signed.  The passphrase is
never printed, logged or kept beyond the one command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from secmsg.errors import AuthorityError, ConfigurationError
from secmsg.files import read_bytes
from secmsg.pki import certificates as pki

Passphrase = Callable[[], bytes]
"""Asked for the passphrase of an encrypted key, only when one is met."""


def is_encrypted(path: Path) -> bool:
    """
    Whether the PEM key in C{path} needs a passphrase.

    @raise ConfigurationError: it holds no key secmsg can read.
    """
    return _load(path, None) is None


def load_key(path: Path, passphrase: Passphrase | None) -> pki.PrivateKey:
    """
    The CA key in C{path}, opened with C{passphrase} if it is encrypted.

    @raise AuthorityError: it is encrypted and no passphrase can be had,
        or the passphrase given does not open it.
    @raise ConfigurationError: it holds no key secmsg can read.
    """
    key = _load(path, None)
    if key is not None:
        return key
    if passphrase is None:
        raise AuthorityError(
            f"{path} is encrypted: give its passphrase on a terminal or "
            "with --passphrase-fd N"
        )
    key = _load(path, passphrase())
    if key is None:
        raise AuthorityError(f"wrong passphrase for {path}; nothing was changed")
    return key


def _load(path: Path, passphrase: bytes | None) -> pki.PrivateKey | None:
    """
    The key, or L{None} if it is encrypted and C{passphrase} does not open
    it (or none was given).
    """
    data = read_bytes(path)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        # cryptography's word for a key that is encrypted when no
        # passphrase was given.
        return None
    except ValueError:
        if passphrase is not None and b"ENCRYPTED" in data:
            return None
        raise ConfigurationError(str(path), "no PEM private key in it") from None
    except UnsupportedAlgorithm:
        raise ConfigurationError(str(path), "no PEM private key in it") from None
    if not isinstance(key, pki.PrivateKey):
        raise ConfigurationError(str(path), "not an ECDSA or RSA key")
    return key
