"""
What a secmsg server says it speaks: the protocol's version and the
capabilities it offers, as its greeting names them.

The daemon formats this part of the greeting and a client parses it, so
the grammar is written once, here, with no I/O.  docs/protocol.md,
"Versions and capabilities", describes the same for people.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROTOCOL_VERSION = "1.0"
"""The version of the line protocol this server speaks: a new optional
capability raises the minor number, an incompatible change the major."""

CAPABILITIES = (
    "store",
    "ack-upto",
    "history",
    "rooms",
    "broadcast",
    "presence",
)
"""What this server offers, in the order the greeting and CAPS list them:
messages stored until acknowledged (ACK), ACK UPTO, HISTORY, rooms (JOIN,
PART, SAY, ROOMS), BROADCAST, and the presence pushes."""

_OFFER = re.compile(r"; protocol ([0-9]+\.[0-9]+); capabilities ([a-z0-9,-]*);")


@dataclass(frozen=True)
class Offer:
    """
    A server's protocol version and capabilities, as its greeting gave them.
    """

    version: str
    capabilities: tuple[str, ...]


def format_offer(version: str, capabilities: tuple[str, ...]) -> str:
    """
    The greeting's words for a version and capabilities:
    C{protocol 1.0; capabilities store,ack-upto}.
    """
    return f"protocol {version}; capabilities {','.join(capabilities)}"


def parse_offer(greeting: str) -> Offer | None:
    """
    The version and capabilities a greeting names, or L{None} if it names
    none (a server older than protocol 1.0).
    """
    match = _OFFER.search(greeting)
    if match is None:
        return None
    names = match.group(2)
    return Offer(match.group(1), tuple(names.split(",")) if names else ())
