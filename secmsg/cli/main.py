"""
The C{secmsg} command: C{init} makes a development instance, C{pki} runs
the operator's CA, C{connect}, C{send} and C{listen} talk to a daemon
(C{profile} keeps named sets of their options), C{audit} checks the
daemon's audit trail, C{check-config} checks the daemon's configuration
without starting it.

This is the client side's composition root, as L{secmsg.tap} is the
daemon's: it reads the options and hands each piece what it needs.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from twisted.python import usage

from secmsg.cli import audit as audit_command
from secmsg.cli import backup as backup_command
from secmsg.cli import check_config as check_config_command
from secmsg.cli import connect as connect_command
from secmsg.cli import listen as listen_command
from secmsg.cli import pki as pki_command
from secmsg.cli import profile as profile_command
from secmsg.cli.options import CommandOptions, complain, stop_writing
from secmsg.client.protocol import DEFAULT_PORT, ExitStatus
from secmsg.errors import AuthorityError, ConfigurationError
from secmsg.pki.instance import DEVELOPMENT_USERS, SERVER_NAME, create_instance


def _port(text: str) -> int:
    """
    A TCP port, as init's --port and --admin-port take it.
    """
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise ValueError(f"a port is a number from 1 to 65535, not {text!r}")
    return int(text)


class InitOptions(CommandOptions):
    """
    secmsg init DIR [--port PORT] [--admin-port PORT]
    """

    synopsis = "DIR"

    optParameters = [
        ["port", None, 7443, "Port the instance's daemon listens on.", _port],
        [
            "admin-port",
            None,
            None,
            "Port of its HTTPS admin interface. [default: off]",
            _port,
        ],
    ]

    # usage.Options calls parseArgs with the words left on the line, as
    # many as the subclass takes; Twisted types it as taking none.
    def parseArgs(self, directory: str) -> None:  # type: ignore[override]
        self["directory"] = Path(directory)


class Options(CommandOptions):
    """
    secmsg COMMAND [options]
    """

    synopsis = "init|pki|connect|send|listen|profile|audit|check-config|backup ..."
    subCommands = [
        ["init", None, InitOptions, "Make a ready-to-run development instance in DIR."],
        ["pki", None, pki_command.Options, "Run a certificate authority for secmsg."],
        ["connect", None, connect_command.ConnectOptions, "Talk to a secmsg daemon."],
        ["send", None, connect_command.SendOptions, "Send one message and exit."],
        [
            "listen",
            None,
            listen_command.ListenOptions,
            "Stay connected and write each message received to standard output.",
        ],
        [
            "profile",
            None,
            profile_command.Options,
            "Keep named servers and certificates for connect, send and listen.",
        ],
        ["audit", None, audit_command.Options, "Verify the daemon's audit trail."],
        [
            "check-config",
            None,
            check_config_command.Options,
            "Check the daemon's configuration without starting it.",
        ],
        [
            "backup",
            None,
            backup_command.BackupOptions,
            "Have a running daemon copy its message store to a file.",
        ],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("give a command")


def main(argv: list[str] | None = None) -> int:
    """
    Run the C{secmsg} command; return its exit status.
    """
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as error:
        complain(_innermost(options).getSynopsis())
        complain(f"secmsg: {error} (--help lists the options)")
        return ExitStatus.USAGE
    except ConfigurationError as error:
        # The profile file, read while the options are (a word may name a
        # profile), is broken or lacks the profile named.
        complain(f"secmsg: {error}")
        return ExitStatus.FAILED
    except BrokenPipeError:
        # --help's reader (head, say) stopped early: its choice, not ours.
        stop_writing(sys.stdout)
        return ExitStatus.OK
    if options.subCommand == "connect":
        return connect_command.run_connect(options.subOptions)
    if options.subCommand == "send":
        return connect_command.run_send(options.subOptions)
    if options.subCommand == "listen":
        return listen_command.run_listen(options.subOptions)
    if options.subCommand == "backup":
        return backup_command.run(options.subOptions)
    now = datetime.now(UTC)
    status: int = ExitStatus.OK
    try:
        if options.subCommand == "init":
            lines = _init(options.subOptions, now)
        elif options.subCommand == "audit":
            lines, status = audit_command.run(options.subOptions)
        elif options.subCommand == "check-config":
            lines, starts = check_config_command.run(options.subOptions, now)
            status = ExitStatus.OK if starts else ExitStatus.FAILED
        elif options.subCommand == "profile":
            lines = profile_command.run(options.subOptions, os.environ)
        else:
            lines, status = pki_command.run(options.subOptions, now)
    except (AuthorityError, ConfigurationError) as error:
        complain(f"secmsg: {error}")
        if options.subCommand == "audit":
            return audit_command.VerifyStatus.TROUBLE
        return ExitStatus.FAILED
    try:
        if lines:
            print("\n".join(lines), flush=True)
    except BrokenPipeError:
        # The reader (head, say) stopped early; that is its choice, not an
        # error.  Point stdout at nothing, so that exit does not complain.
        stop_writing(sys.stdout)
    return status


def _innermost(options: usage.Options) -> usage.Options:
    """
    The options of the deepest subcommand given, whose usage is the one
    that helps after a mistake.
    """
    while getattr(options, "subOptions", None) is not None:
        options = options.subOptions
    return options


def _init(options: InitOptions, now: datetime) -> list[str]:
    directory = options["directory"]
    config = create_instance(directory, now, options["port"], options["admin-port"])
    user = next(iter(DEVELOPMENT_USERS))
    return [
        f"made a development instance in {directory}",
        f"  run it:   twistd -n secmsg --config {config}",
        f"  log in:   secmsg connect {_address(options['port'])} --instance "
        f"{directory} --as {user}",
    ]


def _address(port: int) -> str:
    """
    The development server's address as C{secmsg connect} takes it: the
    port only where it is not the one the client dials by default.
    """
    return SERVER_NAME if port == DEFAULT_PORT else f"{SERVER_NAME}:{port}"
