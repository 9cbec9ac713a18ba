"""
C{secmsg pki}: the operator's certificate authority on the command line,
and the user's side of it (C{request}).

Each subcommand works on the CA directory given by C{--dir} (before or
after the subcommand's name; the current directory by default) and prints
what it did.  Nothing here prints a private key or a passphrase.  The
options are L{secmsg.cli.pki_options}'s.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.python import usage

from secmsg.cli.passphrase import new_passphrase, passphrase_source
from secmsg.cli.pki_options import (
    CRLOptions,
    DirOptions,
    InitOptions,
    IssueOptions,
    ListOptions,
    RenewOptions,
    RequestOptions,
    RevokeOptions,
    SignOptions,
)
from secmsg.errors import AuthorityError
from secmsg.files import install_file, read_bytes
from secmsg.pki import certificates as pki
from secmsg.pki.authority import (
    CertificateAuthority,
    Issuance,
    create_authority,
    create_issuing_authority,
    open_authority,
    take_root_crl,
)
from secmsg.pki.inventory import Record
from secmsg.pki.lifecycle import make_signing_request, renew, sign_request
from secmsg.pki.requests import load_signing_request


class ListStatus(enum.IntEnum):
    """
    The exit statuses of C{secmsg pki list --expiring}, for cron and
    monitoring; a CA that cannot be read exits 1 and a usage error 2, as
    every C{secmsg pki} command does.
    """

    NONE_EXPIRING = 0
    EXPIRING = 3
    """Some certificate in use expires within the days given, or has."""


class Options(DirOptions):
    """
    secmsg pki [--dir DIR] COMMAND ...
    """

    synopsis = "[--dir DIR] init|request|sign|issue|renew|revoke|crl|list ..."
    longdesc = (
        "Run a certificate authority for secmsg in a directory: make the CA, "
        "sign users' requests or issue keys and certificates, renew, revoke, "
        "and sign the CRL the daemon reads."
    )
    subCommands = [
        ["init", None, InitOptions, "Make a CA, a root CA or an issuing CA in DIR."],
        ["request", None, RequestOptions, "On a user's machine: make a key and a CSR."],
        ["sign", None, SignOptions, "Sign a client certificate for a request."],
        ["issue", None, IssueOptions, "Make a key and a certificate for NAME."],
        ["renew", None, RenewOptions, "Replace NAME's certificate, revoking the old."],
        ["revoke", None, RevokeOptions, "Revoke certificates and sign a fresh CRL."],
        ["crl", None, CRLOptions, "Sign the CRL again with a new next update."],
        ["list", None, ListOptions, "List what the CA has issued, or what expires."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                "give a pki command: init, request, sign, issue, renew, revoke, "
                "crl or list"
            )


def run(options: Options, now: datetime) -> tuple[list[str], int]:
    """
    Carry out a parsed C{secmsg pki} command.

    @return: the lines to print, and the exit status.
    @raise AuthorityError: the request cannot be carried out; nothing changed.
    @raise secmsg.errors.ConfigurationError: a file of the CA is unreadable
        or damaged.
    """
    sub = options.subOptions
    directory = sub.directory(options)
    if options.subCommand == "init":
        return _init(directory, sub, now), 0
    if options.subCommand == "request":
        return _request(directory, sub), 0
    if options.subCommand == "list":
        with open_authority(directory) as authority:
            return _list(authority, sub, now)
    passphrase = passphrase_source(sub["passphrase-fd"], str(directory / "ca.key"))
    with open_authority(directory, passphrase) as authority:
        return _signing_command(authority, options, now), 0


def _signing_command(
    authority: CertificateAuthority, options: Options, now: datetime
) -> list[str]:
    command, sub = options.subCommand, options.subOptions
    if command == "issue":
        return _issued(authority, authority.issue(sub.request(), now))
    if command == "sign":
        return _sign(authority, sub, now)
    if command == "renew":
        return _renew(authority, sub, now)
    if command == "revoke":
        return _revoke(authority, sub["which"], sub["reason"], now)
    return _crl(authority, sub, now)


def _init(directory: Path, options: InitOptions, now: datetime) -> list[str]:
    passphrase = None
    if options["passphrase"] or options["passphrase-fd"] is not None:
        passphrase = new_passphrase(options["passphrase-fd"])
    try:
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, options.common_name())]
        if options["org"]:
            attributes.append(
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, options["org"])
            )
        subject = x509.Name(attributes)
    except ValueError as error:
        # cryptography's words for a --cn or --org it cannot encode.
        raise AuthorityError(f"--cn or --org: {error}") from None
    if options["intermediate"]:
        return _init_issuing(directory, options, subject, passphrase, now)
    authority = create_authority(
        directory,
        subject,
        now,
        days=options["days"] or pki.CA_DAYS,
        rsa_bits=options["rsa"],
        replace=options["force"],
        root=options["root"],
        passphrase=passphrase,
    )
    lines = _made(authority, "a root CA" if options["root"] else "a CA")
    if options["root"]:
        lines[1:] = [
            f"  next:  secmsg pki init ISSUINGDIR --intermediate --root-dir "
            f"{directory}, then keep {directory} offline",
        ]
    return lines


def _init_issuing(
    directory: Path,
    options: InitOptions,
    subject: x509.Name,
    passphrase: bytes | None,
    now: datetime,
) -> list[str]:
    root_directory = Path(options["root-dir"])
    root_passphrase = passphrase_source(
        options["root-passphrase-fd"], str(root_directory / "ca.key")
    )
    with open_authority(root_directory, root_passphrase) as root:
        authority = create_issuing_authority(
            directory,
            root,
            subject,
            now,
            days=options["days"],
            rsa_bits=options["rsa"],
            replace=options["force"],
            passphrase=passphrase,
        )
    lines = _made(authority, f"an issuing CA under {root_directory}")
    lines.append(
        f"  the root's CRL is copied in; bring a new one with: secmsg pki --dir "
        f"{directory} crl --root-crl FILE"
    )
    return lines


def _made(authority: CertificateAuthority, what: str) -> list[str]:
    directory, certificate = authority.directory, authority.certificate
    return [
        f"made {what} in {directory}: {certificate.subject.rfc4514_string()}, "
        f"valid until {certificate.not_valid_after_utc:%Y-%m-%d}",
        f"  give the daemon:  ca = {directory / 'ca.pem'}, crl = {authority.crl_path}",
        f"  keep private:     {directory / 'ca.key'}",
    ]


def _request(directory: Path, options: RequestOptions) -> list[str]:
    key, csr = make_signing_request(
        directory,
        options["name"],
        names=options.names(),
        units=tuple(options["ou"]),
        rsa_bits=options["rsa"],
        replace=options["force"],
    )
    return [
        f"made a key and a signing request for {options['name']}",
        f"  private key:     {key} (0600; it stays on this machine)",
        f"  signing request: {csr} (give this to the CA, who runs: "
        f"secmsg pki --dir CA_DIR sign {csr.name})",
    ]


def _sign(
    authority: CertificateAuthority, options: SignOptions, now: datetime
) -> list[str]:
    csr = load_signing_request(options["csr"])
    issuance = sign_request(
        authority,
        csr,
        options.grant(),
        now,
        days=options["days"],
        replace=options["force"],
    )
    return _issued(authority, issuance, options["out"])


def _renew(
    authority: CertificateAuthority, options: RenewOptions, now: datetime
) -> list[str]:
    csr = load_signing_request(Path(options["csr"])) if options["csr"] else None
    issuance = renew(
        authority,
        options["name"],
        now,
        days=options["days"],
        rsa_bits=options["rsa"],
        csr=csr,
        new_key=options["new-key"],
    )
    return _issued(authority, issuance, options["out"])


def _issued(
    authority: CertificateAuthority, issuance: Issuance, out: str | None = None
) -> list[str]:
    record = issuance.record
    lines = [
        f"issued a {record.kind} certificate for {record.name}, serial "
        f"{record.serial:x}, valid until {record.not_after:%Y-%m-%d}",
        f"  certificate: {issuance.certificate}",
    ]
    if out is not None:
        data = issuance.certificate.read_bytes()
        install_file(Path(out), data, private=False)
        lines.append(f"  and a copy: {out} (for its owner)")
    if issuance.key is not None:
        lines.append(f"  private key: {issuance.key} (0600; hand it to its owner only)")
    else:
        lines.append("  private key: none here; it stays with its owner")
    if issuance.ignored:
        lines.append(
            f"  ignored the request's own {', '.join(issuance.ignored)}: "
            "the CA decides a certificate's extensions"
        )
    lines.extend(
        f"  revoked the certificate it supersedes, {r.serial:x}; "
        f"wrote {authority.crl_path} (a running daemon applies it on RELOAD or SIGHUP)"
        for r in issuance.superseded
    )
    lines.extend(
        f"  note: the earlier certificate {r.serial:x} for {r.name} stays valid "
        f"until it expires; revoke it with: "
        f"secmsg pki --dir {authority.directory} revoke {r.serial:x}"
        for r in issuance.earlier
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


def _crl(
    authority: CertificateAuthority, options: CRLOptions, now: datetime
) -> list[str]:
    lines = []
    if options["root-crl"]:
        number = take_root_crl(authority, Path(options["root-crl"]))
        lines.append(f"took the root's CRL number {number} from {options['root-crl']}")
    crl = authority.sign_crl(now, options["days"])
    number = authority.inventory.crl_number
    lines.append(
        f"signed {authority.crl_path} (CRL number {number}, "
        f"next update {crl.next_update_utc:%Y-%m-%d %H:%M} UTC)"
    )
    return lines + _root_crl_due(authority)


def _root_crl_due(authority: CertificateAuthority) -> list[str]:
    """
    For an issuing CA, when the root's CRL it keeps runs out: only the
    root, offline, signs the next one, so each C{crl} (the weekly job's
    too) says when it is due.
    """
    if not authority.chain:
        return []
    path = authority.directory / "root-crl.pem"
    try:
        crl = x509.load_pem_x509_crl(read_bytes(path))
    except ValueError:
        raise AuthorityError(f"{path} holds no PEM CRL") from None
    return [
        f"the root's CRL in it runs out {crl.next_update_utc:%Y-%m-%d}: before "
        "then, sign the root's CRL where its key is and bring it in with "
        f"secmsg pki --dir {authority.directory} crl --root-crl FILE"
    ]


def _list(
    authority: CertificateAuthority, options: ListOptions, now: datetime
) -> tuple[list[str], int]:
    if options["expiring"] is None:
        return format_table(authority.inventory.records, now), 0
    within = timedelta(days=options["expiring"])
    expiring = authority.inventory.expiring(now, within)
    if not expiring:
        return [], ListStatus.NONE_EXPIRING
    return format_table(expiring, now), ListStatus.EXPIRING


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
