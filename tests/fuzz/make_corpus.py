"""
Write the seed corpus of every target: C{python -m tests.fuzz.make_corpus}.

Each target's seeds are valid inputs and edge cases for what it reads; the
certificates and CRLs among them are made here with cryptography, with keys
made for the purpose and thrown away, so that the corpus holds public data
only.  Seeds are named by what they hold, so rewriting the corpus changes
only the certificate seeds (their keys and serials are new each time);
inputs found by the fuzzer (C{crash-*}) are left as they are.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.certs import CertificateAuthority

CORPUS = Path(__file__).parent / "corpus"

_WIRE = {
    "ping": b"\x00PING\r\n",
    "commands": b"\x40HELP\nWHOAMI\nWHO #ops\nMSG bob hello there\nJOIN #Ops\n"
    b"SAY #ops  spaced  text \nACK UPTO 12\nACK 7\nHISTORY #ops 20\n"
    b"HISTORY bob\nKICK bob\nKICK bob being rude\nBROADCAST hi all\n"
    b"RELOAD DRY\nRELOAD\nCAPS\nQUIT\nPART #ops\nROOMS\n",
    "unicode": "\x20MSG alice caf\u00e9 \u2603 \U0001f600\n".encode(),
    "refused": b"\x20MSG bob \x1b[31mred\nSAY #a \xe2\x80\x8bhidden\n\xff\xfe\n",
    "overlong": b"\x00" + b"A" * 40 + b"\nPING\n" + b"B" * 17 + b"\r\n",
    "usage": b"\x20MSG\nJOIN ops\nACK 0\nHISTORY #x 0\nFROB x\nmsg BOB\n\t\n",
}

_POLICY = {
    "simple": b"""default_roles = ["user"]

[roles.user]
commands = ["HELP", "WHOAMI", "WHO", "PING", "MSG", "JOIN", "PART", "SAY"]
rate = 20
burst = 60

[roles.admin]
inherits = ["user"]
commands = ["KICK", "BROADCAST", "RELOAD", "METRICS", "PRESENCE"]

[identities]
alice = ["admin"]
"bob.example" = ["user"]
""",
    "rules": b"""[roles.service]
commands = ["MSG", "PING"]

[roles.ops]
commands = ["HISTORY", "ROOMS"]
inherits = ["service"]

[[rules]]
subject = { O = "Example", CN = "fuzz" }
roles = ["ops"]

[[rules]]
san_uri_prefix = "spiffe://example.org/service/"
roles = ["service"]

[[rules]]
san_email_domain = "example.org"
roles = ["service"]

[[rooms]]
pattern = "#ops-*"
join = ["ops"]
say = ["ops"]

[[rooms]]
pattern = "#r?"
join = ["service"]
read = []
""",
    "cycle": b'[roles.a]\ninherits = ["b"]\n[roles.b]\ninherits = ["a"]\n',
    "unknown": b'[roles.a]\ncommands = ["FLY"]\n[identities]\n"b c" = ["a"]\n',
    "escapes": b"""default_roles = ["\\u0075ser"]

[roles."\\u0075ser"]
commands = ["PIN\\u0047", "MSG"]

[identities]
"\\u0061lice" = ["\\u0075ser"]
""",
    "empty": b"",
    "not_toml": b"[roles\n\xff",
}

_SETTINGS = {
    "minimal": b"""cert = "server.pem"
key = "server.key"
ca = "ca.pem"
policy = "policy.toml"
data-dir = "data"
""",
    "full": b"""cert = "server.pem"
key = "server.key"
ca = "ca.pem"
crl = "crl.pem"
policy = "policy.toml"
data-dir = "data"
backup-dir = "backups"
port = 7443
interface = "::1"
admin-port = 7444
admin-interface = "127.0.0.1"
identity = "san-email"
max-line-length = 8192
retention-days = 7
room-max = 500
mailbox-max = 500
mailbox-max-waiting = 100
mailbox-max-waiting-bytes = 1048576
history-max = 50
handshake-timeout = 10
idle-timeout = 600
max-sessions = 1000
max-sessions-per-identity = 4
max-sessions-per-address = 50
max-handshakes = 100
max-handshakes-per-address = 10
logins-per-identity = 10
logins-per-address = 20
stale-crl = "refuse"
audit-rotate-bytes = 1048576
log-format = "json"
commit-delay = 0.5
""",
    "listen": b"""cert = "c"
key = "k"
ca = "a"
policy = "p"
data-dir = "d"
listen = ["tcp:7443:interface=127.0.0.1", "systemd:domain=INET:index=0"]
admin-listen = "unix:/run/secmsg/admin.sock"
""",
    "wrong": b'cert = 7\nport = "x"\nlisten = "ssl:443"\nfrobnicate = 1\n',
    "escapes": b"""cert = "server\\u002epem"
key = 'server.key'
ca = "\\U00000063a.pem"
policy = "policy.toml"
"data-dir" = "da\\u0074a"
interface = "\\u0031\\u0032\\u0037.0.0.1"
"port" = 7443
""",
}


def _blob(data: bytes, two_bytes: bool = False) -> bytes:
    """
    C{data} as L{tests.fuzz.fields.Fields.blob} reads it back.
    """
    if two_bytes:
        return len(data).to_bytes(2, "big") + data
    return bytes([len(data)]) + data


def _identity_seeds() -> dict[str, bytes]:
    """
    Built certificates (mode byte 1: RDNs, each attribute an OID, text and
    string type, then SANs) and the DER of real ones (mode byte 0).
    """
    ca = CertificateAuthority("secmsg fuzz CA")
    cn_only = b"\x01" + b"\x01\x00" + b"\x00" + _blob(b"alice") + b"\x01" + b"\x00"
    unicode_cn = (
        b"\x01\x02\x00\x00"
        + _blob("\u0430lice\u202e".encode())
        + b"\x00\x01\x00\x01"
        + _blob(b"Example")
        + b"\x04"
        + b"\x00"
    )
    with_sans = (
        b"\x01\x01\x00\x00"
        + _blob(b"bob")
        + b"\x00"
        + b"\x03"
        + b"\x00"
        + _blob(b"bob@example.org")
        + b"\x01"
        + _blob(b"spiffe://example.org/service/bob")
        + b"\x02"
        + _blob(b"bob.example.org")
    )
    leaf = ca.issue(
        "carol",
        names=[
            x509.RFC822Name("carol@example.org"),
            x509.UniformResourceIdentifier("spiffe://example.org/carol"),
        ],
    )
    two_cns = ca.issue(
        "dave", subject=(x509.NameAttribute(x509.NameOID.COMMON_NAME, "eve"),)
    )
    return {
        "built_cn": cn_only,
        "built_unicode": unicode_cn,
        "built_sans": with_sans,
        "der_leaf": b"\x00" + _der(leaf.certificate),
        "der_two_cns": b"\x00" + _der(two_cns.certificate),
        "der_ca": b"\x00" + _der(ca.pair.certificate),
    }


def _trust_seeds() -> dict[str, bytes]:
    """
    CA bundles and CRL files as they come (mode 0), DER armoured by the
    target (mode 1), and CAs and CRLs built by it (mode 2).
    """
    root = CertificateAuthority("secmsg fuzz root")
    issuing = root.intermediate("secmsg fuzz issuing")
    issuing.revoke(issuing.issue("mallory"))
    bundle = issuing.pem + root.pem
    crls = issuing.crl_pem() + root.crl_pem(next_update=timedelta(minutes=-30))
    other = CertificateAuthority("secmsg fuzz root")
    crl_der = x509.load_pem_x509_crl(root.crl_pem()).public_bytes(
        serialization.Encoding.DER
    )
    return {
        "files": b"\x00" + _blob(bundle, two_bytes=True) + crls,
        "foreign_crl": b"\x00" + _blob(root.pem, two_bytes=True) + other.crl_pem(),
        "no_crl": b"\x00" + _blob(bundle, two_bytes=True) + b"not a CRL\n",
        "der": b"\x01\x00"
        + _blob(_der(root.pair.certificate), two_bytes=True)
        + b"\x00"
        + _blob(crl_der, two_bytes=True),
        "built": b"\x02\x00\x01\x00\x00"
        + _blob(b"CA")
        + b"\x00\x01\x01\x80\x10\x01"
        + _blob(b"\x05"),
        "built_rsa_other_issuer": b"\x02\x02\x01\x00\x00"
        + _blob(b"CA")
        + b"\x00\x01\x00\x00"
        + _blob(b"Other")
        + b"\x00\x01\x80\x10\x00",
    }


_DISPLAY = {
    "pushes": b"\x80\x00MSG 12 2026-06-01T10:00:00Z alice hello\n"
    b"SAY 13 2026-05-01T10:00:00Z #ops bob hi all\n"
    b"REDELIVERED BROADCAST 14 2026-06-01T10:00:00Z carol news\n"
    b"KICKED alice spam\nCLOSED idle\nNOTICE maintenance at noon\n"
    b"JOINED #ops dave\nPARTED #ops dave\nONLINE eve\nOFFLINE eve\n",
    "replies": b"\x80\x00214-HELP list the commands\n214-MSG send\n214 2 commands\n"
    b"250 41\n403 KICK not permitted\n200 pong\n",
    "hostile": b"\x10\x30MSG 1 2026-06-01T10:00:00Z \x1b]0;owned\x07 \x1b[2J"
    b"\xe2\x80\xae\xf3\xa0\x80\x81text\x9b\n214-\x1b[31mRED\n214 done\x00\n"
    b"NOTICE \xff\xfe bad utf-8\r\n\x1b[A\n",
    "times": b"\x00\xffMSG 1 0001-01-01T00:00:00Z a x\n"
    b"SAY 2 9999-12-31T23:59:59Z #r b y\nMSG x 2026-13-01T00:00:00Z c z\n",
}


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def seeds() -> dict[str, dict[str, bytes]]:
    """
    Every target's seeds, by target and file name.
    """
    return {
        "wire": _WIRE,
        "policy": _POLICY,
        "settings": _SETTINGS,
        "identity": _identity_seeds(),
        "trust": _trust_seeds(),
        "display": _DISPLAY,
    }


def main() -> None:
    """
    Write the seeds of the targets named on the command line, or of all.
    """
    wanted = sys.argv[1:]
    for target, files in seeds().items():
        if wanted and target not in wanted:
            continue
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (directory / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    main()
