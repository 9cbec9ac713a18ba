"""
Roles, their inheritance and the commands they grant, loaded from TOML.

A policy is checked whole when it is loaded: an unknown command, an unknown
role, an inheritance cycle or a misspelt key is an error then, never a
surprise at the moment someone is denied.  After loading, a L{Policy} is
immutable and answers one question: which roles and commands an identity
gets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secmsg.errors import PolicyError
from secmsg.files import read_toml
from secmsg.wire import COMMAND_NAMES, NAME_TOKEN

_Fail = Callable[[str], PolicyError]
"""Makes the error for a problem found in the policy being parsed."""


@dataclass(frozen=True)
class Grant:
    """
    What the policy grants one identity.

    @ivar roles: the roles assigned to the identity (inherited ones are not
        repeated here; their commands are in C{commands}).
    @ivar commands: every command those roles grant, inheritance included.
    """

    roles: tuple[str, ...]
    commands: frozenset[str]


ALWAYS_GRANTED = frozenset({"ACK"})
"""Commands every admitted identity has, whatever its roles: ACK only
touches one's own mailbox, and without it every message would come back
at every login."""


@dataclass(frozen=True)
class Policy:
    """
    A validated policy.

    @ivar role_commands: each role with the full set of commands it grants,
        inherited ones included.
    @ivar identities: identities listed by name, with their roles.
    @ivar default_roles: the roles of a verified identity that is not
        listed; empty means such an identity is refused.
    """

    role_commands: Mapping[str, frozenset[str]]
    identities: Mapping[str, tuple[str, ...]]
    default_roles: tuple[str, ...]

    def grant_for(self, identity: str) -> Grant | None:
        """
        The roles and commands of C{identity}, or L{None} if the policy
        admits it to no role at all.
        """
        roles = self.identities.get(identity, self.default_roles)
        if not roles:
            return None
        commands = frozenset().union(
            ALWAYS_GRANTED, *(self.role_commands[role] for role in roles)
        )
        return Grant(roles, commands)


def load_policy(path: Path) -> Policy:
    """
    Read and validate a policy file.

    @raise PolicyError: naming the file and what is wrong with it.
    """
    return parse_policy(read_toml(path, PolicyError), str(path))


def parse_policy(data: Mapping[str, Any], source: str) -> Policy:
    """
    Validate a policy already parsed from TOML.

    @param source: how to name the policy in errors.
    @raise PolicyError: what is wrong, naming the role or identity at fault.
    """

    def fail(problem: str) -> PolicyError:
        return PolicyError(source, problem)

    _only_keys(data, {"default_roles", "roles", "identities"}, "the policy", fail)
    roles = _table(data.get("roles", {}), "[roles]", fail)
    declared: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {}
    for name, role in roles.items():
        where = f"[roles.{name}]"
        role = _table(role, where, fail)
        _only_keys(role, {"commands", "inherits"}, where, fail)
        commands = _names(role.get("commands", []), f"{where} commands", fail)
        unknown = sorted(set(commands) - COMMAND_NAMES)
        if unknown:
            raise fail(
                f"{where} grants unknown command {', '.join(unknown)}; "
                f"known commands: {', '.join(sorted(COMMAND_NAMES))}"
            )
        inherits = _names(role.get("inherits", []), f"{where} inherits", fail)
        declared[name] = (frozenset(commands), tuple(inherits))
    for name, (_, inherits) in declared.items():
        _check_roles_exist(inherits, declared, f"[roles.{name}] inherits", fail)
    role_commands = {name: _closure(name, declared, fail) for name in declared}

    default_roles = tuple(_names(data.get("default_roles", []), "default_roles", fail))
    _check_roles_exist(default_roles, declared, "default_roles", fail)
    identities: dict[str, tuple[str, ...]] = {}
    for identity, assigned in _table(
        data.get("identities", {}), "[identities]", fail
    ).items():
        if not NAME_TOKEN.fullmatch(identity):
            raise fail(f"[identities] {identity!r} is not a name token")
        where = f"[identities] {identity}"
        identities[identity] = tuple(_names(assigned, where, fail))
        _check_roles_exist(identities[identity], declared, where, fail)
    return Policy(role_commands, identities, default_roles)


def _closure(
    role: str,
    declared: Mapping[str, tuple[frozenset[str], tuple[str, ...]]],
    fail: _Fail,
) -> frozenset[str]:
    """
    Every command C{role} grants through inheritance, refusing cycles.
    """
    commands: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> None:
        if name in path:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise fail(f"inheritance cycle: {cycle}")
        path.append(name)
        own, inherits = declared[name]
        commands.update(own)
        for parent in inherits:
            visit(parent)
        path.pop()

    visit(role)
    return frozenset(commands)


def _check_roles_exist(
    names: tuple[str, ...] | list[str],
    declared: Mapping[str, Any],
    where: str,
    fail: _Fail,
) -> None:
    unknown = [name for name in names if name not in declared]
    if unknown:
        raise fail(f"{where} names unknown role {', '.join(unknown)}")


def _table(value: Any, where: str, fail: _Fail) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"{where} must be a table")
    return value


def _names(value: Any, where: str, fail: _Fail) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(f"{where} must be a list of strings")
    return value


def _only_keys(
    table: Mapping[str, Any], allowed: set[str], where: str, fail: _Fail
) -> None:
    unexpected = sorted(set(table) - allowed)
    if unexpected:
        raise fail(
            f"{where} has unknown key {', '.join(unexpected)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
