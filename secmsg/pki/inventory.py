"""
The inventory of a CA directory: every certificate it issued, and each
revocation, as C{inventory.json} keeps them.  The CRL is made from it, so
a CRL can always be signed again, and C{secmsg pki list} reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from secmsg.errors import ConfigurationError
from secmsg.files import read_bytes

INVENTORY_VERSION = 1

REVOCATION_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}
"""The words C{revoke --reason} takes, and the CRL reason each stands for;
certificateHold is left out because secmsg's revocations are final."""


@dataclass
class Record:
    """
    One issued certificate, as the inventory remembers it.

    @ivar kind: C{"client"}, C{"server"}, C{"ca"} (the directory's own CA)
        or C{"issuing"} (an issuing CA that this root signed).
    @ivar revoked: when it was revoked, or L{None}.
    @ivar reason: the C{--reason} word it was revoked for.
    """

    name: str
    serial: int
    kind: str
    not_after: datetime
    revoked: datetime | None = None
    reason: str = "unspecified"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "serial": f"{self.serial:x}",
            "kind": self.kind,
            "not_after": self.not_after.isoformat(),
            "revoked": self.revoked.isoformat() if self.revoked else None,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        revoked = data["revoked"]
        if data["reason"] not in REVOCATION_REASONS:
            raise ValueError(f"unknown reason {data['reason']!r}")
        return cls(
            name=str(data["name"]),
            serial=int(data["serial"], 16),
            kind=str(data["kind"]),
            not_after=_aware(data["not_after"]),
            revoked=_aware(revoked) if revoked else None,
            reason=data["reason"],
        )


@dataclass
class Inventory:
    """
    What the authority has issued and revoked, and the last CRL number used.
    """

    records: list[Record] = field(default_factory=list)
    crl_number: int = 0

    def to_json(self) -> bytes:
        document = {
            "version": INVENTORY_VERSION,
            "crl_number": self.crl_number,
            "certificates": [record.to_json() for record in self.records],
        }
        return json.dumps(document, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, path: Path) -> Inventory:
        try:
            document = json.loads(read_bytes(path))
            if document["version"] != INVENTORY_VERSION:
                raise ConfigurationError(
                    str(path), f"inventory version {document['version']!r} unknown"
                )
            number = document["crl_number"]
            if not isinstance(number, int) or isinstance(number, bool):
                raise TypeError("crl_number is not a number")
            return cls(
                [Record.from_json(entry) for entry in document["certificates"]],
                number,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as failure:
            raise ConfigurationError(
                str(path), f"not a secmsg inventory: {failure!r}"
            ) from None

    def is_of(self, serial: int) -> bool:
        """
        Whether this is the inventory of the CA with C{serial}, as far as
        it says: one of another CA must not lend it its revocations.
        """
        own = [r.serial for r in self.records if r.kind == "ca"]
        return not own or serial in own

    def in_force(self, name: str, kind: str, now: datetime) -> list[Record]:
        """
        The certificates of C{name} and C{kind} that are neither revoked nor
        expired as of C{now}: what a new one for the same name supersedes.
        """
        return [
            r
            for r in self.records
            if (r.name, r.kind) == (name, kind)
            and r.revoked is None
            and r.not_after > now
        ]

    def expiring(self, now: datetime, within: timedelta) -> list[Record]:
        """
        The newest unrevoked certificate of each name and kind that expires
        within C{within} of C{now}, or has expired: each stays listed until
        it is renewed or revoked, so that no one is forgotten.
        """
        newest: dict[tuple[str, str], Record] = {}
        for record in self.records:
            if record.revoked is None:
                key = (record.name, record.kind)
                if key not in newest or record.not_after >= newest[key].not_after:
                    newest[key] = record
        return [r for r in newest.values() if r.not_after <= now + within]


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment
