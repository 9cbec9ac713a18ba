"""
From a verified certificate to an identity.

Which certificate field names a person is the operator's choice (the subject
CN by default, or a SAN e-mail address or URI); whichever it is, the value
must be a name token, because identities are written into protocol lines and
log lines where spaces or control characters would be ambiguous or worse.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtensionOID, NameOID

from secmsg.errors import CertificateRefused, RefusalReason
from secmsg.wire import NAME_TOKEN, escape_controls


class IdentityField(enum.Enum):
    """
    The certificate field an identity is read from.
    """

    CN = "cn"
    SAN_EMAIL = "san-email"
    SAN_URI = "san-uri"


def fingerprint(certificate: x509.Certificate) -> str:
    """
    The SHA-256 fingerprint of a certificate, as hex, for the audit log.
    """
    return certificate.fingerprint(hashes.SHA256()).hex()


SUBJECT_SHOWN = 512
"""
The most characters of a subject that L{describe_subject} shows.  A subject
of one of each usual field at its upper bound in RFC 5280 (CN, O, OU of 64,
L and ST of 128, C) is about 470 characters written out, and fits whole; a
CA may issue far longer ones (a subject of 1,200 units is 18,000
characters), which would otherwise go whole into an audit record at every
login.
"""


def describe_subject(certificate: x509.Certificate) -> str:
    """
    The subject as an RFC 4514 string, safe to log or send, and bounded: a
    subject longer than L{SUBJECT_SHOWN} characters is shown by its first
    fields, then how long the whole was and the SHA-256 of the subject's
    DER, by which an operator can still tell which certificate it was.
    A subject that OpenSSL read but cryptography cannot (any peer may send
    one) is shown by the certificate's fingerprint instead.
    """
    try:
        return describe_name(certificate.subject)
    except ValueError:
        return (
            "(a subject that does not parse; certificate sha256 "
            f"{fingerprint(certificate)})"
        )


def describe_name(subject: x509.Name) -> str:
    """
    A certificate's subject or issuer as L{describe_subject} shows it.
    """
    whole = escape_controls(subject.rfc4514_string())
    if len(whole) <= SUBJECT_SHOWN:
        return whole
    digest = hashlib.sha256(subject.public_bytes()).hexdigest()
    return (
        f"{_first_fields(subject)}… "
        f"(cut from {len(whole):,} characters; sha256 {digest})"
    )


def _first_fields(subject: x509.Name) -> str:
    """
    As many whole fields of C{subject}, in RFC 4514 order, as fit in
    L{SUBJECT_SHOWN} characters; if not even the first does, as many of
    its characters as fit, an escape never cut in half.
    """
    fields = [escape_controls(rdn.rfc4514_string()) for rdn in reversed(subject.rdns)]
    shown = _fitting(fields, ",")
    if shown:
        return shown
    first = subject.rdns[-1].rfc4514_string()
    return _fitting([escape_controls(character) for character in first], "")


def _fitting(pieces: list[str], separator: str) -> str:
    """
    The leading pieces, joined, that fit in L{SUBJECT_SHOWN} characters.
    """
    length, count = -len(separator), 0
    for piece in pieces:
        length += len(separator) + len(piece)
        if length > SUBJECT_SHOWN:
            break
        count += 1
    return separator.join(pieces[:count])


@dataclass(frozen=True)
class IdentityRule:
    """
    Reads the identity out of a certificate, always from the same field.
    """

    field: IdentityField = IdentityField.CN

    def identity_of(self, certificate: x509.Certificate) -> str:
        """
        The identity the certificate names.

        @raise CertificateRefused: the field is missing, appears more than
            once (which would make the identity ambiguous), or its value is
            not a name token.
        """
        try:
            values = self._values(certificate)
        except (ValueError, x509.DuplicateExtension):
            raise CertificateRefused(
                RefusalReason.BAD_IDENTITY,
                describe_subject(certificate),
                f"its {self.field.value} field does not parse",
            ) from None
        if len(values) == 1 and NAME_TOKEN.fullmatch(values[0]):
            return values[0]
        if len(values) != 1:
            detail = f"{len(values)} {self.field.value} values, need exactly one"
        else:
            detail = f"{self.field.value} {escape_controls(values[0])!r}"
        raise CertificateRefused(
            RefusalReason.BAD_IDENTITY, describe_subject(certificate), detail
        )

    def _values(self, certificate: x509.Certificate) -> list[str]:
        if self.field is IdentityField.CN:
            return [
                str(attribute.value)
                for attribute in certificate.subject.get_attributes_for_oid(
                    NameOID.COMMON_NAME
                )
            ]
        kind = (
            x509.RFC822Name
            if self.field is IdentityField.SAN_EMAIL
            else x509.UniformResourceIdentifier
        )
        return _san_values(certificate, kind)


SUBJECT_FIELDS = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "DC": NameOID.DOMAIN_COMPONENT,
}
"""The subject fields a policy rule may match, by their RFC 4514 names."""


@dataclass(frozen=True)
class AttributeMatch:
    """
    A test on what a verified certificate says, every part of which must
    hold: subject fields with exact values, a SAN URI under a prefix, a SAN
    e-mail address in a domain.  The CA vouches for these values, so a rule
    on them is as strong as the CA's care in issuing.

    @ivar subject: C{(field, value)} pairs; the subject must hold each
        (a field that appears more than once matches if any value does).
    @ivar san_uri_prefix: a prefix that a SAN URI must start with; it ends
        with C{/} so that it matches whole path segments.
    @ivar san_email_domain: the domain a SAN e-mail address must be in.
    """

    subject: tuple[tuple[str, str], ...] = ()
    san_uri_prefix: str | None = None
    san_email_domain: str | None = None

    def matches(self, certificate: x509.Certificate) -> bool:
        """
        Whether C{certificate} satisfies every part of this match; one
        whose fields do not parse satisfies none.
        """
        try:
            return self._holds(certificate)
        except (ValueError, x509.DuplicateExtension):
            return False

    def _holds(self, certificate: x509.Certificate) -> bool:
        for name, value in self.subject:
            values = certificate.subject.get_attributes_for_oid(SUBJECT_FIELDS[name])
            if value not in (str(attribute.value) for attribute in values):
                return False
        if self.san_uri_prefix is not None and not any(
            uri.startswith(self.san_uri_prefix)
            for uri in _san_values(certificate, x509.UniformResourceIdentifier)
        ):
            return False
        if self.san_email_domain is not None:
            domain = "@" + self.san_email_domain.lower()
            return any(
                address.lower().endswith(domain)
                for address in _san_values(certificate, x509.RFC822Name)
            )
        return True

    def describe(self) -> str:
        """
        The match in the words of the policy file, for denials and logs.
        """
        parts = [f"{name}={value}" for name, value in self.subject]
        if self.san_uri_prefix is not None:
            parts.append(f"SAN URI {self.san_uri_prefix}*")
        if self.san_email_domain is not None:
            parts.append(f"SAN e-mail *@{self.san_email_domain}")
        return escape_controls(", ".join(parts))


def _san_values(
    certificate: x509.Certificate,
    kind: type[x509.UniformResourceIdentifier] | type[x509.RFC822Name],
) -> list[str]:
    """
    The certificate's SANs of one kind.  cryptography parses extensions
    when they are first read, so this is where a malformed one shows.

    @raise ValueError: the certificate's extensions do not parse.
    @raise x509.DuplicateExtension: it holds an extension twice.
    """
    try:
        names = certificate.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        ).value
    except x509.ExtensionNotFound:
        return []
    return list(names.get_values_for_type(kind))
