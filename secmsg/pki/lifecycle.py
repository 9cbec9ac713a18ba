"""
A certificate's life beyond C{issue}: a key and a signing request made on
its holder's machine, the certificate signed from that request on the
CA's, and renewed for the same identity, the certificate it replaces
revoked as superseded.  Both end in
L{CertificateAuthority.issue}, so that every certificate has the one
profile whoever made its key.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secmsg.errors import AuthorityError, ConfigurationError
from secmsg.files import install_file, read_bytes
from secmsg.pem import certificates_in
from secmsg.pki import certificates as pki
from secmsg.pki.authority import CertificateAuthority, Issuance
from secmsg.pki.requests import (
    Grant,
    Request,
    check_name,
    check_rsa_bits,
    check_signing_request,
    checked_names,
)


def make_signing_request(
    directory: Path,
    name: str,
    *,
    names: pki.Names | None = None,
    units: tuple[str, ...] = (),
    rsa_bits: int | None = None,
    replace: bool = False,
) -> tuple[Path, Path]:
    """
    On the user's machine: a new private key, C{directory/NAME.key} (0600
    from its first byte), and a signing request for it, C{NAME.csr}, to be
    carried to the CA.

    @return: the key's file and the request's.
    @raise AuthorityError: the name or a name asked for is malformed, or
        the files exist and C{replace} is false; nothing is written then.
    """
    names = names or pki.Names()
    check_name(name)
    check_rsa_bits(rsa_bits)
    checked_names(Request(name, names=names))
    key_path, csr_path = directory / f"{name}.key", directory / f"{name}.csr"
    if not replace:
        for path in (key_path, csr_path):
            if path.exists():
                raise AuthorityError(
                    f"{path} already exists; not overwritten (--force replaces it)"
                )
    key = pki.new_private_key(rsa_bits)
    csr = pki.signing_request(key, name, names=names, units=units)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    install_file(key_path, pki.private_pem(key), private=True)
    install_file(csr_path, pki.pem(csr), private=False)
    return key_path, csr_path


def sign_request(
    authority: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    grant: Grant,
    now: datetime,
    *,
    days: int | None = None,
    replace: bool = False,
) -> Issuance:
    """
    Sign a client certificate for a signing request that passes every
    check, with what C{grant} gives it; its key stays with its maker.

    @raise AuthorityError: the request is refused, saying why; nothing is
        written then.
    """
    checked = check_signing_request(csr, grant)
    request = Request(
        checked.name,
        names=grant.names,
        units=grant.units,
        days=days,
        replace=replace,
        public_key=checked.public_key,
    )
    issuance = authority.issue(request, now)
    return dataclasses.replace(issuance, ignored=checked.ignored)


def renew(
    authority: CertificateAuthority,
    name: str,
    now: datetime,
    *,
    days: int | None = None,
    rsa_bits: int | None = None,
    csr: x509.CertificateSigningRequest | None = None,
    new_key: bool = False,
) -> Issuance:
    """
    A new certificate for the identity of C{name}'s newest unrevoked
    certificate, with the same kind, units and names: for a new key (of
    the old one's type unless C{rsa_bits} says), or for the key of C{csr}.
    The old certificate is revoked as superseded as the new one is
    recorded, and on the CRL once the new one is written.

    A certificate signed from a request has its key with its owner only;
    making a new key here for it takes C{new_key}, so that a renewal never
    quietly undoes the promise that the CA does not see the key.

    @raise AuthorityError: C{name} has no certificate to renew, its key is
        kept by its owner and neither C{csr} nor C{new_key} is given, or
        the request is refused.
    """
    old = _renewable(authority, name)
    kind = "server" if _is_server(old) else "client"
    if csr is None and not new_key:
        _refuse_key_kept_elsewhere(authority.directory / f"{kind}s" / f"{name}.key")
    request = Request(
        name,
        server=_is_server(old),
        names=_names_of(old),
        days=days,
        rsa_bits=rsa_bits or _rsa_bits_of(old),
        replace=True,
        units=tuple(
            str(a.value)
            for a in old.subject
            if a.oid == NameOID.ORGANIZATIONAL_UNIT_NAME
        ),
    )
    if csr is None:
        return authority.issue(request, now)
    checked = check_signing_request(csr, Grant(request.units, request.names))
    if checked.name != name:
        raise AuthorityError(
            f"the request is for {checked.name!r}, not {name!r}; a renewal "
            "keeps the identity"
        )
    request = dataclasses.replace(request, rsa_bits=None, public_key=checked.public_key)
    issuance = authority.issue(request, now)
    return dataclasses.replace(issuance, ignored=checked.ignored)


def _refuse_key_kept_elsewhere(key: Path) -> None:
    """
    Refuse to make a key at the CA for a certificate whose key is not here.
    """
    if key.exists():
        return
    name = key.stem
    raise AuthorityError(
        f"{name!r} keeps its own key (no {key} here): renew from a new request "
        f"(its owner runs secmsg pki request {name} --force; then here, "
        f"secmsg pki renew {name} --csr {name}.csr), or give --new-key to make "
        "one here to hand over"
    )


def _renewable(authority: CertificateAuthority, name: str) -> x509.Certificate:
    """
    The certificate file of C{name}'s newest unrevoked certificate.
    """
    records = [
        r
        for r in authority.inventory.records
        if r.name == name and r.kind in ("client", "server") and r.revoked is None
    ]
    if not records:
        raise AuthorityError(
            f"nothing to renew: {name!r} has no unrevoked certificate "
            "(secmsg pki list shows what is; issue makes a new one)"
        )
    newest = max(records, key=lambda r: r.not_after)
    path = authority.directory / f"{newest.kind}s" / f"{name}.pem"
    try:
        certificate = certificates_in(read_bytes(path), path)[0]
    except ConfigurationError as error:
        raise AuthorityError(
            f"cannot renew {name!r}: {error}; issue --force makes a new one"
        ) from None
    if certificate.serial_number != newest.serial:
        raise AuthorityError(
            f"cannot renew {name!r}: {path} is not its certificate "
            f"{newest.serial:x}; issue --force makes a new one"
        )
    return certificate


def _is_server(certificate: x509.Certificate) -> bool:
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    return ExtendedKeyUsageOID.SERVER_AUTH in usage.value


def _names_of(certificate: x509.Certificate) -> pki.Names:
    try:
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return pki.Names()
    return pki.Names(
        dns=tuple(san.get_values_for_type(x509.DNSName)),
        ips=tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
        emails=tuple(san.get_values_for_type(x509.RFC822Name)),
        uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
    )


def _rsa_bits_of(certificate: x509.Certificate) -> int | None:
    """
    The size of the old key if it was RSA, so that a renewal keeps its
    type; one secmsg no longer makes becomes the smallest it does.
    """
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return None
    return key.key_size if key.key_size in pki.RSA_SIZES else pki.RSA_SIZES[0]
