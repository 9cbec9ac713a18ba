"""
C{secmsg backup --config FILE NAME}: have the daemon that FILE configures
write a consistent copy of its message store, named NAME, in its
C{backup-dir}, while it serves.

The daemon holds its database exclusively, so that a second daemon on the
same data directory is refused; no other process reads it.  The command
therefore asks the daemon itself, at its admin interface (C{POST
/v1/backup}, which the policy command BACKUP grants), as an admin
certificate given like C{secmsg connect}'s.  The daemon writes only in the
directory its operator named: a right to back up is not a right to write
files wherever the daemon's user can.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, ResponseFailed, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from secmsg.cli.connect import ConnectionOptions
from secmsg.cli.options import complain
from secmsg.client.protocol import ExitStatus
from secmsg.client.tls import (
    client_tls_options,
    describe_tls_failure,
    load_client_files,
)
from secmsg.daemon.settings import load_settings
from secmsg.errors import ConfigurationError

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 -- names, not a bind
"""An admin interface listening on every address is reached on loopback."""


class BackupOptions(ConnectionOptions):
    """
    secmsg backup --config FILE NAME [--force] (--instance DIR --as NAME | ...)
    """

    synopsis = (
        "--config FILE BACKUP [--force] "
        "(--instance DIR --as NAME | --cert F --key F --ca F)"
    )
    optParameters = [
        ["config", None, None, "The daemon's configuration file."],
    ]
    optFlags = [
        ["force", None, "Replace the backup of that name if there is one."],
    ]

    # usage.Options hands parseArgs the words left on the command line;
    # Twisted types it as taking none.
    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        if "/" in name:
            raise usage.UsageError(
                f"{name!r}: give the backup's file name; the daemon writes it "
                "in its backup-dir"
            )
        self["name"] = name

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("give --config FILE, the daemon's configuration")
        # The admin interface is never a profile's server, so a profile's
        # server name is not what its certificate is for: only
        # --server-name is.
        given = self["server-name"]
        super().postOptions()
        self["server-name"] = given


def admin_address(config: str) -> tuple[str, int]:
    """
    Where the admin interface of the daemon C{config} configures listens.

    @raise ConfigurationError: it has none, or one on a port picked at start.
    """
    settings = load_settings({}, config)
    if settings.admin_port is None:
        raise ConfigurationError(
            config, "sets no admin-port: the daemon has no admin interface to ask"
        )
    if settings.admin_port == 0:
        raise ConfigurationError(
            config, "admin-port is 0, a port picked at start: set the port to ask"
        )
    host = settings.admin_interface
    return _WILDCARDS.get(host, host), settings.admin_port


def run(options: BackupOptions) -> int:
    """
    Run C{secmsg backup}; print what was written, or why not, and return
    the exit status.
    """
    try:
        host, port = admin_address(options["config"])
        files = load_client_files(*_credential_paths(options))
    except ConfigurationError as error:
        complain(f"secmsg: {error}")
        return ExitStatus.FAILED
    server_name = options["server-name"] or host
    tls = client_tls_options(server_name, files[2], files[0], files[1])
    body = {"name": options["name"], "replace": bool(options["force"])}
    url = f"https://{_netloc(host, port)}/v1/backup"

    def ask(reactor: Any) -> Deferred[int]:
        agent = Agent(
            reactor, contextFactory=_Pinned(tls), connectTimeout=options["timeout"]
        )
        asked = agent.request(
            b"POST",
            url.encode(),
            Headers({b"content-type": [b"application/json"]}),
            FileBodyProducer(BytesIO(json.dumps(body).encode())),
        )
        answered: Deferred[int] = asked.addCallback(_answered)
        answered.addErrback(_not_asked, url, server_name)
        return answered

    return _run(ask)


def _credential_paths(options: BackupOptions) -> tuple[Path, Path, Path]:
    credentials = options.credentials
    return credentials.certificate, credentials.key, credentials.ca


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _run(ask: Callable[[Any], Deferred[int]]) -> int:
    """
    Run the reactor until C{ask} is answered; Ctrl-C stops it sooner.
    """
    from twisted.internet import reactor

    outcome: list[int] = []

    def unexpected(failure: Failure) -> int:
        complain(f"secmsg: unexpected failure: {failure.getErrorMessage()}")
        return ExitStatus.FAILED

    def begin() -> None:
        done = ask(reactor).addErrback(unexpected).addCallback(outcome.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(begin)
    reactor.run()
    if not outcome:
        complain(
            "secmsg: interrupted; the daemon's log says whether the backup was made"
        )
        return ExitStatus.INTERRUPTED
    return outcome[0]


def _answered(response: Any) -> Deferred[int]:
    def read(raw: bytes) -> int:
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        if response.code == 200:
            print(
                f"backed up the message store to {answer['path']} "
                f"({answer['bytes']} bytes)",
                flush=True,
            )
            return ExitStatus.OK
        detail = answer.get("detail") if isinstance(answer, dict) else None
        words = detail or raw[:200].decode("utf-8", "replace")
        complain(f"secmsg: backup not made ({response.code}): {words}")
        if response.code in (401, 403):
            return ExitStatus.NOT_PERMITTED
        return ExitStatus.FAILED

    return readBody(response).addCallback(read)


def _not_asked(failure: Failure, url: str, server_name: str) -> int:
    """
    Say why the request never got its answer.
    """
    failure.trap(ResponseFailed, ConnectError, DNSLookupError)
    complain(f"secmsg: cannot ask {url}: {_why(failure, server_name)}")
    refused = describe_tls_failure(_first_reason(failure), server_name)[0]
    return ExitStatus.CERTIFICATE_REFUSED if refused else ExitStatus.CONNECTION


def _first_reason(failure: Failure) -> Failure:
    reasons = getattr(failure.value, "reasons", None)
    return reasons[0] if reasons else failure


def _why(failure: Failure, server_name: str) -> str:
    if failure.check(ConnectError, DNSLookupError):
        return failure.getErrorMessage()
    reason = _first_reason(failure)
    if reason.check(SSL.Error):
        return describe_tls_failure(reason, server_name)[1]
    return (
        "the connection ended before the answer; a backup that outlasts the "
        "admin interface's connection deadline goes on, and the daemon's log "
        "and audit trail say how it ended"
    )


@implementer(IPolicyForHTTPS)
class _Pinned:
    """
    The one TLS configuration every connection of the request uses: our
    certificate, the daemon's CA, the name to check.
    """

    def __init__(self, tls: Any) -> None:
        self._tls = tls

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self._tls
