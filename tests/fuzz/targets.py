"""
Every fuzz target by the name C{make fuzz TARGET=...} and the corpus
directory use.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.fuzz import (
    display_target,
    identity_target,
    policy_target,
    settings_target,
    trust_target,
    wire_target,
)

TARGETS: dict[str, Callable[[bytes], None]] = {
    "wire": wire_target.one_input,
    "policy": policy_target.one_input,
    "settings": settings_target.one_input,
    "identity": identity_target.one_input,
    "trust": trust_target.one_input,
    "display": display_target.one_input,
}
"""Each target's one-input function, by its name."""
