"""
An operator's certificate authority in a directory, as C{secmsg pki} keeps it.

    DIR/ca.pem, DIR/ca.key       the CA (the key 0600)
    DIR/crl.pem                  its current CRL, which the daemon reads
    DIR/inventory.json           every certificate issued, and revocations
    DIR/clients/NAME.pem, .key   client certificates
    DIR/servers/NAME.pem, .key   server certificates

The inventory is the authority's memory: the CRL is made from it, so a CRL
can always be signed again, and C{list} reads it.  Every change takes the
directory's lock and writes each file in one step, so that two commands
at once cannot lose a revocation and the daemon never reads half a CRL.
"""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from secmsg.errors import AuthorityError, ConfigurationError
from secmsg.files import read_bytes
from secmsg.pem import certificates_in, check_key_pair, private_key_in
from secmsg.pki import certificates as pki
from secmsg.wire import NAME_TOKEN

INVENTORY_VERSION = 1

CA_FILES = ("ca.pem", "ca.key", "inventory.json")
"""The files that make a directory a CA's."""

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

_DNS_NAME = re.compile(
    # No wildcards: a secmsg server certificate names the hosts it serves.
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]+")
_EMAIL = re.compile(r"[!-?A-~]+@[!-?A-~]+")


@dataclass
class Record:
    """
    One issued certificate, as the inventory remembers it.

    @ivar kind: C{"client"}, C{"server"} or C{"ca"}.
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


@dataclass(frozen=True)
class Request:
    """
    What C{secmsg pki issue} was asked for.

    @ivar name: the certificate's CN and its files' name.
    @ivar server: a server certificate (serverAuth) rather than a client's.
    @ivar names: its subject alternative names; a server certificate
        without DNS names or IP addresses is made for C{name}.
    @ivar days: how long it is valid; L{None} for a year, or until the CA
        expires if that is sooner.
    @ivar rsa_bits: an RSA key of this size, or L{None} for ECDSA P-256.
    @ivar replace: whether existing files for C{name} may be replaced.
    @ivar units: organisational units (OU) for its subject.
    """

    name: str
    server: bool = False
    names: pki.Names = field(default_factory=pki.Names)
    days: int | None = None
    rsa_bits: int | None = None
    replace: bool = False
    units: tuple[str, ...] = ()


class CertificateAuthority:
    """
    A CA directory, opened for one command under its lock.
    """

    def __init__(self, directory: Path, ca: pki.Issued, inventory: Inventory) -> None:
        self.directory = directory
        self.ca = ca
        self.inventory = inventory

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    def issue(self, request: Request, now: datetime) -> tuple[Record, Path, Path]:
        """
        Issue a certificate, write it and its key, and remember it.

        @return: its record, its certificate file and its key file.
        @raise AuthorityError: the request is invalid or would outlive the CA.
        @raise ConfigurationError: its files exist and may not be replaced.
        """
        _check_file_name(request.name)
        check_rsa_bits(request.rsa_bits)
        names = _checked_names(request)
        kind = "server" if request.server else "client"
        folder = self.directory / f"{kind}s"
        certificate_path = folder / f"{request.name}.pem"
        key_path = folder / f"{request.name}.key"
        if not request.replace:
            for path in (certificate_path, key_path):
                if path.exists():
                    raise AuthorityError(
                        f"{path} already exists; not overwritten (--force replaces it)"
                    )
        days = request.days
        if days is None:
            left = self.ca.certificate.not_valid_after_utc - now
            days = max(1, min(pki.LEAF_DAYS, left.days))
        self._check_lifetime("--days", now, days)
        folder.mkdir(mode=0o700, exist_ok=True)
        issued = pki.issue(
            self.ca,
            request.name,
            now,
            days,
            server=request.server,
            names=names,
            key=pki.new_private_key(request.rsa_bits),
            units=request.units,
        )
        record = Record(
            request.name,
            issued.certificate.serial_number,
            kind,
            issued.certificate.not_valid_after_utc,
        )
        self.inventory.records.append(record)
        self._save_inventory()
        pki.install_file(key_path, pki.private_pem(issued.key), private=True)
        pki.install_file(certificate_path, pki.pem(issued.certificate), private=False)
        return record, certificate_path, key_path

    def revoke(self, name_or_serial: str, reason: str, now: datetime) -> list[Record]:
        """
        Revoke every unrevoked certificate issued to a name, or the one with
        a serial number (hex), and sign a fresh CRL.

        @raise AuthorityError: nothing unrevoked matches.
        """
        if reason not in REVOCATION_REASONS:
            raise AuthorityError(
                f"unknown reason {reason!r}; one of: {', '.join(REVOCATION_REASONS)}"
            )
        matches = self._matching(name_or_serial)
        unrevoked = [r for r in matches if r.revoked is None]
        if not unrevoked:
            already = "is already revoked" if matches else "is not in the inventory"
            raise AuthorityError(
                f"nothing to revoke: {name_or_serial!r} {already} "
                "(secmsg pki list shows what is)"
            )
        for record in unrevoked:
            record.revoked = now
            record.reason = reason
        try:
            self.sign_crl(now)
        except ConfigurationError as error:
            raise AuthorityError(
                f"the revocation is in the inventory but the CRL was not written "
                f"({error}); write it with: secmsg pki --dir {self.directory} crl"
            ) from None
        return unrevoked

    def sign_crl(
        self, now: datetime, days: int = pki.CRL_DAYS
    ) -> x509.CertificateRevocationList:
        """
        Sign and write a CRL of every revocation, with the next CRL number.
        The inventory is saved first, so that a crash between the two leaves
        a CRL that C{secmsg pki crl} can sign again.

        @raise AuthorityError: the CRL would outlive the CA.
        """
        self._check_lifetime("the CRL's --days", now, days)
        self.inventory.crl_number += 1
        self._save_inventory()
        revoked = [
            pki.Revocation(r.serial, r.revoked, REVOCATION_REASONS[r.reason])
            for r in self.inventory.records
            if r.revoked is not None
        ]
        crl = pki.sign_crl(self.ca, now, self.inventory.crl_number, revoked, days)
        pki.install_file(self.crl_path, pki.pem(crl), private=False)
        return crl

    def _check_lifetime(self, what: str, now: datetime, days: int) -> None:
        expires = self.ca.certificate.not_valid_after_utc
        if days < 1:
            raise AuthorityError(f"{what} must be at least 1, not {days}")
        if now + timedelta(days=days) > expires:
            raise AuthorityError(
                f"{what} {days} would outlive the CA, which expires {expires:%Y-%m-%d}"
            )

    def _matching(self, name_or_serial: str) -> list[Record]:
        """
        The certificates issued to a name or, failing that, the one with a
        serial; never the CA's own.
        """
        issued = [r for r in self.inventory.records if r.kind != "ca"]
        by_name = [r for r in issued if r.name == name_or_serial]
        if by_name:
            return by_name
        serial = _parse_serial(name_or_serial)
        return [r for r in issued if r.serial == serial]

    def _save_inventory(self) -> None:
        pki.install_file(
            self.directory / "inventory.json", self.inventory.to_json(), private=False
        )


def create_authority(
    directory: Path,
    subject: x509.Name,
    now: datetime,
    *,
    days: int = pki.CA_DAYS,
    rsa_bits: int | None = None,
    replace: bool = False,
) -> CertificateAuthority:
    """
    Make a CA in C{directory} (created 0700 if missing) with an empty CRL.

    @raise AuthorityError: the directory holds a CA and C{replace} is false,
        or the request is invalid.
    """
    check_rsa_bits(rsa_bits)
    if days < 1:
        raise AuthorityError(f"--days must be at least 1, not {days}")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(directory):
        if not replace:
            for name in CA_FILES:
                if (directory / name).exists():
                    raise AuthorityError(
                        f"{directory / name} already exists; not overwritten "
                        "(--force replaces the CA, and every certificate it "
                        "issued stops being trusted)"
                    )
        ca = pki.create_ca(subject, now, days, pki.new_private_key(rsa_bits))
        pki.install_file(directory / "ca.key", pki.private_pem(ca.key), private=True)
        pki.install_file(directory / "ca.pem", pki.pem(ca.certificate), private=False)
        record = Record(
            "ca", ca.certificate.serial_number, "ca", ca.certificate.not_valid_after_utc
        )
        authority = CertificateAuthority(directory, ca, Inventory([record]))
        authority.sign_crl(now)
        return authority


@contextmanager
def open_authority(directory: Path) -> Iterator[CertificateAuthority]:
    """
    The CA in C{directory}, held under its lock for the C{with} block.

    @raise AuthorityError: it holds no CA.
    @raise ConfigurationError: its CA is damaged, or its key is not the
        CA certificate's.
    """
    if not (directory / "ca.pem").exists():
        raise AuthorityError(
            f"{directory} holds no CA (no ca.pem); make one with: "
            f"secmsg pki init {directory}"
        )
    with _locked(directory):
        certificate_path, key_path = directory / "ca.pem", directory / "ca.key"
        certificate = certificates_in(
            read_bytes(certificate_path), certificate_path, "CA certificate"
        )[0]
        key = private_key_in(read_bytes(key_path), key_path)
        check_key_pair(key, key_path, certificate, certificate_path)
        inventory = Inventory.from_json(directory / "inventory.json")
        yield CertificateAuthority(directory, pki.Issued(certificate, key), inventory)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    descriptor = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def check_rsa_bits(rsa_bits: int | None) -> None:
    """
    @raise AuthorityError: C{rsa_bits} is neither L{None} (ECDSA) nor a size
        secmsg makes.
    """
    if rsa_bits is not None and rsa_bits not in pki.RSA_SIZES:
        sizes = " or ".join(str(size) for size in pki.RSA_SIZES)
        raise AuthorityError(f"RSA keys are {sizes} bits, not {rsa_bits}")


def _check_file_name(name: str) -> None:
    if not NAME_TOKEN.fullmatch(name) or name.startswith("."):
        raise AuthorityError(
            f"{name!r} is not a usable name: letters, digits and ._@+-, "
            "1 to 64 characters, not starting with a dot"
        )


def _checked_names(request: Request) -> pki.Names:
    names = request.names
    if request.server and not (names.dns or names.ips):
        names = dataclasses.replace(names, dns=(request.name,))
    for host in names.dns:
        if _is_ip_address(host) or not _DNS_NAME.fullmatch(host):
            raise AuthorityError(f"{host!r} is not a DNS name (--ip takes addresses)")
    for address in names.ips:
        if not _is_ip_address(address):
            raise AuthorityError(f"{address!r} is not an IP address")
    for email in names.emails:
        if not _EMAIL.fullmatch(email):
            raise AuthorityError(f"{email!r} is not an e-mail address")
    for uri in names.uris:
        if not _URI.fullmatch(uri):
            raise AuthorityError(f"{uri!r} is not a URI")
    return names


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_serial(text: str) -> int | None:
    try:
        return int(text.replace(":", ""), 16)
    except ValueError:
        return None
