"""
Roles, their inheritance, the commands and rate they grant, the rules that
grant roles by certificate attributes, and who may do what in which rooms,
loaded from TOML.

A policy is checked whole when it is loaded: an unknown command, an unknown
role, an inheritance cycle or a misspelt key is an error then, never a
surprise at the moment someone is denied.  After loading, a L{Policy} is
immutable and answers two questions: which roles, commands and rate an
identity with a given certificate gets, and whether given roles may join,
read or speak in a room.

How roles are decided, in order:
  1. an identity listed under C{[identities]} gets exactly those roles;
  2. otherwise, every C{[[rules]]} entry its certificate matches adds its
     roles (the union of them all);
  3. otherwise, C{default_roles}; if that is empty, it is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509

from secmsg.daemon.identity import SUBJECT_FIELDS, AttributeMatch
from secmsg.errors import PolicyError
from secmsg.files import read_toml
from secmsg.rate import DEFAULT_RATE, Rate
from secmsg.wire import COMMAND_NAMES, NAME_TOKEN, escape_controls

_Fail = Callable[[str], PolicyError]
"""Makes the error for a problem found in the policy being parsed."""


@dataclass(frozen=True)
class AttributeRule:
    """
    One C{[[rules]]} entry: the roles granted to a certificate that
    matches.

    @ivar number: its place in the file, counting from 1, to name it.
    """

    number: int
    match: AttributeMatch
    roles: tuple[str, ...]

    def describe(self) -> str:
        """
        How a grant or a log line names this rule.
        """
        return f"rule {self.number} ({self.match.describe()})"


ROOM_ACTIONS = ("join", "read", "say")
"""What a room rule controls: entering it (and being listed in it),
receiving its messages and HISTORY, and speaking in it."""

_ROOM_PATTERN = re.compile(r"#[a-z0-9._*?-]{1,64}")


@dataclass(frozen=True)
class RoomRule:
    """
    One C{[[rooms]]} entry: for the rooms its pattern matches, the roles
    allowed each action.
    """

    pattern: str
    allowed: Mapping[str, frozenset[str]]

    def refusal(self, action: str, roles: Iterable[str]) -> str | None:
        """
        Why C{roles} may not do C{action} here, or L{None} if they may.
        """
        allowed = self.allowed[action]
        if allowed.intersection(roles):
            return None
        return (
            f'rooms matching "{self.pattern}" let only roles '
            f"{', '.join(sorted(allowed)) or '(none)'} {action}"
        )


ROOMS_REMEMBERED = 4096
"""Rooms whose deciding rule L{RoomRules} keeps at once: room names come
from clients, so what is kept of them must be bounded."""

MOST_RATE = 1e9
"""The highest rate a role may set, in commands a second: already one that
never binds."""


@dataclass(frozen=True)
class RoomRules:
    """
    The C{[[rooms]]} entries in file order; the first whose pattern matches
    a room decides for it, and a room that none matches is open to every
    role.

    Which entry decides a room is found once and remembered: a room's
    messages are checked against every member's rights, and matching the
    patterns each time would cost a match per member per message.  The
    entries never change (a reload makes new rules), so what is remembered
    is never stale.
    """

    rules: tuple[RoomRule, ...] = ()
    _deciding: Callable[[str], RoomRule | None] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        deciding = lru_cache(maxsize=ROOMS_REMEMBERED)(self._first_match)
        object.__setattr__(self, "_deciding", deciding)

    def refusal(self, action: str, room: str, roles: Iterable[str]) -> str | None:
        """
        Why C{roles} may not do C{action} in C{room}, or L{None}.
        """
        rule = self._deciding(room)
        return None if rule is None else rule.refusal(action, roles)

    def _first_match(self, room: str) -> RoomRule | None:
        for rule in self.rules:
            if fnmatchcase(room, rule.pattern):
                return rule
        return None


@dataclass(frozen=True)
class Grant:
    """
    What the policy grants one identity.

    @ivar roles: the roles assigned to the identity (inherited ones are not
        repeated here; their commands are in C{commands}).
    @ivar commands: every command those roles grant, inheritance included.
    @ivar rate: the most generous rate of those roles.
    @ivar lineage: those roles and every role they inherit, which the
        room rules are checked against: an admin who inherits user may go
        where users may.
    @ivar rooms: the room rules the grant is checked against.
    @ivar granted_by: how the roles were decided, for the audit log:
        C{"[identities]"}, the rules that matched, or C{"default_roles"}.
    """

    roles: tuple[str, ...]
    commands: frozenset[str]
    rate: Rate
    lineage: frozenset[str]
    rooms: RoomRules
    granted_by: str

    def may_join(self, room: str) -> bool:
        """
        Whether these roles may be in C{room}: JOIN, and the room rules.
        """
        return (
            "JOIN" in self.commands
            and self.rooms.refusal("join", room, self.lineage) is None
        )


ADMIN_ONLY_COMMANDS = frozenset({"METRICS", "BACKUP"})
"""Commands a policy may grant that have no line of their own: reading
the admin interface's /metrics, and backing the message store up through
its /v1/backup (a file written on the daemon's host has no place on a
client's line)."""

PRESENCE = "PRESENCE"
"""The right to be told who comes online and goes offline."""

PUSH_ONLY_RIGHTS = frozenset({PRESENCE})
"""Rights a policy may grant that are no command at all: PRESENCE has a
session told as identities come online and go offline, which tells whoever
holds it when others are about, so it is granted, not given to all."""

GRANTABLE = COMMAND_NAMES | ADMIN_ONLY_COMMANDS | PUSH_ONLY_RIGHTS
"""Every command name a role may grant."""

ALWAYS_GRANTED = frozenset({"ACK", "CAPS"})
"""Commands every admitted identity has, whatever its roles: ACK only
touches one's own mailbox, and without it every message would come back
at every login; CAPS says what the server offers, which a client needs
to know whatever it may do."""


@dataclass(frozen=True)
class Policy:
    """
    A validated policy.

    @ivar role_commands: each role with the full set of commands it grants,
        inherited ones included.
    @ivar role_rates: each role's rate, inherited if it sets none.
    @ivar role_lineage: each role with every role it inherits, itself
        included.
    @ivar identities: identities listed by name, with their roles.
    @ivar rules: the C{[[rules]]} entries, in file order.
    @ivar default_roles: the roles of a verified identity that is neither
        listed nor matched by a rule; empty means it is refused.
    @ivar rooms: the C{[[rooms]]} entries.
    """

    role_commands: Mapping[str, frozenset[str]]
    role_rates: Mapping[str, Rate]
    role_lineage: Mapping[str, frozenset[str]]
    identities: Mapping[str, tuple[str, ...]]
    rules: tuple[AttributeRule, ...]
    default_roles: tuple[str, ...]
    rooms: RoomRules
    _grants: dict[tuple[tuple[str, ...], str], Grant] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def grant_for(self, identity: str, certificate: x509.Certificate) -> Grant | None:
        """
        The roles, commands and rate of C{identity}, whose verified leaf
        certificate is C{certificate}, or L{None} if the policy admits it to
        no role at all.

        Sessions granted the same roles the same way share one L{Grant}:
        it is immutable, and each session kept sets of its own otherwise.
        """
        roles, granted_by = self._roles_of(identity, certificate)
        if not roles:
            return None
        grant = self._grants.get((roles, granted_by))
        if grant is None:
            grant = self._grants[roles, granted_by] = self._grant(roles, granted_by)
        return grant

    def _grant(self, roles: tuple[str, ...], granted_by: str) -> Grant:
        commands = frozenset().union(
            ALWAYS_GRANTED, *(self.role_commands[role] for role in roles)
        )
        rate = max(self.role_rates[role] for role in roles)
        lineage = frozenset().union(*(self.role_lineage[role] for role in roles))
        return Grant(roles, commands, rate, lineage, self.rooms, granted_by)

    def _roles_of(
        self, identity: str, certificate: x509.Certificate
    ) -> tuple[tuple[str, ...], str]:
        if identity in self.identities:
            return self.identities[identity], "[identities]"
        matched = [rule for rule in self.rules if rule.match.matches(certificate)]
        if matched:
            roles = dict.fromkeys(role for rule in matched for role in rule.roles)
            return tuple(roles), ", ".join(rule.describe() for rule in matched)
        return self.default_roles, "default_roles"


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
        # Names in the problem are the file's own keys and strings, which
        # TOML lets hold any character; the words go to logs and replies.
        return PolicyError(source, escape_controls(problem))

    _only_keys(
        data,
        {"default_roles", "roles", "identities", "rules", "rooms"},
        "the policy",
        fail,
    )
    declared = _declared_roles(_table(data.get("roles", {}), "[roles]", fail), fail)
    role_lineage = {name: _lineage(name, declared, fail) for name in declared}
    role_commands = {
        name: frozenset().union(*(declared[r][0] for r in role_lineage[name]))
        for name in declared
    }
    role_rates = {name: _inherited_rate(name, declared) for name in declared}

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
    rules = tuple(
        _attribute_rule(number, entry, declared, fail)
        for number, entry in enumerate(_tables(data, "rules", fail), start=1)
    )
    rooms = _room_rules(_tables(data, "rooms", fail), declared, fail)
    return Policy(
        role_commands, role_rates, role_lineage, identities, rules, default_roles, rooms
    )


_Declared = Mapping[str, tuple[frozenset[str], tuple[str, ...], Rate | None]]
"""Each role as written: its own commands, the roles it inherits, its own
rate if it sets one."""


def _declared_roles(roles: Mapping[str, Any], fail: _Fail) -> _Declared:
    declared: dict[str, tuple[frozenset[str], tuple[str, ...], Rate | None]] = {}
    for name, role in roles.items():
        where = f"[roles.{name}]"
        role = _table(role, where, fail)
        _only_keys(role, {"commands", "inherits", "rate", "burst"}, where, fail)
        commands = _names(role.get("commands", []), f"{where} commands", fail)
        unknown = sorted(set(commands) - GRANTABLE)
        if unknown:
            raise fail(
                f"{where} grants unknown command {', '.join(unknown)}; "
                f"known commands: {', '.join(sorted(GRANTABLE))}"
            )
        inherits = _names(role.get("inherits", []), f"{where} inherits", fail)
        declared[name] = (
            frozenset(commands),
            tuple(inherits),
            _rate(role, where, fail),
        )
    for name, (_, parents, _) in declared.items():
        _check_roles_exist(parents, declared, f"[roles.{name}] inherits", fail)
    return declared


def _rate(role: Mapping[str, Any], where: str, fail: _Fail) -> Rate | None:
    """
    A role's own rate: C{rate} commands per second with bursts of C{burst}
    (by default, three seconds' worth).
    """
    if "rate" not in role:
        if "burst" in role:
            raise fail(f"{where} sets burst without rate")
        return None
    per_second = role["rate"]
    if (
        isinstance(per_second, bool)
        or not isinstance(per_second, int | float)
        or not 0 < per_second <= MOST_RATE
    ):
        raise fail(
            f"{where} rate must be a number of commands per second above 0 "
            f"and at most 1e9, not {per_second!r}"
        )
    burst = role.get("burst", max(1, round(per_second * 3)))
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 10**9:
        raise fail(f"{where} burst must be a whole number of commands, 1 or more")
    return Rate(float(per_second), burst)


def _inherited_rate(role: str, declared: _Declared) -> Rate:
    """
    A role's rate: its own, else the most generous one it inherits, else
    L{DEFAULT_RATE}.  Cycles were refused by L{_lineage} before this runs.
    """
    _, inherits, own = declared[role]
    if own is not None:
        return own
    return max(
        (_inherited_rate(parent, declared) for parent in inherits),
        default=DEFAULT_RATE,
    )


def _attribute_rule(
    number: int, entry: Mapping[str, Any], declared: _Declared, fail: _Fail
) -> AttributeRule:
    where = f"[[rules]] entry {number}"
    _only_keys(
        entry, {"subject", "san_uri_prefix", "san_email_domain", "roles"}, where, fail
    )
    subject: list[tuple[str, str]] = []
    for name, value in _table(
        entry.get("subject", {}), f"{where} subject", fail
    ).items():
        if name not in SUBJECT_FIELDS:
            raise fail(
                f"{where} subject field {name!r} is not one of "
                f"{', '.join(SUBJECT_FIELDS)}"
            )
        if not isinstance(value, str) or not value:
            raise fail(f"{where} subject {name} must be a non-empty string")
        subject.append((name, value))
    prefix = _optional_string(entry, "san_uri_prefix", where, fail)
    if prefix is not None and not prefix.endswith("/"):
        # Without it, spiffe://example.org/service would also match
        # spiffe://example.org/service-evil.
        raise fail(f"{where} san_uri_prefix must end with / to match whole segments")
    domain = _optional_string(entry, "san_email_domain", where, fail)
    if domain is not None and "@" in domain:
        raise fail(f"{where} san_email_domain is a domain, without @")
    match = AttributeMatch(tuple(subject), prefix, domain)
    if match == AttributeMatch():
        raise fail(f"{where} matches every certificate; give subject or a SAN test")
    roles = tuple(_names(entry.get("roles", []), f"{where} roles", fail))
    if not roles:
        raise fail(f"{where} grants no roles")
    _check_roles_exist(roles, declared, f"{where} roles", fail)
    return AttributeRule(number, match, roles)


def _room_rules(
    entries: list[Mapping[str, Any]], declared: _Declared, fail: _Fail
) -> RoomRules:
    rules: list[RoomRule] = []
    for number, entry in enumerate(entries, start=1):
        where = f"[[rooms]] entry {number}"
        _only_keys(entry, {"pattern", *ROOM_ACTIONS}, where, fail)
        pattern = entry.get("pattern")
        if not isinstance(pattern, str) or not _ROOM_PATTERN.fullmatch(pattern):
            raise fail(
                f"{where} pattern must be a lower-case room name in which * "
                'and ? match any characters, such as "#ops-*"'
            )
        if any(rule.pattern == pattern for rule in rules):
            raise fail(f"{where} repeats the pattern {pattern}; only one would apply")
        if "join" not in entry:
            raise fail(f"{where} must say which roles may join")
        allowed: dict[str, frozenset[str]] = {}
        previous = "join"
        for action in ROOM_ACTIONS:
            # read defaults to whoever may join, say to whoever may read.
            if action in entry:
                names = _names(entry[action], f"{where} {action}", fail)
                _check_roles_exist(names, declared, f"{where} {action}", fail)
                allowed[action] = frozenset(names)
            else:
                allowed[action] = allowed[previous]
            previous = action
        rules.append(RoomRule(pattern, allowed))
    return RoomRules(tuple(rules))


def _lineage(role: str, declared: _Declared, fail: _Fail) -> frozenset[str]:
    """
    C{role} and every role it inherits, refusing cycles.
    """
    lineage: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> None:
        if name in path:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise fail(f"inheritance cycle: {cycle}")
        path.append(name)
        lineage.add(name)
        for parent in declared[name][1]:
            visit(parent)
        path.pop()

    visit(role)
    return frozenset(lineage)


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


def _tables(data: Mapping[str, Any], key: str, fail: _Fail) -> list[Mapping[str, Any]]:
    """
    An array of tables, C{[[key]]}; absent means none.
    """
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise fail(f"{key} must be written as [[{key}]] tables")
    return value


def _optional_string(
    table: Mapping[str, Any], key: str, where: str, fail: _Fail
) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise fail(f"{where} {key} must be a non-empty string")
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
