"""
An operator's certificate authority in a directory, as C{secmsg pki} keeps it.

    DIR/ca.pem, DIR/ca.key       the CA (the key 0600, encrypted if asked);
                                 an issuing CA's ca.pem holds its root after it
    DIR/crl.pem                  its current CRL (and its root's), which the
                                 daemon reads
    DIR/root-crl.pem             an issuing CA's copy of its root's CRL
    DIR/inventory.json           every certificate issued, and revocations
    DIR/clients/NAME.pem, .key   client certificates (no key for one signed
                                 from a request)
    DIR/servers/NAME.pem, .key   server certificates

The inventory is the authority's memory: the CRL is made from it, so a CRL
can always be signed again, and C{list} reads it.  Every change takes the
directory's lock and writes each file in one step, so that two commands
at once cannot lose a revocation and the daemon never reads half a CRL.
A CA of one level signs leaf certificates; a root (path length 1) signs
only issuing CAs (path length 0), so that its key can stay offline.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from secmsg.errors import AuthorityError, ConfigurationError
from secmsg.files import install_file, read_bytes
from secmsg.pem import certificates_in, key_matches
from secmsg.pki import certificates as pki
from secmsg.pki.inventory import REVOCATION_REASONS, Inventory, Record
from secmsg.pki.keys import Passphrase, is_encrypted, load_key
from secmsg.pki.requests import Request, check_name, check_rsa_bits, checked_names

CA_FILES = ("ca.pem", "ca.key", "inventory.json")
"""The files that make a directory a CA's."""

_INTERRUPTED_INIT = (
    "if a `secmsg pki init --force` was cut short, run it again (it makes a new CA)"
)

ROOT_CRL_DAYS = 365
"""How long a root's CRL lasts by default: a root is brought online
rarely, and its CRL (which lists only issuing CAs) is signed then."""


@dataclass(frozen=True)
class Issuance:
    """
    What issuing a certificate did.

    @ivar key: its new private key's file, or L{None} for a certificate
        signed from a request, whose key the CA never saw.
    @ivar superseded: the certificates for the same name it revoked.
    @ivar earlier: those it left in force, as nothing was replaced.
    @ivar ignored: the extensions a signing request asked for, which the
        CA decided itself.
    """

    record: Record
    certificate: Path
    key: Path | None
    superseded: list[Record]
    earlier: list[Record]
    ignored: tuple[str, ...] = ()


class CertificateAuthority:
    """
    A CA directory, opened for one command under its lock.  Its key is read
    when something is first signed, so that listing needs no passphrase.
    """

    def __init__(
        self,
        directory: Path,
        certificates: list[x509.Certificate],
        inventory: Inventory,
        passphrase: Passphrase | None = None,
        key: pki.PrivateKey | None = None,
    ) -> None:
        """
        @param certificates: its own certificate, then its root's for an
            issuing CA.
        @param key: its key, when it was just made; otherwise it is read
            from C{ca.key} when first needed, with C{passphrase}.
        """
        self.directory = directory
        self.certificate = certificates[0]
        self.chain = certificates[1:]
        self.inventory = inventory
        self._passphrase = passphrase
        self._signer = pki.Issued(self.certificate, key) if key else None

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def is_root(self) -> bool:
        """
        Whether this CA may sign CAs (a root), rather than leaf certificates.
        """
        try:
            constraints = self.certificate.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value
        except x509.ExtensionNotFound:
            return False
        return bool(constraints.path_length)

    def signer(self) -> pki.Issued:
        """
        The CA certificate with its key, read (and its passphrase asked
        for) the first time.

        @raise AuthorityError: the key's passphrase is wrong or missing.
        @raise ConfigurationError: the key is not the CA certificate's.
        """
        if self._signer is None:
            path = self.directory / "ca.key"
            key = load_key(path, self._passphrase)
            if not key_matches(key, self.certificate):
                raise ConfigurationError(
                    str(path),
                    f"key does not match the certificate in "
                    f"{self.directory / 'ca.pem'}; {_INTERRUPTED_INIT}",
                )
            self._signer = pki.Issued(self.certificate, key)
        return self._signer

    def issue(self, request: Request, now: datetime) -> Issuance:
        """
        Issue a certificate, write it (and its key, unless it is for a
        signing request's) and remember it; with C{request.replace}, revoke
        the certificates in force for the same name as superseded, in the
        inventory as it is remembered and on the CRL once it is written.

        @raise AuthorityError: the request is invalid, would outlive the CA,
            or its files exist and may not be replaced.
        """
        self._refuse_if_root()
        check_name(request.name)
        check_rsa_bits(request.rsa_bits)
        names = checked_names(request)
        kind = "server" if request.server else "client"
        certificate_path, key_path = self._leaf_files(request, kind)
        days = self._leaf_days(request.days, now)
        earlier = self.inventory.in_force(request.name, kind, now)
        key, public_key = None, request.public_key
        if public_key is None:
            key = pki.new_private_key(request.rsa_bits)
            public_key = key.public_key()
        certificate = pki.sign_leaf(
            self.signer(),
            public_key,
            request.name,
            now,
            days,
            server=request.server,
            names=names,
            units=request.units,
        )
        expires = certificate.not_valid_after_utc
        record = Record(request.name, certificate.serial_number, kind, expires)
        superseded = earlier if request.replace else []
        # Revoked in the same save that records the new certificate: after
        # a crash or a CRL that cannot be signed, the inventory still says
        # so, and the next CRL it is signed from lists them.
        _mark_revoked(superseded, "superseded", now)
        self.inventory.records.append(record)
        self.save_inventory()
        _write_leaf([certificate, *self.issuers()], key, certificate_path, key_path)
        if superseded:
            self._sign_recorded_revocations(now)
        return Issuance(
            record,
            certificate_path,
            key_path if key is not None else None,
            superseded,
            [] if request.replace else earlier,
        )

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
        self._revoke_records(unrevoked, reason, now)
        return unrevoked

    def sign_crl(
        self, now: datetime, days: int | None = None
    ) -> x509.CertificateRevocationList:
        """
        Sign and write a CRL of every revocation, with the next CRL number;
        an issuing CA writes its root's CRL after its own, so that the one
        file holds every CRL the daemon needs.  The inventory is saved
        first, so that a crash between the two leaves a CRL that C{secmsg
        pki crl} can sign again.

        @param days: until its next update; L{None} for a month, or for a
            year from a root.
        @raise AuthorityError: the CRL would outlive the CA.
        """
        if days is None:
            days = ROOT_CRL_DAYS if self.is_root else pki.CRL_DAYS
        self.check_lifetime("the CRL's --days", now, days)
        signer = self.signer()
        self.inventory.crl_number += 1
        self.save_inventory()
        revoked = [
            pki.Revocation(r.serial, r.revoked, REVOCATION_REASONS[r.reason])
            for r in self.inventory.records
            if r.revoked is not None
        ]
        crl = pki.sign_crl(signer, now, self.inventory.crl_number, revoked, days)
        data = pki.pem(crl)
        if self.chain:
            data += read_bytes(self.directory / "root-crl.pem")
        install_file(self.crl_path, data, private=False)
        return crl

    def _revoke_records(
        self, records: list[Record], reason: str, now: datetime
    ) -> None:
        self.signer()
        _mark_revoked(records, reason, now)
        self.save_inventory()
        self._sign_recorded_revocations(now)

    def _sign_recorded_revocations(self, now: datetime) -> None:
        """
        Sign the CRL after revocations the inventory holds (saved), saying
        how to finish if it cannot be.
        """
        try:
            self.sign_crl(now)
        except (AuthorityError, ConfigurationError) as error:
            raise AuthorityError(
                f"the revocation is in the inventory but the CRL was not written "
                f"({error}); write it with: secmsg pki --dir {self.directory} crl"
            ) from None

    def issuers(self) -> list[x509.Certificate]:
        """
        What a certificate of this CA is written with after it: nothing for
        a CA of one level; for an issuing CA, itself, so that a server
        presents the chain up to the root (a daemon's C{cert} is a chain,
        leaf first), which is all a peer trusting the root alone needs.
        """
        return [self.certificate] if self.chain else []

    def check_lifetime(self, what: str, now: datetime, days: int) -> None:
        """
        @raise AuthorityError: C{days} from C{now} is less than a day or
            would outlive this CA.
        """
        expires = self.certificate.not_valid_after_utc
        if days < 1:
            raise AuthorityError(f"{what} must be at least 1, not {days}")
        if now + timedelta(days=days) > expires:
            raise AuthorityError(
                f"{what} {days} would outlive the CA, which expires {expires:%Y-%m-%d}"
            )

    def _refuse_if_root(self) -> None:
        if self.is_root:
            raise AuthorityError(
                f"{self.directory} is a root CA, which signs issuing CAs only "
                f"(secmsg pki init DIR --intermediate --root-dir {self.directory}); "
                "issue from one of those"
            )

    def _leaf_files(self, request: Request, kind: str) -> tuple[Path, Path]:
        """
        Where a leaf certificate and its key go, if they may.
        """
        folder = self.directory / f"{kind}s"
        paths = folder / f"{request.name}.pem", folder / f"{request.name}.key"
        if not request.replace:
            for path in paths:
                if path.exists():
                    raise AuthorityError(
                        f"{path} already exists; not overwritten (--force replaces it)"
                    )
        return paths

    def _leaf_days(self, days: int | None, now: datetime) -> int:
        if days is None:
            left = self.certificate.not_valid_after_utc - now
            days = max(1, min(pki.LEAF_DAYS, left.days))
        self.check_lifetime("--days", now, days)
        return days

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

    def save_inventory(self) -> None:
        """
        Write the inventory as it is now, in one step.
        """
        install_file(
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
    root: bool = False,
    passphrase: bytes | None = None,
) -> CertificateAuthority:
    """
    Make a self-signed CA in C{directory} (created 0700 if missing) with an
    empty CRL: one that signs leaf certificates or, with C{root}, one that
    signs only issuing CAs (L{create_issuing_authority}).

    @param passphrase: encrypt its key with this.
    @raise AuthorityError: the directory holds a CA and C{replace} is false,
        or the request is invalid.
    """
    check_rsa_bits(rsa_bits)
    if days < 1:
        raise AuthorityError(f"--days must be at least 1, not {days}")
    with _new_directory(directory, replace):
        key = pki.new_private_key(rsa_bits)
        ca = pki.create_ca(subject, now, days, key, path_length=1 if root else 0)
        return _install(directory, ca, [], passphrase, now)


def create_issuing_authority(
    directory: Path,
    root: CertificateAuthority,
    subject: x509.Name,
    now: datetime,
    *,
    days: int | None = None,
    rsa_bits: int | None = None,
    replace: bool = False,
    passphrase: bytes | None = None,
) -> CertificateAuthority:
    """
    Make in C{directory} an issuing CA (path length 0) signed by C{root},
    remembered in the root's inventory so that the root can revoke it.
    Its C{ca.pem} holds it and then the root, and its C{crl.pem} its CRL
    and then the root's: the two files the daemon needs, as for a CA of
    one level.

    @param days: its lifetime; L{None} for as long as the root has left.
    @raise AuthorityError: C{root} is not a root, its directory is this
        one, the new CA would outlive it or bear its name, or the directory
        already holds a CA.
    """
    if not root.is_root:
        raise AuthorityError(
            f"{root.directory} is not a root CA (secmsg pki init DIR --root makes one)"
        )
    if directory.resolve() == root.directory.resolve():
        raise AuthorityError("the issuing CA needs a directory of its own")
    if subject == root.certificate.subject:
        raise AuthorityError("the issuing CA needs a name (--cn) other than its root's")
    check_rsa_bits(rsa_bits)
    if days is None:
        days = (root.certificate.not_valid_after_utc - now).days
    root.check_lifetime("--days", now, days)
    root_crl = read_bytes(root.crl_path)
    # The root's passphrase first: a wrong one leaves no directory behind.
    signer = root.signer()
    with _new_directory(directory, replace):
        key = pki.new_private_key(rsa_bits)
        ca = pki.create_ca(subject, now, days, key, issuer=signer)
        root.inventory.records.append(
            Record(
                _common_name(subject),
                ca.certificate.serial_number,
                "issuing",
                ca.certificate.not_valid_after_utc,
            )
        )
        root.save_inventory()
        install_file(directory / "root-crl.pem", root_crl, private=False)
        return _install(directory, ca, [root.certificate], passphrase, now)


def take_root_crl(authority: CertificateAuthority, path: Path) -> int:
    """
    Keep a fresh CRL of an issuing CA's root (signed while the root was
    online), for the next L{CertificateAuthority.sign_crl} to write after
    the issuing CA's own.

    @return: the root CRL's number.
    @raise AuthorityError: this CA has no root, the file is not a CRL
        signed by it, or it is older than the one in use; nothing is
        changed then.
    """
    if not authority.chain:
        raise AuthorityError(
            f"{authority.directory} is not an issuing CA; --root-crl is for one"
        )
    authority.signer()  # the CRL is signed next: refuse a wrong passphrase first
    root = authority.chain[0]
    try:
        crl = x509.load_pem_x509_crl(read_bytes(path))
    except ValueError:
        raise AuthorityError(f"{path} holds no PEM CRL") from None
    if crl.issuer != root.subject or not crl.is_signature_valid(root.public_key()):
        raise AuthorityError(f"{path} is not a CRL signed by the root in ca.pem")
    kept = authority.directory / "root-crl.pem"
    number, in_use = (
        _crl_number(crl),
        _crl_number(x509.load_pem_x509_crl(read_bytes(kept))),
    )
    if number < in_use:
        raise AuthorityError(
            f"{path} is CRL number {number}, older than the root's CRL in use "
            f"({in_use})"
        )
    install_file(kept, pki.pem(crl), private=False)
    return number


@contextmanager
def open_authority(
    directory: Path, passphrase: Passphrase | None = None
) -> Iterator[CertificateAuthority]:
    """
    The CA in C{directory}, held under its lock for the C{with} block.  An
    unencrypted key is checked at once; an encrypted one, with its
    passphrase, when something is first signed.

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
        path = directory / "ca.pem"
        certificates = certificates_in(read_bytes(path), path, "CA certificate")
        inventory = Inventory.from_json(directory / "inventory.json")
        if not inventory.is_of(certificates[0].serial_number):
            raise ConfigurationError(
                str(directory / "inventory.json"),
                f"the inventory of another CA than {path}'s; {_INTERRUPTED_INIT}",
            )
        authority = CertificateAuthority(directory, certificates, inventory, passphrase)
        if not is_encrypted(directory / "ca.key"):
            authority.signer()
        yield authority


@contextmanager
def _new_directory(directory: Path, replace: bool) -> Iterator[None]:
    """
    C{directory}, created 0700 if missing and locked, if it holds no CA or
    C{replace} allows replacing it.
    """
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
        yield


def _install(
    directory: Path,
    ca: pki.Issued,
    chain: list[x509.Certificate],
    passphrase: bytes | None,
    now: datetime,
) -> CertificateAuthority:
    """
    Write a new CA's key, certificate (and chain), inventory and first CRL,
    in that order: the daemon reads C{ca.pem}, so an old CA's stays in
    force until the new key is in place, and a write cut short leaves a
    key, certificate or inventory that does not match the one before it,
    which L{open_authority} refuses in words.
    """
    key_pem = pki.private_pem(ca.key, passphrase)
    install_file(directory / "ca.key", key_pem, private=True)
    install_file(directory / "ca.pem", pki.pem(ca.certificate, *chain), private=False)
    certificate = ca.certificate
    record = Record(
        "ca", certificate.serial_number, "ca", certificate.not_valid_after_utc
    )
    authority = CertificateAuthority(
        directory, [certificate, *chain], Inventory([record]), key=ca.key
    )
    authority.sign_crl(now)
    return authority


def _mark_revoked(records: list[Record], reason: str, now: datetime) -> None:
    for record in records:
        record.revoked = now
        record.reason = reason


def _write_leaf(
    chain: list[x509.Certificate],
    key: pki.PrivateKey | None,
    certificate_path: Path,
    key_path: Path,
) -> None:
    """
    Write a leaf certificate (and the issuing CA after it, if any) and, if
    the CA made it, its key.  For one signed from a request, a key left
    from the certificate it replaces is removed: it no longer matches the
    certificate beside it.
    """
    certificate_path.parent.mkdir(mode=0o700, exist_ok=True)
    if key is not None:
        install_file(key_path, pki.private_pem(key), private=True)
    install_file(certificate_path, pki.pem(*chain), private=False)
    if key is None:
        key_path.unlink(missing_ok=True)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    descriptor = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _common_name(subject: x509.Name) -> str:
    names = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else subject.rfc4514_string()


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _parse_serial(text: str) -> int | None:
    try:
        return int(text.replace(":", ""), 16)
    except ValueError:
        return None
