"""
The C{secmsg} command: C{secmsg init DIR} makes a development instance.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from twisted.python import usage

from secmsg import __version__
from secmsg.errors import ConfigurationError
from secmsg.pki import DEVELOPMENT_USERS, create_instance


class InitOptions(usage.Options):
    """
    secmsg init DIR
    """

    synopsis = "DIR"

    def parseArgs(self, directory: str) -> None:
        self["directory"] = Path(directory)


class Options(usage.Options):
    """
    secmsg COMMAND [options]
    """

    synopsis = "secmsg COMMAND [options]"
    subCommands = [
        ["init", None, InitOptions, "Make a ready-to-run development instance in DIR."],
    ]

    def opt_version(self) -> None:
        """
        Print secmsg's version and exit.
        """
        print(f"secmsg {__version__}")
        raise SystemExit(0)

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
        print(f"{options}\nsecmsg: {error}", file=sys.stderr)
        return 2
    try:
        config = create_instance(options.subOptions["directory"], datetime.now(UTC))
    except (ConfigurationError, OSError) as error:
        print(f"secmsg: {error}", file=sys.stderr)
        return 1
    directory = config.parent
    print(f"made a development instance in {directory}")
    print(f"  run it:   twistd -n secmsg --config {config}")
    user = next(iter(DEVELOPMENT_USERS))
    print(
        f"  log in:   openssl s_client -quiet -connect 127.0.0.1:7443 "
        f"-cert {directory}/clients/{user}.pem -key {directory}/clients/{user}.key "
        f"-CAfile {directory}/ca.pem -verify_return_error"
    )
    return 0
