"""
What may be asked of the CA, and the checks that refuse the rest: the
request behind C{secmsg pki issue}, and the certificate signing requests
(CSRs) that C{secmsg pki request} makes on a user's machine and C{secmsg
pki sign} judges on the CA's, so that a user's private key never leaves
their machine.

A CSR is only a proposal.  It names the identity (its CN) and proves that
its maker holds the key; everything else in the certificate is decided by
the CA: the extensions always, and the organisational units and subject
alternative names, by which policy rules grant roles, only as the CA's
operator grants them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from secmsg.errors import AuthorityError
from secmsg.files import read_bytes
from secmsg.pki import certificates as pki
from secmsg.wire import NAME_TOKEN

_DNS_NAME = re.compile(
    # No wildcards: a secmsg server certificate names the hosts it serves.
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]+")
_EMAIL = re.compile(r"[!-?A-~]+@[!-?A-~]+")

CSR_CURVES = (ec.SECP256R1, ec.SECP384R1)
"""The elliptic curves a signing request's key may be on."""

CSR_MIN_RSA_BITS = 3072
"""The smallest RSA key a signing request may hold: smaller ones fall short
of 128-bit security, as for the keys secmsg makes."""


@dataclass(frozen=True)
class Request:
    """
    What the CA was asked to issue.

    @ivar name: the certificate's CN and its files' name.
    @ivar server: a server certificate (serverAuth) rather than a client's.
    @ivar names: its subject alternative names; a server certificate
        without DNS names or IP addresses is made for C{name}.
    @ivar days: how long it is valid; L{None} for a year, or until the CA
        expires if that is sooner.
    @ivar rsa_bits: an RSA key of this size, or L{None} for ECDSA P-256.
    @ivar replace: whether existing files for C{name} may be replaced (and
        the certificates in force for it revoked as superseded).
    @ivar units: organisational units (OU) for its subject.
    @ivar public_key: the key of a checked signing request, which the
        certificate is made for; L{None} makes a new key, written beside
        the certificate.
    """

    name: str
    server: bool = False
    names: pki.Names = field(default_factory=pki.Names)
    days: int | None = None
    rsa_bits: int | None = None
    replace: bool = False
    units: tuple[str, ...] = ()
    public_key: pki.PublicKey | None = None


@dataclass(frozen=True)
class Grant:
    """
    What the CA's operator grants a signing request beyond its CN: the
    certificate holds exactly these, and a request that asks for more is
    refused rather than quietly trimmed.
    """

    units: tuple[str, ...] = ()
    names: pki.Names = field(default_factory=pki.Names)


@dataclass(frozen=True)
class CheckedSigningRequest:
    """
    A signing request that passed every check.

    @ivar name: its CN, a name token.
    @ivar public_key: the key it proved it holds.
    @ivar ignored: the extensions it asked for that the CA decides itself.
    """

    name: str
    public_key: pki.PublicKey
    ignored: tuple[str, ...]


def check_rsa_bits(rsa_bits: int | None) -> None:
    """
    @raise AuthorityError: C{rsa_bits} is neither L{None} (ECDSA) nor a size
        secmsg makes.
    """
    if rsa_bits is not None and rsa_bits not in pki.RSA_SIZES:
        sizes = " or ".join(str(size) for size in pki.RSA_SIZES)
        raise AuthorityError(f"RSA keys are {sizes} bits, not {rsa_bits}")


def check_name(name: str) -> None:
    """
    @raise AuthorityError: C{name} is not a secmsg identity name token, or
        would make a hidden file of it.
    """
    if not NAME_TOKEN.fullmatch(name) or name.startswith("."):
        raise AuthorityError(
            f"{name!r} is not a usable name: letters, digits and ._@+-, "
            "1 to 64 characters, not starting with a dot"
        )


def checked_names(request: Request) -> pki.Names:
    """
    The subject alternative names of C{request}, each checked; a server's
    own name when it gave no DNS name or address.

    @raise AuthorityError: one is malformed.
    """
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


def load_signing_request(path: Path) -> x509.CertificateSigningRequest:
    """
    The PEM signing request in C{path}.

    @raise AuthorityError: there is none, or it is unreadable.
    """
    try:
        return x509.load_pem_x509_csr(read_bytes(path))
    except ValueError:
        raise AuthorityError(
            f"{path} holds no PEM certificate signing request"
        ) from None
    except OSError as failure:
        raise AuthorityError(f"{path}: cannot read: {failure.strerror}") from None


def check_signing_request(
    csr: x509.CertificateSigningRequest, grant: Grant
) -> CheckedSigningRequest:
    """
    Judge a signing request: its signature, its key, its subject and what
    it asks for, against what the operator grants.

    @raise AuthorityError: in one line, the first thing wrong with it.
    """
    try:
        return _checked(csr, grant)
    except (ValueError, x509.DuplicateExtension) as failure:
        # cryptography parses a request's parts only when they are read.
        raise AuthorityError(f"the request is malformed: {failure}") from None


def _checked(
    csr: x509.CertificateSigningRequest, grant: Grant
) -> CheckedSigningRequest:
    if not csr.is_signature_valid:
        raise AuthorityError(
            "the request's signature does not verify: it was altered, or "
            "not made with the key it holds"
        )
    public_key = _acceptable_key(csr)
    name = _common_name(csr.subject)
    units = [a.value for a in csr.subject if a.oid == NameOID.ORGANIZATIONAL_UNIT_NAME]
    for unit in units:
        if unit not in grant.units:
            raise AuthorityError(
                f"the request asks for OU {unit!r}, which policy rules grant "
                f"roles by; sign it with --ou {unit!r} if it should have it"
            )
    ignored = []
    for extension in csr.extensions:
        _refuse_ca_rights(extension)
        if extension.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            _check_requested_names(extension.value, grant.names)
        else:
            ignored.append(_extension_name(extension))
    return CheckedSigningRequest(name, public_key, tuple(ignored))


def _extension_name(extension: x509.Extension[x509.ExtensionType]) -> str:
    if isinstance(extension.value, x509.UnrecognizedExtension):
        return extension.oid.dotted_string
    return type(extension.value).__name__


def _acceptable_key(csr: x509.CertificateSigningRequest) -> pki.PublicKey:
    try:
        key = csr.public_key()
    except UnsupportedAlgorithm:
        key = None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, CSR_CURVES):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= CSR_MIN_RSA_BITS:
        return key
    what = f"RSA {key.key_size}-bit" if isinstance(key, rsa.RSAPublicKey) else ""
    if isinstance(key, ec.EllipticCurvePublicKey):
        what = f"ECDSA {key.curve.name}"
    raise AuthorityError(
        f"the request's key ({what or 'of a kind secmsg does not use'}) is not "
        f"ECDSA P-256 or P-384, nor RSA of {CSR_MIN_RSA_BITS} bits or more"
    )


def _common_name(subject: x509.Name) -> str:
    for attribute in subject:
        if attribute.oid not in (NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME):
            raise AuthorityError(
                f"the request's subject holds {attribute.rfc4514_string()!r}; "
                "a secmsg certificate's subject holds only a CN and OUs"
            )
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise AuthorityError(
            f"the request's subject holds {len(names)} CNs; it needs one, "
            "the identity it is for"
        )
    name = names[0].value
    if not isinstance(name, str):
        raise AuthorityError("the request's CN is not text")
    check_name(name)
    return name


def _refuse_ca_rights(extension: x509.Extension[x509.ExtensionType]) -> None:
    value = extension.value
    asks = (isinstance(value, x509.BasicConstraints) and value.ca) or (
        isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign)
    )
    if asks:
        raise AuthorityError(
            "the request asks to be a CA (it could sign certificates for "
            "anyone); secmsg pki sign makes client certificates only"
        )


def _check_requested_names(
    requested: x509.SubjectAlternativeName, granted: pki.Names
) -> None:
    for general_name in requested:
        value = general_name.value
        if isinstance(general_name, x509.RFC822Name):
            option, grants = "--san-email", granted.emails
        elif isinstance(general_name, x509.UniformResourceIdentifier):
            option, grants = "--san-uri", granted.uris
        else:
            raise AuthorityError(
                f"the request asks for the subject alternative name "
                f"{value!s:.80}; a client certificate holds only e-mail "
                "addresses and URIs"
            )
        if value not in grants:
            raise AuthorityError(
                f"the request asks for {value!r}, which can name an identity "
                f"or grant roles; sign it with {option} {value!r} if it "
                "should have it"
            )


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
