"""
The composition root: C{twistd secmsg}'s options and the service they make.

This is the only module that reads options.  It turns them into settings,
loads the configuration, and hands every other piece its collaborators as
constructor arguments.  A configuration error ends the daemon here with one
line naming the file and the problem, before anything listens.
"""

from __future__ import annotations

import pwd
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.web.resource import IResource

from secmsg.clock import clock_time
from secmsg.daemon.admin.api import AdminApi
from secmsg.daemon.admin.guard import CertificateGuard
from secmsg.daemon.admin.http import AdminGate, AdminSite
from secmsg.daemon.auth import CertificateChecker, PolicyRealm
from secmsg.daemon.expiry import TLSExpiry
from secmsg.daemon.factory import SessionFactory
from secmsg.daemon.hub import InProcessHub
from secmsg.daemon.identity import IdentityRule
from secmsg.daemon.interfaces import IHub, IMessageStore
from secmsg.daemon.limits import raise_open_file_limit
from secmsg.daemon.line import LineParts, build_line_sessions
from secmsg.daemon.listen import listen_endpoints
from secmsg.daemon.logs import JSONLogRoot, LogDestination
from secmsg.daemon.metrics import Metrics
from secmsg.daemon.operations import Backups
from secmsg.daemon.ownership import HandOverService, Owner
from secmsg.daemon.pidfile import pidfile_problem
from secmsg.daemon.placement import Places, placement
from secmsg.daemon.reload import (
    ReloadableFiles,
    Reloader,
    load_live_configuration,
)
from secmsg.daemon.rooms import Rooms
from secmsg.daemon.sending import PromptTLSFactory
from secmsg.daemon.service import (
    AdminService,
    AuditService,
    CRLFreshnessService,
    ListenFirstService,
    ReportedStart,
    RetentionService,
    SecmsgService,
    StoreService,
    remove_own_pidfile,
)
from secmsg.daemon.settings import (
    OPTIONS,
    Settings,
    check_data_dir,
    load_settings,
)
from secmsg.daemon.tls import TLSFiles, VerifyingServerTLS
from secmsg.errors import ConfigurationError

log = Logger()


class Options(usage.Options):
    """
    The options of C{twistd secmsg}; each may also be set in the TOML file
    given with --config.
    """

    optParameters = [
        ["config", "c", None, "TOML file setting any of the options below."],
        ["port", "p", None, "TCP port to listen on. [default: 7443]"],
        ["interface", "i", None, "Address to listen on. [default: 127.0.0.1]"],
        [
            "admin-listen",
            None,
            None,
            "Endpoint string of the admin interface, in place of "
            "--admin-port and --admin-interface.",
        ],
        [
            "audit-rotate-bytes",
            None,
            None,
            "Size at which the audit trail is rotated. [default: 10000000]",
        ],
        ["cert", None, None, "The server's certificate chain, leaf first (PEM)."],
        ["key", None, None, "The server's private key (PEM, unencrypted)."],
        ["ca", None, None, "CAs trusted to sign client certificates (PEM bundle)."],
        ["crl", None, None, "CRLs of those CAs (PEM); optional."],
        ["policy", None, None, "Roles and identities (TOML)."],
        ["data-dir", None, None, "Directory for the daemon's state."],
        [
            "backup-dir",
            None,
            None,
            "Directory secmsg backup writes its copies in (unset: no backups).",
        ],
        [
            "identity",
            None,
            None,
            "Certificate field naming a user: cn, san-email or san-uri. [default: cn]",
        ],
        [
            "max-line-length",
            None,
            None,
            "Bytes a protocol line may hold. [default: 4096]",
        ],
        ["retention-days", None, None, "Days messages are kept. [default: 30]"],
        ["room-max", None, None, "Messages kept per room. [default: 1000]"],
        [
            "mailbox-max",
            None,
            None,
            "Direct messages kept per recipient. [default: 1000]",
        ],
        [
            "mailbox-max-waiting",
            None,
            None,
            "Direct messages that may wait unacknowledged per recipient; more "
            "are refused (507). [default: 10000]",
        ],
        [
            "mailbox-max-waiting-bytes",
            None,
            None,
            "Bytes of direct message text that may wait unacknowledged per "
            "recipient; more are refused (507). [default: 16777216]",
        ],
        ["history-max", None, None, "Most messages HISTORY gives. [default: 200]"],
        [
            "handshake-timeout",
            None,
            None,
            "Seconds from connecting to being logged in. [default: 10]",
        ],
        [
            "idle-timeout",
            None,
            None,
            "Seconds without a line before a session is closed. [default: 900]",
        ],
        ["max-sessions", None, None, "Sessions held at once. [default: 10000]"],
        [
            "max-sessions-per-identity",
            None,
            None,
            "Sessions one identity holds at once. [default: 16]",
        ],
        [
            "max-sessions-per-address",
            None,
            None,
            "Sessions from one address at once. [default: 64]",
        ],
        [
            "max-rooms",
            None,
            None,
            "Rooms held at once; a JOIN that would make one more is refused "
            "(403). [default: 10000]",
        ],
        [
            "max-rooms-per-identity",
            None,
            None,
            "Rooms one identity is in at once; one more is refused (403). "
            "[default: 100]",
        ],
        [
            "admin-port",
            None,
            None,
            "TCP port of the HTTPS admin interface. [default: off]",
        ],
        [
            "admin-interface",
            None,
            None,
            "Address the admin interface listens on. [default: 127.0.0.1]",
        ],
        [
            "max-handshakes",
            None,
            None,
            "Connections not yet logged in at once. [default: 1000]",
        ],
        [
            "max-handshakes-per-address",
            None,
            None,
            "Connections not yet logged in from one address at once. [default: 32]",
        ],
        [
            "logins-per-identity",
            None,
            None,
            "Logins a minute one identity may make. [default: 60]",
        ],
        [
            "logins-per-address",
            None,
            None,
            "Logins a minute from one address. [default: 600]",
        ],
        [
            "stale-crl",
            None,
            None,
            "While a CRL is past its next update: serve (warn hourly) or "
            "refuse. [default: serve]",
        ],
        [
            "log-format",
            None,
            None,
            "The log, where twistd writes it: text, or json (an event a "
            "line). [default: text]",
        ],
        [
            "commit-delay",
            None,
            None,
            "Milliseconds a commit of the message store may wait for more "
            "messages under a steady stream; 0 for none. [default: 1]",
        ],
        [
            "database",
            None,
            None,
            "Keep the messages in this PostgreSQL database "
            "(postgresql://USER@HOST:PORT/DB) rather than SQLite in the data "
            "directory; the password, if any, in ~/.pgpass.",
        ],
        [
            "bus",
            None,
            None,
            "Be one of a cluster of daemons that share the database and tell "
            "each other through this Redis (redis://HOST:PORT/N).",
        ],
        ["node", None, None, "This daemon's name in its cluster. [default: HOST-PORT]"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = None
        self["reuse-port"] = None  # not optFlags' 0: the file's setting stands

    def opt_listen(self, description: str) -> None:
        """
        Twisted endpoint string to listen on, in place of --port and --interface;
        repeat it to listen on several (tcp:7443:interface=::,
        unix:/run/secmsg/secmsg.sock, systemd:domain=INET:index=0).  secmsg
        puts its own TLS on each, so ssl: and tls: are refused.
        """
        self["listen"] = [*(self["listen"] or ()), description]

    def opt_reuse_port(self) -> None:
        """
        Share the port and admin-port with other daemons of this user
        (SO_REUSEPORT); the kernel spreads new connections over them.
        """
        self["reuse-port"] = True

    def postOptions(self) -> None:
        """
        Refuse to start where a daemon already runs with twistd's pidfile:
        twistd checks it before making the service, so this is the last
        moment to say so in secmsg's words rather than twistd's.  A pidfile
        naming this very process (pid 1 in a container, again) is removed,
        as twistd removes one whose process is gone.
        """
        pidfile = _twistd_options(self).get("pidfile")
        if not pidfile:
            return
        problem = pidfile_problem(Path(pidfile))
        if problem is not None:
            raise SystemExit(f"secmsg: cannot start: {problem}")
        remove_own_pidfile(Path(pidfile))


def makeService(options: Options) -> IService:
    """
    Build the daemon's service from its options, or exit with one line.
    """
    from twisted.internet import reactor

    try:
        settings = load_settings(
            {name: options[name] for name in OPTIONS},
            options["config"],
        )
        destination = _json_log_destination(settings, options)
        daemon = ReportedStart(
            assemble(settings, reactor, owner_of(options)), _twistd_options(options)
        )
    except ConfigurationError as error:
        raise SystemExit(f"secmsg: cannot start: {error}") from None
    if destination is None:
        return daemon
    # Now, before twistd begins logging and redirects standard output.
    return JSONLogRoot(daemon, destination.open(sys.stdout))


def _json_log_destination(
    settings: Settings, options: Options
) -> LogDestination | None:
    """
    Where the JSON log goes, by twistd's own options, or L{None} for the
    text log, which twistd writes itself.

    @raise ConfigurationError: twistd's options send the log where JSON
        cannot go (syslog).
    """
    if settings.log_format != "json":
        return None
    twistd = _twistd_options(options)
    return LogDestination.of_twistd(
        twistd.get("logfile"),
        twistd.get("nodaemon", False),
        twistd.get("syslog", False),
    )


def _twistd_options(options: Options) -> Mapping[str, Any]:
    """
    twistd's own options, above ours, as twistd keeps them: it adds its
    status pipe there when it forks into the background.
    """
    return getattr(options, "parent", None) or {}


@dataclass(frozen=True)
class Daemon:
    """
    The daemon's assembled pieces, before anything listens.

    @ivar factory: the TLS-wrapped factory to listen with.
    @ivar sessions: the session factory inside it, which can close them all.
    @ivar reloader: what RELOAD and SIGHUP call.
    @ivar tls: the server TLS in force, whose CRLs are watched.
    @ivar metrics: what the daemon counts.
    @ivar admin: the TLS-wrapped factory of the admin interface, for when
        it listens.
    @ivar portal: what both ports log identities in through.
    """

    factory: TLSMemoryBIOFactory
    sessions: SessionFactory
    reloader: Reloader
    tls: VerifyingServerTLS
    metrics: Metrics
    admin: AdminGate
    portal: Portal


def build_daemon(
    settings: Settings,
    clock: IReactorTime,
    store: IMessageStore,
    hub: IHub | None = None,
) -> Daemon:
    """
    Load the configuration and wire the daemon's pieces together.

    @param clock: the time source for certificate checks and TLS writes.
    @param store: where messages are kept until their recipients have them.
    @param hub: how sessions are reached: by default, in this process.
    @raise ConfigurationError: a file is missing or invalid.
    """
    files = ReloadableFiles(
        TLSFiles(settings.cert, settings.key, settings.ca, settings.crl),
        settings.policy,
        settings.refuse_on_stale_crl,
    )
    live = load_live_configuration(files, clock_time(clock))
    rule = IdentityRule(settings.identity)
    hub = InProcessHub() if hub is None else hub
    rooms = Rooms(hub, store, settings.limits.rooms)
    tls = VerifyingServerTLS(live.tls, rule.identity_of, clock)
    realm = PolicyRealm(live.policy, hub)
    portal = Portal(realm, [CertificateChecker(rule)])
    metrics = Metrics(settings.node)
    metrics.configuration_loaded(True, clock.seconds())
    metrics.registry.register(TLSExpiry(tls))
    reloader = Reloader(files, clock, tls, realm, hub, rooms, metrics)
    line = build_line_sessions(
        settings.line,
        LineParts(hub, store, rooms, realm, portal, clock, metrics),
        reloader.reload,
    )
    sessions = line.sessions
    admin = AdminApi(
        hub,
        rooms,
        line.delivery,
        reloader.reload,
        metrics,
        sessions.rate_limiter,
        settings.max_line_length,
        Backups(settings.backup_dir, store.backup),
        settings.node,
    )
    # The admin interface's operations need the reloader, which needs the
    # realm: they are registered with the realm once they exist.
    realm.register(IResource, admin.resource_for)
    site = AdminSite(CertificateGuard(portal), metrics, sessions.refusal_records)
    return Daemon(
        PromptTLSFactory(tls, sessions, clock),
        sessions,
        reloader,
        tls,
        metrics,
        AdminGate(
            PromptTLSFactory(tls.optional_certificate(), site, clock),
            clock,
            settings.limits,
            sessions.refusal_records.anonymous,
        ),
        portal,
    )


def owner_of(options: Options) -> Owner | None:
    """
    The user twistd's C{--uid}/C{--gid} will drop to once the daemon has
    started, whom its state must belong to; L{None} if it drops to none.

    These are twistd's options, above ours, which it has already turned
    into numbers; like twistd, a C{--uid} alone means that user's group.
    """
    twistd = getattr(options, "parent", None)
    uid = twistd.get("uid") if twistd is not None else None
    gid = twistd.get("gid") if twistd is not None else None
    if uid is None and gid is None:
        return None
    if gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return Owner(-1 if uid is None else uid, gid)


def assemble(
    settings: Settings, reactor: Any, owner: Owner | None = None
) -> MultiService:
    """
    The daemon as a service listening on the configured address, with its
    message store and the retention that trims it.

    Nothing is written here: the ports are bound first when the daemon
    starts (L{ListenFirstService}), and only then are the data directory,
    the audit trail and the database made, so that a daemon that cannot
    listen leaves nothing behind.  A database already there is checked
    here, read-only, so that a corrupt, locked or newer one stops the
    daemon before it starts; L{StoreService} opens it when it starts, and
    only then is it made WAL or upgraded, so that a daemon that cannot
    listen leaves an older database for the older daemon to go on with.

    @param reactor: provides TCP listening, threads and the clock.
    @param owner: the user the daemon will run as, whom the data directory
        is handed to before it does; L{None} to keep it the current user's.
    @raise ConfigurationError: a file is missing or invalid.
    """
    check_data_dir(settings.data_dir)
    shortfall = raise_open_file_limit(settings.limits.open_files)
    if shortfall is not None:
        log.warn("{shortfall}", shortfall=shortfall)
    places = Places(settings.database, settings.bus, settings.node, settings.data_dir)
    placed = placement(places, settings.commit_delay.total_seconds(), reactor)
    store = placed.store
    daemon = build_daemon(settings, reactor, store, placed.hub)
    line = SecmsgService(
        listen_endpoints(
            reactor,
            "listen",
            settings.listen,
            settings.interface,
            settings.port,
            settings.reuse_port,
        ),
        daemon.factory,
        daemon.sessions,
        reactor,
        daemon.reloader.reload,
        store,
    )
    admin = _admin_service(settings, reactor, daemon.admin)
    service = MultiService()
    ListenFirstService(
        [line] if admin is None else [line, admin], settings.data_dir
    ).setServiceParent(service)
    AuditService(
        settings.data_dir, globalLogPublisher, reactor, settings.audit_rotate_bytes
    ).setServiceParent(service)
    StoreService(store).setServiceParent(service)
    if placed.cluster is not None:
        placed.cluster.setServiceParent(service)
    line.setServiceParent(service)
    RetentionService(store, reactor, settings.retention).setServiceParent(service)
    CRLFreshnessService(daemon.tls, reactor, daemon.reloader.recheck).setServiceParent(
        service
    )
    if admin is not None:
        admin.setServiceParent(service)
    if owner is not None:
        # Last, so that everything root opens is there to hand over.
        HandOverService(settings.data_dir, owner).setServiceParent(service)
    return service


def _admin_service(
    settings: Settings, reactor: Any, gate: AdminGate
) -> AdminService | None:
    """
    The admin interface's service, or L{None} when no setting turns it on.
    """
    if settings.admin_port is None and not settings.admin_listen:
        return None
    return AdminService(
        listen_endpoints(
            reactor,
            "admin-listen",
            settings.admin_listen,
            settings.admin_interface,
            settings.admin_port or 0,
            settings.reuse_port,
        ),
        gate,
    )
