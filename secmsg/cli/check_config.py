"""
C{secmsg check-config FILE}: load a daemon's configuration as the daemon
would, without starting it, and say everything that is wrong with it, what
its policy grants, and what will go wrong soon.

An operator about to restart a daemon, or to send it SIGHUP, wants every
problem at once rather than one per attempt: each file is checked on its
own wherever it does not need another (the key without the certificate,
the policy without either), and a file that cannot be checked because one
it needs failed is named as not checked.  When every file passes on its
own, the daemon's own loader reads them all together, so that a
configuration this command passes is one the daemon starts with.

Nothing is written: the data directory is not created, no database is
opened.  Everything shown comes from the operator's files and is escaped
for the terminal.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from twisted.python import usage

from secmsg.cli.options import CommandOptions
from secmsg.daemon.identity import describe_subject
from secmsg.daemon.policy import ALWAYS_GRANTED, ROOM_ACTIONS, Policy, load_policy
from secmsg.daemon.reload import ReloadableFiles, load_live_configuration
from secmsg.daemon.settings import Settings, load_settings
from secmsg.daemon.tls import TLSFiles
from secmsg.daemon.trust import TrustAnchors, describe_issuer, load_crls
from secmsg.errors import ConfigurationError
from secmsg.files import read_bytes, read_toml
from secmsg.pem import certificates_in, check_key_pair, private_key_in
from secmsg.wire import escape_controls

WARN_WITHIN = timedelta(days=30)
"""How far ahead an expiring certificate or CRL is worth a warning: time
to issue a new one without hurry."""

CRL_WARN_AT_LEAST = timedelta(days=7)
"""The least warning a CRL's next update is given.  A CRL is signed for 30
days and signed again on a schedule (weekly, by the units in
contrib/systemd), so a CRL with a week left has missed several runs; a
30-day window would warn about every CRL just signed."""

CRL_WARN_SHARE = 4
"""A CRL is worth a warning in the last quarter of its life, if that is
longer than L{CRL_WARN_AT_LEAST}: a root's CRL, signed for a year by a key
kept offline, needs weeks to bring the root online and sign it again."""


def crl_warning_window(crl: x509.CertificateRevocationList) -> timedelta:
    """
    How far ahead of this CRL's next update a warning is due: a share of
    its life, so that a short-lived CRL signed on a schedule does not warn
    and a long-lived one warns in time.
    """
    if crl.next_update_utc is None:
        return CRL_WARN_AT_LEAST
    life = crl.next_update_utc - crl.last_update_utc
    return max(CRL_WARN_AT_LEAST, life / CRL_WARN_SHARE)


_FILES = ("cert", "key", "ca", "crl", "policy", "data-dir")

_T = TypeVar("_T")


class Options(CommandOptions):
    """
    secmsg check-config FILE
    """

    synopsis = "FILE (the daemon's config file, as given to twistd secmsg --config)"

    def parseArgs(self, config: str | None = None) -> None:
        if config is None:
            raise usage.UsageError("give the config file to check")
        self["config"] = Path(config)


@dataclass
class Findings:
    """
    What a check found: problems (the daemon would not start), warnings
    (it would, but something needs doing), files not checked because one
    they need failed, and what the policy grants.
    """

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)

    def problem(self, error: ConfigurationError) -> None:
        """
        Note a loader's refusal, once, with the file it names.
        """
        if str(error) not in self.problems:
            self.problems.append(str(error))

    def attempt(self, load: Callable[[], _T]) -> _T | None:
        """
        Run a loader; its result, or L{None} with its refusal noted.
        """
        try:
            return load()
        except ConfigurationError as error:
            self.problem(error)
            return None


def run(options: Options, now: datetime) -> tuple[list[str], bool]:
    """
    Check the config file given, as of C{now}.

    @return: the lines to print, escaped, and whether the daemon would
        start (warnings allowed).
    """
    config = options["config"]
    findings = check(config, now)
    lines = [f"checking {config}"]
    lines += [f"problem: {each}" for each in findings.problems]
    lines += [f"warning: {each}" for each in findings.warnings]
    lines += [f"not checked: {each}" for each in findings.unchecked]
    lines += findings.grants
    lines.append(_summary(findings))
    return [escape_controls(line) for line in lines], not findings.problems


def check(config: Path, now: datetime) -> Findings:
    """
    Check a config file and every file it names, each as far as it can be
    checked on its own.
    """
    findings = Findings()
    settings = findings.attempt(lambda: load_settings({}, str(config)))
    files = _files_of(settings) if settings else _salvaged_files(config)
    if not files:
        findings.unchecked.append(f"{config}: the files it names")
    if "data-dir" in files:
        _check_data_dir(files["data-dir"], findings)
    tls_ok = _check_tls(files, now, findings)
    policy = None
    if "policy" in files:
        policy = findings.attempt(lambda: load_policy(files["policy"]))
    if policy is not None:
        findings.grants = grant_lines(files["policy"], policy)
        findings.warnings += unreachable_roles(files["policy"], policy)
    if settings is not None and tls_ok and policy is not None:
        findings.attempt(lambda: _load_as_the_daemon(settings, now))
    return findings


def _files_of(settings: Settings) -> dict[str, Path]:
    files = {
        "cert": settings.cert,
        "key": settings.key,
        "ca": settings.ca,
        "policy": settings.policy,
        "data-dir": settings.data_dir,
    }
    if settings.crl is not None:
        files["crl"] = settings.crl
    return files


def _salvaged_files(config: Path) -> dict[str, Path]:
    """
    The files a config file names although its settings are refused (an
    unknown key, a bad port), so that they are checked all the same; none
    if it is not TOML at all.
    """
    try:
        data = read_toml(config)
    except ConfigurationError:
        return {}
    return {
        name: config.parent / data[name]
        for name in _FILES
        if isinstance(data.get(name), str)
    }


def _load_as_the_daemon(settings: Settings, now: datetime) -> None:
    """
    Load the policy and build the TLS context as the daemon does at start
    and at every reload, to catch what checking the files one by one
    cannot.
    """
    load_live_configuration(
        ReloadableFiles(
            TLSFiles(settings.cert, settings.key, settings.ca, settings.crl),
            settings.policy,
            settings.refuse_on_stale_crl,
        ),
        now,
    )


def _check_data_dir(path: Path, findings: Findings) -> None:
    """
    Whether the daemon could use or create its data directory, judged as
    the user running this command, without creating it.
    """
    if path.exists():
        if not path.is_dir():
            findings.problem(ConfigurationError(str(path), "not a directory"))
        elif not os.access(path, os.W_OK | os.X_OK):
            findings.problem(ConfigurationError(str(path), "not writable"))
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        findings.problem(
            ConfigurationError(str(path), f"cannot be created: {parent} not writable")
        )


def _check_tls(files: dict[str, Path], now: datetime, findings: Findings) -> bool:
    """
    Check the server's certificate and key, the CA bundle and the CRLs,
    each on its own where it can be.

    @return: whether all of them passed.
    """
    before = len(findings.problems)
    chain = _server_chain(files, now, findings)
    key = None
    if "key" in files:
        key = findings.attempt(
            lambda: private_key_in(read_bytes(files["key"]), files["key"])
        )
    if key is not None:
        findings.warnings += _key_mode(files["key"])
    if chain is not None and key is not None:
        findings.attempt(
            lambda: check_key_pair(key, files["key"], chain[0], files["cert"])
        )
    cas = None
    if "ca" in files:
        cas = findings.attempt(
            lambda: certificates_in(
                read_bytes(files["ca"]), files["ca"], "CA certificate"
            )
        )
    if cas is not None:
        findings.warnings += _ca_warnings(files["ca"], cas, now)
    if "crl" in files:
        _check_crls(files["crl"], cas, now, findings)
    required = {"cert", "key", "ca"} <= set(files)
    return required and len(findings.problems) == before


def _key_mode(path: Path) -> list[str]:
    """
    A warning for a private key that others than its owner and group may
    read or write, or that its group may change.  Group read is as it
    should be under systemd (contrib/systemd/): the daemon's user reads
    the key through its group at each reload, mode 0640.
    """
    mode = path.stat().st_mode & 0o777
    reasons = [
        words
        for bits, words in (
            (0o004, "others can read it"),
            (0o002, "others can write it"),
            (0o020, "its group can write it"),
        )
        if mode & bits
    ]
    if not reasons:
        return []
    return [
        f"{path}: the private key is open too widely ({', '.join(reasons)}; "
        f"mode {mode:04o}): chmod 640 {path} with the daemon's group as its "
        "group, or 600 if the daemon runs as its owner"
    ]


def _server_chain(
    files: dict[str, Path], now: datetime, findings: Findings
) -> list[x509.Certificate] | None:
    if "cert" not in files:
        return None
    path = files["cert"]
    chain = findings.attempt(lambda: certificates_in(read_bytes(path), path))
    if chain is None:
        return None
    leaf = chain[0]
    if leaf.not_valid_after_utc < now:
        # The daemon's own refusal, in its words.
        findings.problem(
            ConfigurationError(
                str(path),
                f"server certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}",
            )
        )
    else:
        findings.warnings += _dates(path, leaf, "the server certificate", now)
    for certificate in chain[1:]:
        what = f"the CA certificate {describe_subject(certificate)} in its chain"
        findings.warnings += _dates(path, certificate, what, now)
    return chain


def _ca_warnings(path: Path, cas: list[x509.Certificate], now: datetime) -> list[str]:
    return [
        warning
        for ca in cas
        for warning in _dates(path, ca, f"the CA {describe_subject(ca)}", now)
    ]


def _dates(
    path: Path, certificate: x509.Certificate, what: str, now: datetime
) -> list[str]:
    """
    A warning for a certificate that is not valid yet, has expired, or
    expires within L{WARN_WITHIN}.
    """
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if start > now:
        return [f"{path}: {what} is not valid until {start:%Y-%m-%d %H:%M}Z"]
    if end < now:
        return [f"{path}: {what} expired on {end:%Y-%m-%d %H:%M}Z"]
    if end - now < WARN_WITHIN:
        return [f"{path}: {what} expires on {end:%Y-%m-%d %H:%M}Z, {_in(end - now)}"]
    return []


def _check_crls(
    path: Path,
    cas: list[x509.Certificate] | None,
    now: datetime,
    findings: Findings,
) -> None:
    if cas is None:
        findings.unchecked.append(f"{path}: the CA bundle it is checked against failed")
        return
    crls = findings.attempt(lambda: load_crls(path, cas))
    if crls is None:
        return
    trust = TrustAnchors(tuple(cas), tuple(crls))
    findings.warnings += [f"{path}: {stale}" for stale in trust.stale_crls(now)]
    for crl in crls:
        left = crl.next_update_utc - now if crl.next_update_utc else None
        if left is not None and timedelta(0) <= left < crl_warning_window(crl):
            findings.warnings.append(
                f"{path}: the CRL of {describe_issuer(crl)} has its next update on "
                f"{crl.next_update_utc:%Y-%m-%d %H:%M}Z, {_in(left)}; sign it again "
                "before then (secmsg pki crl)"
            )
    findings.warnings += [
        f"{path}: no CRL of the CA {describe_subject(ca)}: every certificate it "
        "issued is refused, its revocation status unknown"
        for ca in cas
        if not any(crl.issuer == ca.subject for crl in crls)
    ]


def _in(left: timedelta) -> str:
    """
    How long is left, in whole days to the nearest.
    """
    if left < timedelta(days=1):
        return "in less than a day"
    days = round(left / timedelta(days=1))
    return "in 1 day" if days == 1 else f"in {days} days"


def grant_lines(path: Path, policy: Policy) -> list[str]:
    """
    What a policy grants, to read before relying on it: each role's
    commands and rate, who gets which roles and how, and the room rules.
    """
    lines = [f"grants of {path}:"]
    for role in sorted(policy.role_commands):
        inherits = sorted(policy.role_lineage[role] - {role})
        rate = policy.role_rates[role]
        lines.append(
            f"  role {role}: {', '.join(sorted(policy.role_commands[role])) or '-'}"
            + (f" (inherits {', '.join(inherits)})" if inherits else "")
            + f"; rate {rate.per_second:g}/s, burst {rate.burst}"
        )
    lines.append(f"  every admitted identity: {', '.join(sorted(ALWAYS_GRANTED))}")
    for identity, roles in sorted(policy.identities.items()):
        lines.append(f"  identity {identity}: {', '.join(roles)}")
    for rule in policy.rules:
        lines.append(f"  {rule.describe()}: {', '.join(rule.roles)}")
    lines.append(
        f"  default_roles: {', '.join(policy.default_roles)}"
        if policy.default_roles
        else "  default_roles: none; an identity neither listed nor matched is refused"
    )
    for room in policy.rooms.rules:
        actions = "; ".join(
            f"{action} {', '.join(sorted(room.allowed[action])) or '(none)'}"
            for action in ROOM_ACTIONS
        )
        lines.append(f"  rooms {room.pattern}: {actions}")
    lines.append("  any other room: open to every role with the commands")
    return lines


def unreachable_roles(path: Path, policy: Policy) -> list[str]:
    """
    A warning for each role nobody can have: no identity, rule or
    C{default_roles} names it or a role that inherits it.  Likely a
    misspelling, or a role left behind, whose rights nobody gets.
    """
    named = set(policy.default_roles)
    named.update(role for roles in policy.identities.values() for role in roles)
    named.update(role for rule in policy.rules for role in rule.roles)
    reachable = set().union(*(policy.role_lineage[role] for role in named))
    return [
        f"{path}: role {role} is given to nobody: no identity, rule or "
        "default_roles names it or a role that inherits it"
        for role in sorted(set(policy.role_commands) - reachable)
    ]


def _summary(findings: Findings) -> str:
    problems = _count(len(findings.problems), "problem")
    warnings = _count(len(findings.warnings), "warning")
    if findings.problems:
        return f"{problems}, {warnings}: the daemon would not start with this"
    return f"no problems, {warnings}: the daemon would start with this"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
