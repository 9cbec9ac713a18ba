"""
The policy loader, fed TOML text.

Properties: it gives a policy or raises L{PolicyError}, whose words hold
nothing L{wire.escape_controls} would escape; and a policy it gives never
grants a command that the file does not write: every role grants exactly
the commands written for it and for the roles it inherits, found here from
the TOML independently of the loader, and every identity's grant holds no
command beyond those and the ones every identity has.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from secmsg import wire
from secmsg.daemon.policy import ALWAYS_GRANTED, GRANTABLE, Policy, load_policy
from secmsg.errors import PolicyError
from tests.fuzz.scratch import written


def one_input(data: bytes) -> None:
    """
    Load C{data} as a policy file and check what it grants.
    """
    path = written("policy.toml", data)
    try:
        policy = load_policy(path)
    except PolicyError as error:
        assert wire.escape_controls(str(error)) == str(error), str(error)
        return
    _check_grants(policy, tomllib.loads(data.decode("utf-8")))


def _check_grants(policy: Policy, raw: Mapping[str, Any]) -> None:
    roles = raw.get("roles", {})
    written_commands = {c for role in roles.values() for c in role.get("commands", [])}
    for name in roles:
        expected = _written_for(name, roles)
        assert policy.role_commands[name] == expected, (name, expected)
        assert expected <= GRANTABLE, expected
    identities = raw.get("identities", {})
    for identity in [*identities, "nobody.listed"]:
        grant = policy.grant_for(identity, _certificate())
        if grant is None:
            assert not identities.get(identity), identity
            continue
        assert grant.commands <= ALWAYS_GRANTED | written_commands, grant
        if identity in identities:
            assert grant.roles == tuple(identities[identity]), grant
            expected = set(ALWAYS_GRANTED).union(
                *(_written_for(role, roles) for role in identities[identity])
            )
            assert grant.commands == expected, (grant, expected)


def _written_for(role: str, roles: Mapping[str, Any]) -> frozenset[str]:
    """
    The commands the file writes for C{role} and every role it inherits.
    """
    seen, waiting = set(), [role]
    while waiting:
        name = waiting.pop()
        if name not in seen:
            seen.add(name)
            waiting.extend(roles[name].get("inherits", []))
    return frozenset(c for name in seen for c in roles[name].get("commands", []))


@functools.cache
def _certificate() -> x509.Certificate:
    """
    A certificate that the seed corpus's rules match (CN, O and a SAN
    e-mail address and URI), for the grants of identities not listed.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "fuzz"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
        ]
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    sans = [
        x509.RFC822Name("fuzz@example.org"),
        x509.UniformResourceIdentifier("spiffe://example.org/service/fuzz"),
    ]
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, None)
    )
