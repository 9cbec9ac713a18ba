"""
The development instance C{secmsg init} writes: a CA directory as
C{secmsg pki} keeps it, with a server certificate for this machine, client
certificates for a few users, a policy and a config file, ready to run.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from secmsg.errors import AuthorityError
from secmsg.files import install_file
from secmsg.pki import certificates as pki
from secmsg.pki.authority import CA_FILES, create_authority, open_authority
from secmsg.pki.requests import Request

DEVELOPMENT_USERS = {"admin": ["admin"], "alice": ["user"], "bob": ["user"]}

SERVER_NAME = "localhost"
SERVER_NAMES = pki.Names(dns=("localhost",), ips=("127.0.0.1", "::1"))

DEVELOPMENT_CRL_DAYS = 365
"""A development instance's CRL outlives the usual month, so that one left
alone for a while does not fill its log with warnings of a stale CRL."""

DEVELOPMENT_POLICY = """\
# Who may do what.  A verified identity, that is anyone holding a
# certificate from this instance's CA, gets default_roles unless it is
# listed under [identities]; an empty default_roles refuses the unlisted.
default_roles = ["user"]

[roles.guest]
commands = ["HELP", "WHOAMI", "WHO", "PING", "QUIT"]
# Commands per second, shared by all of an identity's sessions, in bursts
# of up to `burst`; past it a command gets 429.  A role that sets none
# takes the most generous rate it inherits, or 20 a second in bursts of 60.
rate = 20
burst = 60

[roles.user]
inherits = ["guest"]
# PRESENCE is no command: it pushes ONLINE and OFFLINE as identities come
# and go, which WHO tells anyone who asks anyway.
commands = ["MSG", "JOIN", "PART", "SAY", "ROOMS", "HISTORY", "PRESENCE"]

[roles.admin]
inherits = ["user"]
# METRICS and BACKUP have no line of their own: they let the admin
# interface's /metrics be read and its /v1/backup copy the message store.
commands = ["KICK", "BROADCAST", "RELOAD", "METRICS", "BACKUP"]

# Roles by what a certificate says, for an identity not under [identities];
# every rule it matches adds its roles.  See docs/policy.md.
# [[rules]]
# subject = {{ OU = "ops" }}
# roles = ["admin"]
#
# [[rules]]
# san_uri_prefix = "spiffe://example.org/service/"
# roles = ["user"]

# Who may join, read and speak in rooms; the first pattern that matches a
# room decides, and a room that none matches is open to every role.
[[rooms]]
pattern = "#ops-*"
join = ["admin"]

# Last in the file, so that a line added at the end lists one more identity.
[identities]
{identities}
"""

DEVELOPMENT_CONFIG = """\
# A secmsg development instance made by `secmsg init`.
# Run it with: twistd -n secmsg --config {config}
# Paths are relative to this file's directory.
port = {port}
interface = "127.0.0.1"
{admin_port}
cert = "servers/{server}.pem"
key = "servers/{server}.key"
ca = "ca.pem"
crl = "crl.pem"
policy = "policy.toml"
data-dir = "data"
# Where secmsg backup writes its copies of the message store.
backup-dir = "backups"
"""


def create_instance(
    directory: Path, now: datetime, port: int = 7443, admin_port: int | None = None
) -> Path:
    """
    Write a ready-to-run development instance into C{directory}: a CA and
    its CRL, a server certificate for localhost, 127.0.0.1 and ::1, client
    certificates for the L{DEVELOPMENT_USERS}, a policy and a config file.

    @param port: the port its config file listens on.
    @param admin_port: the admin interface's port in its config file;
        L{None} for none, a commented-out line then.

    @return: the config file.
    @raise AuthorityError: the directory already holds some of it; nothing
        is changed then.
    """
    config = directory / "secmsg.toml"
    policy = directory / "policy.toml"
    certificates = [
        directory / "servers" / SERVER_NAME,
        *(directory / "clients" / user for user in DEVELOPMENT_USERS),
    ]
    for path in (
        config,
        policy,
        directory / "crl.pem",
        *(directory / name for name in CA_FILES),
        *(c.with_suffix(suffix) for c in certificates for suffix in (".pem", ".key")),
    ):
        if path.exists():
            raise AuthorityError(
                f"{path} already exists; secmsg init writes a new instance only "
                "where there is none (secmsg pki --dir DIR issue NAME adds "
                "certificates to one)"
            )
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "secmsg development CA")]
    )
    create_authority(directory, subject, now)
    with open_authority(directory) as authority:
        authority.issue(Request(SERVER_NAME, server=True, names=SERVER_NAMES), now)
        for user in DEVELOPMENT_USERS:
            authority.issue(Request(user), now)
        authority.sign_crl(now, DEVELOPMENT_CRL_DAYS)
    identities = "\n".join(
        f"{user} = {roles!r}".replace("'", '"')
        for user, roles in DEVELOPMENT_USERS.items()
    )
    install_file(
        policy, DEVELOPMENT_POLICY.format(identities=identities).encode(), private=False
    )
    install_file(
        config,
        DEVELOPMENT_CONFIG.format(
            config=config,
            server=SERVER_NAME,
            port=port,
            admin_port="# admin-port = 7445"
            if admin_port is None
            else f"admin-port = {admin_port}",
        ).encode(),
        private=False,
    )
    # Written only by the daemon's user: a backup refuses a directory that
    # others could swap its copy in.
    (directory / "backups").mkdir(mode=0o700, exist_ok=True)
    return config
