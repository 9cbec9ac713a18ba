"""
The CA key's passphrase, as C{secmsg pki} gets it: from a file descriptor
that a script names (C{--passphrase-fd N}), or asked for on the terminal
with echo off.  It is read once per command, only when an encrypted key
is to be opened, and is never printed or logged.
"""

from __future__ import annotations

import getpass
import os
import sys

from secmsg.errors import AuthorityError
from secmsg.pki.keys import Passphrase

MAX_PASSPHRASE = 1024
"""The most bytes read from a descriptor: a passphrase is one short line."""


def passphrase_source(descriptor: int | None, what: str) -> Passphrase:
    """
    What to call for the passphrase of an existing key: read from
    C{descriptor} if given, else asked for on the terminal, the first time
    only.

    @param what: the key it opens, for the prompt.
    """
    known: list[bytes] = []

    def passphrase() -> bytes:
        if not known:
            if descriptor is not None:
                known.append(read_descriptor(descriptor))
            else:
                known.append(_ask(f"passphrase for {what}: "))
        return known[0]

    return passphrase


def new_passphrase(descriptor: int | None) -> bytes:
    """
    A passphrase for a new key: from C{descriptor}, or typed twice on the
    terminal.

    @raise AuthorityError: it is empty, or the two differ.
    """
    if descriptor is not None:
        chosen = read_descriptor(descriptor)
    else:
        chosen = _ask("passphrase for the new CA key: ")
        if _ask("the same passphrase again: ") != chosen:
            raise AuthorityError("the two passphrases differ; nothing was made")
    if not chosen:
        raise AuthorityError("the passphrase is empty; nothing was made")
    return chosen


def read_descriptor(descriptor: int) -> bytes:
    """
    The first line read from C{descriptor}, without its line end; the
    descriptor stays open, as it belongs to whoever opened it.

    @raise AuthorityError: it cannot be read.
    """
    data = b""
    try:
        while b"\n" not in data and len(data) < MAX_PASSPHRASE:
            chunk = os.read(descriptor, MAX_PASSPHRASE - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as failure:
        raise AuthorityError(
            f"--passphrase-fd {descriptor}: cannot read: {failure.strerror}"
        ) from None
    return data.split(b"\n", 1)[0].removesuffix(b"\r")


def _ask(prompt: str) -> bytes:
    if not sys.stdin.isatty():
        raise AuthorityError(
            "the CA key needs a passphrase and there is no terminal to ask it "
            "on; give it with --passphrase-fd N"
        )
    return getpass.getpass(prompt).encode()
