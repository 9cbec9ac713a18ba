"""
From a verified certificate to an identity.

Which certificate field names a person is the operator's choice (the subject
CN by default, or a SAN e-mail address or URI); whichever it is, the value
must be a name token, because identities are written into protocol lines and
log lines where spaces or control characters would be ambiguous or worse.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography import x509
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


def describe_subject(certificate: x509.Certificate) -> str:
    """
    The subject as an RFC 4514 string, safe to log or send.
    """
    return escape_controls(certificate.subject.rfc4514_string())


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
        values = self._values(certificate)
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
        try:
            names = certificate.extensions.get_extension_for_oid(
                ExtensionOID.SUBJECT_ALTERNATIVE_NAME
            ).value
        except x509.ExtensionNotFound:
            return []
        kind = (
            x509.RFC822Name
            if self.field is IdentityField.SAN_EMAIL
            else x509.UniformResourceIdentifier
        )
        return list(names.get_values_for_type(kind))
