"""
The daemon's log as JSON: one twisted.logger event a line, with its named
fields, where twistd would have written the text log.

twistd chooses one observer for its log when it starts: the callable of
C{--logger} if given, else an L{ILogObserver} component of its
application, else a text observer on C{--logfile}, on standard output
under C{--nodaemon}, or on syslog.  A plugin's service is added to that
application just before, so L{JSONLogRoot} sets the component then, as a
C{.tac} file would: the JSON observer replaces the text one and writes
where it would have, and nothing is logged twice.  Its destination follows
twistd's own rule, so that C{--logfile} and C{-n} mean what they mean for
the text log; C{--logger} still wins, as it does over every other choice.

The JSON form holds every field of an event, where the text form shows
only those its format names.  Every event secmsg emits names its fields
explicitly and none carries message text or key material
(docs/audit.md); a failure's traceback carries file names and line
numbers, not the values of variables.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import IO, Any, cast

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import ILogObserver, jsonFileLogObserver
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from secmsg.errors import ConfigurationError

DEFAULT_LOGFILE = "twistd.log"
"""Where twistd logs when it runs as a daemon without C{--logfile}."""


@dataclass(frozen=True)
class LogDestination:
    """
    Where twistd was told to send its log.

    @ivar logfile: the file's path, or L{None} for standard output.
    """

    logfile: str | None

    @classmethod
    def of_twistd(
        cls, logfile: str | None, nodaemon: bool, syslog: bool
    ) -> LogDestination:
        """
        Where the text log would go with twistd's C{--logfile},
        C{--nodaemon} and C{--syslog} as given.

        @raise ConfigurationError: twistd's options leave the JSON log no
            destination of its own choosing.
        """
        if syslog:
            raise ConfigurationError(
                "--syslog",
                "log-format json is written to twistd's log file or standard "
                "output, not to syslog; drop --syslog or use log-format text",
            )
        if logfile == "-" or (nodaemon and not logfile):
            if not nodaemon:
                raise ConfigurationError(
                    "--logfile", "a daemon cannot log to standard output; add -n"
                )
            return cls(None)
        return cls(logfile or DEFAULT_LOGFILE)

    def open(self, stdout: IO[str]) -> ILogObserver:
        """
        A JSON observer writing to this destination, a line an event.

        @param stdout: the standard output to write to, taken before
            twistd redirects it into the log.
        """
        return jsonFileLogObserver(self.stream(stdout), recordSeparator="")

    def stream(self, stdout: IO[str]) -> IO[Any]:
        """
        The file the log is written to: C{stdout}, or the log file, which
        is rotated on SIGUSR1 as twistd rotates its own (unless something
        else already handles that signal).
        """
        if self.logfile is None:
            return stdout
        logfile: LogFile = LogFile.fromFullPath(self.logfile)
        if not signal.getsignal(signal.SIGUSR1):
            signal.signal(signal.SIGUSR1, lambda _number, _frame: _rotate(logfile))
        # A LogFile is file-like: write and flush are all the observer uses.
        return cast(IO[Any], logfile)


def _rotate(logfile: LogFile) -> None:
    from twisted.internet import reactor

    # A signal may come between any two bytecodes: rotate on the reactor.
    cast(IReactorFromThreads, reactor).callFromThread(logfile.rotate)


class JSONLogRoot(MultiService):
    """
    The daemon's service with the JSON log observer it brings, which it
    gives twistd's application when twistd adds it to one.
    """

    def __init__(self, daemon: IService, observer: ILogObserver) -> None:
        super().__init__()
        self.observer = observer
        daemon.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        """
        Join C{parent}; if it is twistd's application, make the JSON
        observer its log observer, which twistd's logging then picks.
        """
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)
