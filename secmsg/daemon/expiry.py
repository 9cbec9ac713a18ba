"""
When the TLS material in force runs out, for Prometheus: the server's
certificate, each CA of the bundle, and each CRL's next update, in seconds
since the epoch, so that an alert can fire days before clients are refused
or revocations go unknown.

The figures are read from the context in force at each scrape, so that
they follow every reload without anyone telling them; a CA is named by its
common name and the start of its SHA-256 fingerprint (as the audit trail
writes it), which tells two generations of one CA apart, and a CRL by the
CA that signed it, under the same label.
"""

from __future__ import annotations

from collections.abc import Iterator

from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client.core import GaugeMetricFamily, Metric

from secmsg.daemon.identity import fingerprint
from secmsg.daemon.metrics import snake_case
from secmsg.daemon.tls import VerifyingServerTLS
from secmsg.daemon.trust import TrustAnchors

FINGERPRINT_SHOWN = 8
"""Hex digits of a CA's fingerprint in its label: enough to tell the CAs
of one bundle apart, short enough to read on a dashboard."""


def ca_label(ca: x509.Certificate) -> str:
    """
    The C{ca} label of a CA: its common name (or whole subject) in
    snake_case, then the start of its fingerprint, e.g.
    C{secmsg_dev_ca_3fa09c1e}.
    """
    names = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ca.subject.rfc4514_string()
    return f"{snake_case(name)[:64]}_{fingerprint(ca)[:FINGERPRINT_SHOWN]}"


class TLSExpiry:
    """
    A collector of the expiry times of the TLS material in force.
    """

    def __init__(self, tls: VerifyingServerTLS) -> None:
        self._tls = tls
        # The CRLs' times by the trust they were read from: finding each
        # CRL's CA checks signatures, which a scrape need not repeat until a
        # reload brings other trust.
        self._next_updates: tuple[TrustAnchors, dict[str, float]] | None = None

    def collect(self) -> Iterator[Metric]:
        """
        The server certificate's, the CAs' and the CRLs' times, for the
        registry.
        """
        server = GaugeMetricFamily(
            "secmsg_server_certificate_expiry_timestamp_seconds",
            "When the server certificate in force expires.",
        )
        server.add_metric([], self._tls.certificate.not_valid_after_utc.timestamp())
        yield server
        trust = self._tls.trust
        cas = GaugeMetricFamily(
            "secmsg_ca_certificate_expiry_timestamp_seconds",
            "When each CA certificate of the bundle in force expires.",
            labels=["ca"],
        )
        for ca in trust.cas:
            cas.add_metric([ca_label(ca)], ca.not_valid_after_utc.timestamp())
        yield cas
        crls = GaugeMetricFamily(
            "secmsg_crl_next_update_timestamp_seconds",
            "When the CRL in force of each CA is due to be replaced.",
            labels=["ca"],
        )
        for label, next_update in sorted(self._crl_updates(trust).items()):
            crls.add_metric([label], next_update)
        yield crls

    def _crl_updates(self, trust: TrustAnchors) -> dict[str, float]:
        if self._next_updates is None or self._next_updates[0] is not trust:
            self._next_updates = (trust, _next_updates(trust.cas, trust.crls))
        return self._next_updates[1]


def _next_updates(
    cas: tuple[x509.Certificate, ...],
    crls: tuple[x509.CertificateRevocationList, ...],
) -> dict[str, float]:
    """
    The next update of each CA's CRL, by the CA's label; of two CRLs of
    one CA, the later, which is the one that keeps revocation known.  A CRL
    with no next update never goes stale, and has no time to show.
    """
    updates: dict[str, float] = {}
    for crl in crls:
        if crl.next_update_utc is None:
            continue
        label = ca_label(_issuer(cas, crl))
        updates[label] = max(updates.get(label, 0.0), crl.next_update_utc.timestamp())
    return updates


def _issuer(
    cas: tuple[x509.Certificate, ...], crl: x509.CertificateRevocationList
) -> x509.Certificate:
    """
    The CA whose key signed C{crl} (there is one: a CRL is loaded only
    if so): of two generations of a CA, which share a subject, the one
    that issued it.
    """
    # A CA's key is one that signs; cryptography types every kind of public
    # key a certificate may hold, key-exchange ones included.
    signed = crl.is_signature_valid
    return next(
        ca
        for ca in cas
        if ca.subject == crl.issuer and signed(ca.public_key())  # type: ignore[arg-type]
    )
