"""
The C{secmsg} command's entry point, kept free of imports so that a Ctrl-C
while Python is still loading the rest ends the command with one line and
status 130, as it does later, rather than with a traceback.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C, as shells use."""


def main() -> int:
    """
    Load and run the C{secmsg} command.
    """
    try:
        from secmsg.cli.main import main as run

        return run()
    except KeyboardInterrupt:
        sys.stderr.write("secmsg: interrupted\n")
        return INTERRUPTED
