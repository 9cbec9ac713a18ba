"""
The options of C{secmsg pki} and each of its subcommands; L{secmsg.cli.pki}
carries them out.  Every subcommand takes C{--dir} before or after its
name; every one that signs takes C{--passphrase-fd} for an encrypted CA key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.python import usage

from secmsg.cli.options import CommandOptions
from secmsg.pki import certificates as pki
from secmsg.pki.inventory import REVOCATION_REASONS
from secmsg.pki.requests import Grant, Request


def _rsa_bits(text: str) -> int:
    """
    A key size, as --rsa takes it; which sizes are made is checked later.
    """
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"--rsa takes a number of bits, not {text!r}")
    return int(text)


def _days(text: str) -> int:
    """
    A number of days, as --days takes it.
    """
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise ValueError(f"--days takes a whole number of days from 1, not {text!r}")
    return int(text)


def _descriptor(text: str) -> int:
    """
    A file descriptor, as --passphrase-fd takes it.
    """
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"a file descriptor is a number, not {text!r}")
    return int(text)


_RSA_OPTION: list[Any] = [
    "rsa",
    None,
    None,
    "An RSA key of 3072 or 4096 bits instead of ECDSA P-256.",
    _rsa_bits,
]

_PASSPHRASE_FD_OPTION: list[Any] = [
    "passphrase-fd",
    None,
    None,
    "Read the CA key's passphrase from file descriptor N (a line). "
    "[default: ask on the terminal, if the key is encrypted]",
    _descriptor,
]

_LEAF_DAYS_OPTION: list[Any] = [
    "days",
    None,
    None,
    f"How many days the certificate is valid. [default: {pki.LEAF_DAYS}, "
    "or until the CA expires if sooner]",
    _days,
]


def _check_out(out: str | None, force: bool) -> None:
    """
    Refuse an --out whose directory is missing, or that names a file there
    already without --force, before anything is signed rather than after.
    """
    if out is None:
        return
    if not Path(out).parent.is_dir():
        raise usage.UsageError(f"--out {out!r}: no such directory")
    if Path(out).exists() and not force:
        raise usage.UsageError(
            f"--out {out!r} already exists; not overwritten (--force replaces it)"
        )


class DirOptions(CommandOptions):
    """
    Options of a command that works on a CA directory.
    """

    optParameters: list[list[Any]] = [
        ["dir", None, None, "The CA directory. [default: the current directory]"],
    ]

    def directory(self, parent: usage.Options) -> Path:
        return Path(self["dir"] or parent["dir"] or ".")


class _SubjectOptions(CommandOptions):
    """
    The organisational units and subject alternative names of a client
    certificate, repeatable.
    """

    def __init__(self) -> None:
        super().__init__()
        for name in ("dns", "ip", "san-email", "san-uri", "ou"):
            self[name] = []

    def opt_ou(self, unit: str) -> None:
        """An OU in the subject; policy rules grant roles by it (repeatable)."""
        if not 1 <= len(unit) <= 64 or not unit.isprintable():
            raise usage.UsageError("--ou takes 1 to 64 printable characters")
        self["ou"].append(unit)

    def opt_san_email(self, address: str) -> None:
        """An e-mail address in the subject alternative name (repeatable)."""
        self["san-email"].append(address)

    def opt_san_uri(self, uri: str) -> None:
        """A URI in the subject alternative name (repeatable)."""
        self["san-uri"].append(uri)

    def names(self) -> pki.Names:
        return pki.Names(
            dns=tuple(self["dns"]),
            ips=tuple(self["ip"]),
            emails=tuple(self["san-email"]),
            uris=tuple(self["san-uri"]),
        )


class InitOptions(DirOptions):
    """
    secmsg pki init [DIR] [--root | --intermediate --root-dir ROOTDIR] ...
    """

    synopsis = "[DIR] [--root | --intermediate --root-dir ROOTDIR] [options]"
    longdesc = (
        "Make a CA in DIR: one that issues certificates (path length 0), a "
        "root that signs only issuing CAs (--root, path length 1), or an "
        "issuing CA signed by such a root (--intermediate), after which the "
        "root's directory can go offline."
    )
    optParameters: list[list[Any]] = [
        [
            "cn",
            None,
            None,
            "The CA's common name. [default: secmsg CA, "
            "secmsg root CA with --root, secmsg issuing CA with --intermediate]",
        ],
        ["org", None, None, "The CA's organisation name, if any."],
        [
            "days",
            None,
            None,
            f"How many days the CA is valid. [default: {pki.CA_DAYS}, or as "
            "long as its root has left]",
            _days,
        ],
        _RSA_OPTION,
        ["root-dir", None, None, "The root CA's directory, for --intermediate."],
        [
            "passphrase-fd",
            None,
            None,
            "Encrypt the new CA key with a passphrase read from file "
            "descriptor N (a line).",
            _descriptor,
        ],
        [
            "root-passphrase-fd",
            None,
            None,
            "Read the root key's passphrase from file descriptor N. "
            "[default: ask on the terminal, if it is encrypted]",
            _descriptor,
        ],
    ]
    optFlags = [
        ["root", None, "A root CA, which signs issuing CAs only."],
        ["intermediate", None, "An issuing CA signed by the root in --root-dir."],
        ["passphrase", None, "Encrypt the new CA key; asks for it twice."],
        ["force", None, "Replace an existing CA (its certificates die with it)."],
    ]

    def parseArgs(self, directory: str | None = None) -> None:
        if directory is not None:
            self["dir"] = directory

    def postOptions(self) -> None:
        if self["root"] and self["intermediate"]:
            raise usage.UsageError("a CA is --root or --intermediate, not both")
        if self["intermediate"] != bool(self["root-dir"]):
            raise usage.UsageError("--intermediate and --root-dir go together")
        if self["passphrase"] and self["passphrase-fd"] is not None:
            raise usage.UsageError("give --passphrase or --passphrase-fd, not both")

    def common_name(self) -> str:
        if self["cn"] is not None:
            return str(self["cn"])
        if self["root"]:
            return "secmsg root CA"
        return "secmsg issuing CA" if self["intermediate"] else "secmsg CA"


class RequestOptions(_SubjectOptions):
    """
    secmsg pki request NAME [--dir DIR] [--ou UNIT ...]
    """

    synopsis = "NAME [--dir DIR] [options]"
    longdesc = (
        "On your own machine: make a private key, DIR/NAME.key (0600), and a "
        "certificate signing request for it, DIR/NAME.csr. Give the CA only "
        "the .csr; the key never leaves this machine."
    )
    optParameters: list[list[Any]] = [
        ["dir", None, None, "Where to write them. [default: the current directory]"],
        _RSA_OPTION,
    ]
    optFlags = [["force", None, "Replace an existing NAME.key and NAME.csr."]]

    def directory(self, parent: usage.Options) -> Path:
        return Path(self["dir"] or parent["dir"] or ".")

    # usage.Options calls parseArgs with the words left on the line, as
    # many as the subclass takes; Twisted types it as taking none.
    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


class IssueOptions(DirOptions, _SubjectOptions):
    """
    secmsg pki issue NAME [--server [--dns NAME ...] [--ip ADDRESS ...]]
    """

    synopsis = "NAME [options]"
    longdesc = (
        "Make a key and a certificate for NAME, both in the CA directory: for "
        "a client, or with --server for a server. With --force, what it "
        "replaces is revoked as superseded."
    )
    optParameters: list[list[Any]] = [
        _LEAF_DAYS_OPTION,
        _RSA_OPTION,
        _PASSPHRASE_FD_OPTION,
    ]
    optFlags = [
        ["server", None, "A server certificate (serverAuth), not a client's."],
        ["force", None, "Replace NAME's files and revoke its certificates in force."],
    ]

    def opt_dns(self, name: str) -> None:
        """A DNS name of the server (repeatable). [default: NAME]"""
        self["dns"].append(name)

    def opt_ip(self, address: str) -> None:
        """An IP address of the server (repeatable)."""
        self["ip"].append(address)

    # usage.Options calls parseArgs with the words left on the line, as
    # many as the subclass takes; Twisted types it as taking none.
    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name

    def postOptions(self) -> None:
        if (self["dns"] or self["ip"]) and not self["server"]:
            raise usage.UsageError("--dns and --ip are for --server certificates")

    def request(self) -> Request:
        return Request(
            self["name"],
            server=self["server"],
            names=self.names(),
            days=self["days"],
            rsa_bits=self["rsa"],
            replace=self["force"],
            units=tuple(self["ou"]),
        )


class SignOptions(DirOptions, _SubjectOptions):
    """
    secmsg pki sign CSR [--out FILE] [--days N] [--ou UNIT ...]
    """

    synopsis = "CSR [options]"
    longdesc = (
        "Sign a client certificate for the signing request in CSR (from "
        "secmsg pki request), after checking it; the CA never sees its key. "
        "The certificate holds the OUs and subject alternative names given "
        "here; a request that asks for others is refused."
    )
    optParameters: list[list[Any]] = [
        ["out", None, None, "Also write the certificate to FILE, for its owner."],
        _LEAF_DAYS_OPTION,
        _PASSPHRASE_FD_OPTION,
    ]
    optFlags = [
        ["force", None, "Replace NAME's files and revoke its certificates in force."]
    ]

    # usage.Options calls parseArgs with the words left on the line, as
    # many as the subclass takes; Twisted types it as taking none.
    def parseArgs(self, csr: str) -> None:  # type: ignore[override]
        self["csr"] = Path(csr)

    def postOptions(self) -> None:
        _check_out(self["out"], self["force"])

    def grant(self) -> Grant:
        return Grant(tuple(self["ou"]), self.names())


class RenewOptions(DirOptions):
    """
    secmsg pki renew NAME [--csr CSR | --new-key] [--days N]
    """

    synopsis = "NAME [--csr CSR | --new-key] [options]"
    longdesc = (
        "Issue NAME a new certificate like its last one (same kind, OUs and "
        "names), for a new key or for the key of a signing request (--csr), "
        "then revoke the old one as superseded and sign the CRL again."
    )
    optParameters: list[list[Any]] = [
        ["csr", None, None, "Sign this request instead of making a key."],
        ["out", None, None, "Also write the certificate to FILE, for its owner."],
        _LEAF_DAYS_OPTION,
        [
            "rsa",
            None,
            None,
            "An RSA key of 3072 or 4096 bits. [default: the old key's type]",
            _rsa_bits,
        ],
        _PASSPHRASE_FD_OPTION,
    ]
    optFlags = [
        [
            "new-key",
            None,
            "Make the new key here, for a certificate whose key its owner kept.",
        ],
        ["force", None, "Replace an existing --out file."],
    ]

    # usage.Options calls parseArgs with the words left on the line, as
    # many as the subclass takes; Twisted types it as taking none.
    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name

    def postOptions(self) -> None:
        if self["csr"] and (self["rsa"] or self["new-key"]):
            raise usage.UsageError(
                "--rsa and --new-key make a key; a --csr brings its own"
            )
        _check_out(self["out"], self["force"])


class RevokeOptions(DirOptions):
    """
    secmsg pki revoke NAME|SERIAL [--reason WORD]
    """

    synopsis = "NAME|SERIAL [--reason WORD]"
    longdesc = (
        "Revoke every unrevoked certificate of NAME (or the one with that hex "
        "SERIAL) and sign a fresh CRL."
    )
    optParameters: list[list[Any]] = [
        [
            "reason",
            None,
            "unspecified",
            f"Why: one of {', '.join(REVOCATION_REASONS)}.",
        ],
        _PASSPHRASE_FD_OPTION,
    ]

    # usage.Options calls parseArgs with the words left on the line, as
    # many as the subclass takes; Twisted types it as taking none.
    def parseArgs(self, name_or_serial: str) -> None:  # type: ignore[override]
        self["which"] = name_or_serial


class CRLOptions(DirOptions):
    """
    secmsg pki crl [--days N] [--root-crl FILE]
    """

    synopsis = "[--days N] [--root-crl FILE]"
    longdesc = (
        "Sign the CRL again with a new next update; a daemon needs a fresh "
        "one before the last runs out (30 days by default). An issuing CA "
        "writes its root's CRL after its own."
    )
    optParameters: list[list[Any]] = [
        [
            "days",
            None,
            None,
            f"Days until the CRL's next update. [default: {pki.CRL_DAYS}, "
            "365 for a root]",
            _days,
        ],
        ["root-crl", None, None, "Take in the root's new CRL (an issuing CA only)."],
        _PASSPHRASE_FD_OPTION,
    ]


class ListOptions(DirOptions):
    """
    secmsg pki list [--expiring DAYS]
    """

    synopsis = "[--expiring DAYS]"
    longdesc = (
        "List what the CA has issued: name, serial, kind, expiry, revocation. "
        "With --expiring, only the certificates in use that expire within "
        "DAYS (or have expired), and exit 3 if there are any, 0 if not."
    )
    optParameters: list[list[Any]] = [
        [
            "expiring",
            None,
            None,
            "Only those expiring within DAYS; exit 3 if any.",
            _days,
        ],
    ]
