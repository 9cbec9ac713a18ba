"""
C{secmsg pki}: the operator's certificate authority on the command line.

Each subcommand works on the CA directory given by C{--dir} (before or
after the subcommand's name; the current directory by default) and prints
what it did.  Nothing here prints a private key.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.python import usage

from secmsg.cli.options import CommandOptions
from secmsg.errors import AuthorityError
from secmsg.pki import certificates as pki
from secmsg.pki.authority import (
    REVOCATION_REASONS,
    CertificateAuthority,
    Record,
    Request,
    create_authority,
    open_authority,
)


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


_RSA_OPTION = [
    "rsa",
    None,
    None,
    "An RSA key of 3072 or 4096 bits instead of ECDSA P-256.",
    _rsa_bits,
]


class _DirOptions(CommandOptions):
    optParameters = [
        ["dir", None, None, "The CA directory. [default: the current directory]"],
    ]

    def directory(self, parent: usage.Options) -> Path:
        return Path(self["dir"] or parent["dir"] or ".")


class InitOptions(_DirOptions):
    """
    secmsg pki init [DIR] [--cn NAME] [--org NAME] [--days N] [--rsa BITS]
    """

    synopsis = "[DIR] [options]"
    optParameters = [
        ["cn", None, "secmsg CA", "The CA's common name."],
        ["org", None, None, "The CA's organisation name, if any."],
        ["days", None, pki.CA_DAYS, "How many days the CA is valid.", _days],
        _RSA_OPTION,
    ]
    optFlags = [
        ["force", None, "Replace an existing CA (its certificates die with it)."]
    ]

    def parseArgs(self, directory: str | None = None) -> None:
        if directory is not None:
            self["dir"] = directory


class IssueOptions(_DirOptions):
    """
    secmsg pki issue NAME [--server [--dns NAME ...] [--ip ADDRESS ...]]
    """

    synopsis = "NAME [options]"
    optParameters = [
        [
            "days",
            None,
            None,
            f"How many days the certificate is valid. [default: {pki.LEAF_DAYS}, "
            "or until the CA expires if sooner]",
            _days,
        ],
        _RSA_OPTION,
    ]
    optFlags = [
        ["server", None, "A server certificate (serverAuth), not a client's."],
        ["force", None, "Replace existing files for NAME."],
    ]

    def __init__(self) -> None:
        super().__init__()
        for name in ("dns", "ip", "san-email", "san-uri", "ou"):
            self[name] = []

    def opt_ou(self, unit: str) -> None:
        """
        An organisational unit (OU) in the subject, which policy rules can
        grant roles by (repeatable).
        """
        if not 1 <= len(unit) <= 64 or not unit.isprintable():
            raise usage.UsageError("--ou takes 1 to 64 printable characters")
        self["ou"].append(unit)

    def opt_dns(self, name: str) -> None:
        """
        A DNS name of the server (repeatable). [default: NAME]
        """
        self["dns"].append(name)

    def opt_ip(self, address: str) -> None:
        """
        An IP address of the server (repeatable).
        """
        self["ip"].append(address)

    def opt_san_email(self, address: str) -> None:
        """
        An e-mail address in the subject alternative name (repeatable).
        """
        self["san-email"].append(address)

    def opt_san_uri(self, uri: str) -> None:
        """
        A URI in the subject alternative name (repeatable).
        """
        self["san-uri"].append(uri)

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
            names=pki.Names(
                dns=tuple(self["dns"]),
                ips=tuple(self["ip"]),
                emails=tuple(self["san-email"]),
                uris=tuple(self["san-uri"]),
            ),
            days=self["days"],
            rsa_bits=self["rsa"],
            replace=self["force"],
            units=tuple(self["ou"]),
        )


class RevokeOptions(_DirOptions):
    """
    secmsg pki revoke NAME|SERIAL [--reason WORD]
    """

    synopsis = "NAME|SERIAL [--reason WORD]"
    optParameters = [
        [
            "reason",
            None,
            "unspecified",
            f"Why: one of {', '.join(REVOCATION_REASONS)}.",
        ],
    ]

    # usage.Options calls parseArgs with the words left on the line, as
    # many as the subclass takes; Twisted types it as taking none.
    def parseArgs(self, name_or_serial: str) -> None:  # type: ignore[override]
        self["which"] = name_or_serial


class CRLOptions(_DirOptions):
    """
    secmsg pki crl [--days N]
    """

    synopsis = "[--days N]"

    optParameters = [
        ["days", None, pki.CRL_DAYS, "Days until the CRL's next update.", _days],
    ]


class ListOptions(_DirOptions):
    """
    secmsg pki list
    """


class Options(_DirOptions):
    """
    secmsg pki [--dir DIR] init|issue|revoke|crl|list ...
    """

    synopsis = "[--dir DIR] init|issue|revoke|crl|list ..."
    subCommands = [
        ["init", None, InitOptions, "Make a CA in DIR (ECDSA P-256 unless --rsa)."],
        ["issue", None, IssueOptions, "Issue a client or server certificate."],
        ["revoke", None, RevokeOptions, "Revoke certificates and write a fresh CRL."],
        ["crl", None, CRLOptions, "Sign the CRL again with a new next update."],
        ["list", None, ListOptions, "List what the CA has issued."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                "give a pki command: init, issue, revoke, crl or list"
            )


def run(options: Options, now: datetime) -> list[str]:
    """
    Carry out a parsed C{secmsg pki} command.

    @return: the lines to print.
    @raise AuthorityError: the request cannot be carried out; nothing changed.
    @raise secmsg.errors.ConfigurationError: a file of the CA is unreadable
        or damaged.
    """
    sub = options.subOptions
    directory = sub.directory(options)
    if options.subCommand == "init":
        return _init(directory, sub, now)
    with open_authority(directory) as authority:
        if options.subCommand == "issue":
            return _issue(authority, sub.request(), now)
        if options.subCommand == "revoke":
            return _revoke(authority, sub["which"], sub["reason"], now)
        if options.subCommand == "crl":
            crl = authority.sign_crl(now, sub["days"])
            number = authority.inventory.crl_number
            return [
                f"signed {authority.crl_path} (CRL number {number}, "
                f"next update {crl.next_update_utc:%Y-%m-%d %H:%M} UTC)"
            ]
        return format_table(authority.inventory.records, now)


def _init(directory: Path, options: InitOptions, now: datetime) -> list[str]:
    try:
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, options["cn"])]
        if options["org"]:
            attributes.append(
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, options["org"])
            )
        authority = create_authority(
            directory,
            x509.Name(attributes),
            now,
            days=options["days"],
            rsa_bits=options["rsa"],
            replace=options["force"],
        )
    except ValueError as error:
        # cryptography's words for a --cn or --org it cannot encode.
        raise AuthorityError(f"--cn or --org: {error}") from None
    certificate = authority.ca.certificate
    return [
        f"made a CA in {directory}: {certificate.subject.rfc4514_string()}, "
        f"valid until {certificate.not_valid_after_utc:%Y-%m-%d}",
        f"  give the daemon:  ca = {directory / 'ca.pem'}, crl = {authority.crl_path}",
        f"  keep private:     {directory / 'ca.key'}",
    ]


def _issue(
    authority: CertificateAuthority, request: Request, now: datetime
) -> list[str]:
    earlier = [
        r
        for r in authority.inventory.records
        if r.name == request.name and r.revoked is None and r.not_after > now
    ]
    try:
        record, certificate, key = authority.issue(request, now)
    except ValueError as error:
        raise AuthorityError(str(error)) from None
    lines = [
        f"issued a {record.kind} certificate for {record.name}, serial "
        f"{record.serial:x}, valid until {record.not_after:%Y-%m-%d}",
        f"  certificate: {certificate}",
        f"  private key: {key} (0600; hand it to its owner only)",
    ]
    lines.extend(
        f"  note: the earlier certificate {r.serial:x} for {r.name} stays valid "
        f"until it expires; revoke it with: "
        f"secmsg pki --dir {authority.directory} revoke {r.serial:x}"
        for r in earlier
    )
    return lines


def _revoke(
    authority: CertificateAuthority, which: str, reason: str, now: datetime
) -> list[str]:
    revoked = authority.revoke(which, reason, now)
    lines = [
        f"revoked {r.kind} certificate {r.serial:x} of {r.name} ({reason})"
        for r in revoked
    ]
    lines.append(
        f"wrote {authority.crl_path} (CRL number {authority.inventory.crl_number}); "
        "a running daemon applies it on RELOAD or SIGHUP"
    )
    return lines


def format_table(records: list[Record], now: datetime) -> list[str]:
    """
    The inventory as a table: name, serial, kind, expiry, revocation.
    """
    rows = [("NAME", "SERIAL", "KIND", "EXPIRES", "REVOKED")]
    for record in records:
        expires = f"{record.not_after:%Y-%m-%d}"
        if record.not_after <= now:
            expires += " (expired)"
        revoked = "-"
        if record.revoked is not None:
            revoked = f"{record.revoked:%Y-%m-%d} {record.reason}"
        rows.append((record.name, f"{record.serial:x}", record.kind, expires, revoked))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]
