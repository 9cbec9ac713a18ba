"""
The composition root: C{twistd secmsg}'s options and the service they make.

This is the only module that reads options.  It turns them into settings,
loads the configuration, and hands every other piece its collaborators as
constructor arguments.  A configuration error ends the daemon here with one
line naming the file and the problem, before anything listens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService
from twisted.cred.portal import Portal
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from secmsg.auth import CertificateChecker, PolicyRealm
from secmsg.commands import Commands
from secmsg.errors import ConfigurationError
from secmsg.hub import InProcessHub
from secmsg.identity import IdentityRule
from secmsg.protocol import SessionFactory
from secmsg.reload import ReloadableFiles, Reloader, load_live_configuration
from secmsg.service import SecmsgService
from secmsg.settings import OPTIONS, Settings, load_settings, prepare_data_dir
from secmsg.tls import TLSFiles, VerifyingServerTLS, clock_time

LISTEN_BACKLOG = 511
"""Pending connections the kernel holds; Twisted's default of 50 overflows
under bursts of new connections and turns them into one-second stalls."""


class Options(usage.Options):
    """
    The options of C{twistd secmsg}; each may also be set in the TOML file
    given with --config.
    """

    optParameters = [
        ["config", "c", None, "TOML file setting any of the options below."],
        ["port", "p", None, "TCP port to listen on. [default: 7443]"],
        ["interface", "i", None, "Address to listen on. [default: 127.0.0.1]"],
        ["cert", None, None, "The server's certificate chain, leaf first (PEM)."],
        ["key", None, None, "The server's private key (PEM, unencrypted)."],
        ["ca", None, None, "CAs trusted to sign client certificates (PEM bundle)."],
        ["crl", None, None, "CRLs of those CAs (PEM); optional."],
        ["policy", None, None, "Roles and identities (TOML)."],
        ["data-dir", None, None, "Directory for the daemon's state."],
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
    ]


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
        return assemble(settings, reactor)
    except ConfigurationError as error:
        raise SystemExit(f"secmsg: cannot start: {error}") from None


@dataclass(frozen=True)
class Daemon:
    """
    The daemon's assembled pieces, before anything listens.

    @ivar factory: the TLS-wrapped factory to listen with.
    @ivar sessions: the session factory inside it, which can close them all.
    @ivar reloader: what RELOAD and SIGHUP call.
    """

    factory: TLSMemoryBIOFactory
    sessions: SessionFactory
    reloader: Reloader


def build_daemon(settings: Settings, clock: IReactorTime) -> Daemon:
    """
    Load the configuration and wire the daemon's pieces together.

    @param clock: the time source for certificate checks and TLS writes.
    @raise ConfigurationError: a file is missing or invalid.
    """
    prepare_data_dir(settings.data_dir)
    files = ReloadableFiles(
        TLSFiles(settings.cert, settings.key, settings.ca, settings.crl),
        settings.policy,
    )
    live = load_live_configuration(files, clock_time(clock))
    rule = IdentityRule(settings.identity)
    hub = InProcessHub()
    tls = VerifyingServerTLS(live.tls, rule.identity_of, clock)
    realm = PolicyRealm(live.policy, hub)
    portal = Portal(realm, [CertificateChecker(rule)])
    reloader = Reloader(files, clock, tls, realm, hub)
    sessions = SessionFactory(
        portal, Commands(hub, reloader.reload), clock, settings.max_line_length
    )
    return Daemon(TLSMemoryBIOFactory(tls, False, sessions, clock), sessions, reloader)


def assemble(settings: Settings, reactor: Any) -> SecmsgService:
    """
    The daemon as a service listening on the configured address.

    @param reactor: provides TCP listening and the clock.
    @raise ConfigurationError: a file is missing or invalid.
    """
    daemon = build_daemon(settings, reactor)
    endpoint_type = (
        TCP6ServerEndpoint if ":" in settings.interface else TCP4ServerEndpoint
    )
    endpoint = endpoint_type(
        reactor, settings.port, backlog=LISTEN_BACKLOG, interface=settings.interface
    )
    return SecmsgService(
        endpoint, daemon.factory, daemon.sessions, reactor, daemon.reloader.reload
    )
