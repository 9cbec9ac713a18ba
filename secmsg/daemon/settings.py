"""
The daemon's settings: command-line flags over a TOML file over defaults.

Every option can be set in the file given with C{--config}; a flag given on
the command line overrides it.  Paths in the file are relative to the file's
own directory, so that an instance directory can be moved whole; paths on
the command line are relative to the working directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from secmsg.daemon.audit import ROTATE_BYTES
from secmsg.daemon.identity import IdentityField
from secmsg.daemon.limits import Limits, RoomLimits
from secmsg.daemon.listen import plain_endpoint_problem, reuse_port_problem
from secmsg.daemon.sharing import bus_url, database_url, node_name
from secmsg.errors import ConfigurationError
from secmsg.files import read_toml
from secmsg.messages import Retention, WaitingLimit
from secmsg.wire import MAX_LINE_LENGTH, escape_controls

OPTIONS = (
    "port",
    "interface",
    "cert",
    "key",
    "ca",
    "crl",
    "policy",
    "data-dir",
    "identity",
    "max-line-length",
    "retention-days",
    "room-max",
    "mailbox-max",
    "mailbox-max-waiting",
    "mailbox-max-waiting-bytes",
    "history-max",
    "handshake-timeout",
    "idle-timeout",
    "max-sessions",
    "max-sessions-per-identity",
    "max-sessions-per-address",
    "max-handshakes",
    "max-handshakes-per-address",
    "logins-per-identity",
    "logins-per-address",
    "max-rooms",
    "max-rooms-per-identity",
    "stale-crl",
    "admin-port",
    "admin-interface",
    "listen",
    "admin-listen",
    "audit-rotate-bytes",
    "log-format",
    "backup-dir",
    "commit-delay",
    "database",
    "reuse-port",
    "bus",
    "node",
)
"""Every setting, by the name it has both as a flag and in the file."""

HISTORY_MAX = 200
"""The most messages one HISTORY gives, unless the operator says."""

COMMIT_DELAY_MS = 1.0
"""The longest, in milliseconds, a commit of the message store waits for
company under a steady stream, unless the operator says: about an fsync
of a fast disk, small beside a client's round trip."""

COMMIT_DELAY_MAX_MS = 10.0
"""The longest commit delay an operator may set: about one fsync of a
spinning disk.  Messages that come during a commit share the next one
anyway, so waiting longer than a commit takes only adds latency."""

MAX_ROOMS_CEILING = 50000
"""The most rooms an operator may let the daemon hold, or one identity be
in: ROOMS lists every room in one reply, which must stay well within the
100,000 lines secmsg's client takes in one."""

_PATHS = {"cert", "key", "ca", "crl", "policy", "data-dir", "backup-dir"}
_REQUIRED = ("cert", "key", "ca", "policy", "data-dir")


@dataclass(frozen=True)
class LineSettings:
    """
    The settings the line sessions are built with, apart from where the
    daemon listens and its files, so that tests build sessions as the
    daemon does.
    """

    limits: Limits = field(default_factory=Limits)
    waiting_limit: WaitingLimit = field(default_factory=WaitingLimit)
    history_max: int = HISTORY_MAX
    max_line_length: int = MAX_LINE_LENGTH


@dataclass(frozen=True)
class Settings:
    """
    Everything the daemon was told, checked and with defaults filled in.
    """

    cert: Path
    key: Path
    ca: Path
    crl: Path | None
    policy: Path
    data_dir: Path
    backup_dir: Path | None = None
    port: int = 7443
    interface: str = "127.0.0.1"
    identity: IdentityField = IdentityField.CN
    max_line_length: int = MAX_LINE_LENGTH
    retention: Retention = field(default_factory=Retention)
    waiting_limit: WaitingLimit = field(default_factory=WaitingLimit)
    history_max: int = HISTORY_MAX
    limits: Limits = field(default_factory=Limits)
    refuse_on_stale_crl: bool = False
    admin_port: int | None = None
    admin_interface: str = "127.0.0.1"
    listen: tuple[str, ...] = ()
    admin_listen: tuple[str, ...] = ()
    audit_rotate_bytes: int = ROTATE_BYTES
    log_format: str = "text"
    commit_delay: timedelta = timedelta(milliseconds=COMMIT_DELAY_MS)
    database: str | None = None
    bus: str | None = None
    node: str = ""
    reuse_port: bool = False

    @property
    def line(self) -> LineSettings:
        """
        What the line sessions are built with.
        """
        return LineSettings(
            self.limits, self.waiting_limit, self.history_max, self.max_line_length
        )


def load_settings(flags: Mapping[str, str | None], config: str | None) -> Settings:
    """
    Merge the flags given (L{None} for one not given) over the config file.

    @raise ConfigurationError: naming the file or flag at fault.
    """
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if config is not None:
        merged.update(_read_config(Path(config)))
        origins.update(dict.fromkeys(merged, config))
    for name, value in flags.items():
        if value is not None:
            merged[name] = Path(value) if name in _PATHS else value
            origins[name] = f"--{name}"
    for name in _REQUIRED:
        if name not in merged:
            raise ConfigurationError(
                f"--{name}", f"not set; give --{name} or set {name} in the config file"
            )
    port = _integer(merged, origins, "port", 7443, 0, 65535)
    reuse_port = _boolean(merged, origins, "reuse-port", False)
    settings = Settings(
        cert=merged["cert"],
        key=merged["key"],
        ca=merged["ca"],
        crl=merged.get("crl"),
        policy=merged["policy"],
        data_dir=merged["data-dir"],
        backup_dir=_absolute(merged.get("backup-dir")),
        port=port,
        interface=_address(merged, origins, "interface"),
        identity=_identity_field(merged, origins),
        max_line_length=_integer(
            merged, origins, "max-line-length", MAX_LINE_LENGTH, 64, 1 << 20
        ),
        retention=Retention(
            max_age=timedelta(
                days=_integer(merged, origins, "retention-days", 30, 1, 36500)
            ),
            room_max=_integer(merged, origins, "room-max", 1000, 1, 10**9),
            mailbox_max=_integer(merged, origins, "mailbox-max", 1000, 1, 10**9),
        ),
        waiting_limit=_waiting_limit(merged, origins),
        history_max=_integer(merged, origins, "history-max", HISTORY_MAX, 1, 10000),
        limits=_limits(merged, origins),
        refuse_on_stale_crl=_choice(
            merged, origins, "stale-crl", STALE_CRL_CHOICES, "serve"
        )
        == "refuse",
        admin_port=(
            _integer(merged, origins, "admin-port", 0, 0, 65535)
            if "admin-port" in merged
            else None
        ),
        admin_interface=_address(merged, origins, "admin-interface"),
        listen=_listen(merged, origins, "listen", ("port", "interface")),
        admin_listen=_listen(
            merged, origins, "admin-listen", ("admin-port", "admin-interface")
        ),
        audit_rotate_bytes=_integer(
            merged, origins, "audit-rotate-bytes", ROTATE_BYTES, 1024, 2**40
        ),
        log_format=_choice(merged, origins, "log-format", LOG_FORMATS, "text"),
        commit_delay=_commit_delay(merged, origins),
        database=_database(merged, origins),
        bus=_bus(merged, origins),
        node=node_name(merged.get("node"), _origin(origins, "node"), port, reuse_port),
        reuse_port=reuse_port,
    )
    _check_reuse_port(settings, origins)
    return settings


STALE_CRL_CHOICES = ("serve", "refuse")
"""What to do while a CRL is past its next update: keep serving with a
warning, or refuse the certificates it covers."""


LOG_FORMATS = ("text", "json")
"""How the daemon's log is written: twistd's text lines, or one JSON event
a line with its named fields (L{secmsg.daemon.logs})."""


def _waiting_limit(
    merged: Mapping[str, Any], origins: Mapping[str, str]
) -> WaitingLimit:
    default = WaitingLimit()
    return WaitingLimit(
        messages=_integer(
            merged, origins, "mailbox-max-waiting", default.messages, 1, 10**9
        ),
        text_bytes=_integer(
            merged,
            origins,
            "mailbox-max-waiting-bytes",
            default.text_bytes,
            1,
            2**40,
        ),
    )


def _limits(merged: Mapping[str, Any], origins: Mapping[str, str]) -> Limits:
    default = Limits()
    return Limits(
        handshake_timeout=_integer(
            merged, origins, "handshake-timeout", int(default.handshake_timeout), 1, 300
        ),
        idle_timeout=_integer(
            merged, origins, "idle-timeout", int(default.idle_timeout), 10, 604800
        ),
        max_sessions=_integer(
            merged, origins, "max-sessions", default.max_sessions, 1, 10**6
        ),
        max_per_identity=_integer(
            merged,
            origins,
            "max-sessions-per-identity",
            default.max_per_identity,
            1,
            10**6,
        ),
        max_per_address=_integer(
            merged,
            origins,
            "max-sessions-per-address",
            default.max_per_address,
            1,
            10**6,
        ),
        max_handshakes=_integer(
            merged, origins, "max-handshakes", default.max_handshakes, 1, 10**6
        ),
        max_handshakes_per_address=_integer(
            merged,
            origins,
            "max-handshakes-per-address",
            default.max_handshakes_per_address,
            1,
            10**6,
        ),
        logins_per_identity=_integer(
            merged,
            origins,
            "logins-per-identity",
            default.logins_per_identity,
            1,
            10**6,
        ),
        logins_per_address=_integer(
            merged,
            origins,
            "logins-per-address",
            default.logins_per_address,
            1,
            10**6,
        ),
        rooms=_room_limits(merged, origins),
    )


def _room_limits(merged: Mapping[str, Any], origins: Mapping[str, str]) -> RoomLimits:
    """
    The bounds on rooms, each at most L{MAX_ROOMS_CEILING}: ROOMS lists
    every room in one reply.
    """
    default = RoomLimits()
    return RoomLimits(
        max_rooms=_integer(
            merged, origins, "max-rooms", default.max_rooms, 1, MAX_ROOMS_CEILING
        ),
        max_per_identity=_integer(
            merged,
            origins,
            "max-rooms-per-identity",
            default.max_per_identity,
            1,
            MAX_ROOMS_CEILING,
        ),
    )


def _listen(
    merged: Mapping[str, Any],
    origins: Mapping[str, str],
    name: str,
    replaced: tuple[str, ...],
) -> tuple[str, ...]:
    """
    The endpoint strings of C{listen} (or C{admin-listen}), which say in
    full where to listen and so replace the port and interface settings:
    both at the same level (flags, or the file) is a contradiction; a flag
    of either kind overrides the file's other kind.
    """
    if name not in merged:
        return ()
    flag = origins[name].startswith("--")
    given = [other for other in replaced if other in merged]
    clash = [other for other in given if origins[other].startswith("--") == flag]
    if clash:
        raise ConfigurationError(
            _origin(origins, name),
            f"set together with {clash[0]}; {name} says where to listen in "
            f"full, so give one or the other",
        )
    if given and not flag:
        return ()
    value = merged[name]
    descriptions = [value] if isinstance(value, str) else value
    if (
        not isinstance(descriptions, list)
        or not descriptions
        or not all(isinstance(item, str) and item.strip() for item in descriptions)
    ):
        raise ConfigurationError(
            _origin(origins, name),
            "must be endpoint strings, such as tcp:7443 or systemd:domain=INET:index=0",
        )
    for description in descriptions:
        problem = plain_endpoint_problem(description)
        if problem is not None:
            raise ConfigurationError(_origin(origins, name), problem)
    return tuple(descriptions)


def _check_reuse_port(settings: Settings, origins: Mapping[str, str]) -> None:
    """
    Refuse C{reuse-port} where it cannot be had, before anything listens.
    """
    if settings.reuse_port:
        problem = reuse_port_problem(settings.listen, settings.admin_listen)
        if problem is not None:
            raise ConfigurationError(_origin(origins, "reuse-port"), problem)


def prepare_data_dir(path: Path) -> None:
    """
    Create the data directory (private to the daemon's user) if missing,
    and check that the daemon can write in it.

    @raise ConfigurationError: it cannot be created or written.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            str(path), f"cannot create: {error.strerror}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigurationError(str(path), "not writable by the daemon")


def check_data_dir(path: Path) -> None:
    """
    Check, creating nothing, that the daemon will be able to make or write
    in its data directory: what L{prepare_data_dir} does once the daemon
    knows it can listen, told before it starts.

    @raise ConfigurationError: it, or the directory it would be made in,
        is not a writable directory.
    """
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigurationError(
            str(path), f"cannot create: {existing} is not a directory"
        )
    if os.access(existing, os.W_OK | os.X_OK):
        return
    if existing == path:
        raise ConfigurationError(str(path), "not writable by the daemon")
    raise ConfigurationError(
        str(path), f"cannot create: {existing} is not writable by the daemon"
    )


def _read_config(path: Path) -> dict[str, Any]:
    data = read_toml(path)
    unknown = sorted(set(data) - set(OPTIONS))
    if unknown:
        # A quoted TOML key may hold any character; the words go to a terminal.
        raise ConfigurationError(
            str(path),
            f"unknown setting {escape_controls(', '.join(unknown))}; "
            f"known: {', '.join(OPTIONS)}",
        )
    settings: dict[str, Any] = {}
    for name, value in data.items():
        if name in _PATHS:
            if not isinstance(value, str):
                raise ConfigurationError(str(path), f"{name} must be a path string")
            if "\x00" in value:
                raise ConfigurationError(
                    str(path), f"{name} holds a NUL character, which no path can"
                )
            settings[name] = path.parent / value
        else:
            settings[name] = value
    return settings


def _absolute(path: Path | None) -> Path | None:
    """
    C{path} from the working directory the daemon starts in, as it was
    meant: a backup is refused any directory not named absolutely, which
    a relative one could name differently later (twistd's --rundir).
    Not resolved, so that a symbolic link in it is still refused.
    """
    return None if path is None else path.absolute()


def _origin(origins: Mapping[str, str], name: str) -> str:
    """
    Where a setting came from, as the operator wrote it: the flag, or the
    key in the config file.
    """
    origin = origins.get(name, f"--{name}")
    return origin if origin.startswith("--") else f"{origin}: {name}"


def _integer(
    merged: Mapping[str, Any],
    origins: Mapping[str, str],
    name: str,
    default: int,
    low: int,
    high: int,
) -> int:
    value = merged.get(name, default)
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and origins[name].startswith("--"):
        # A flag's text; the file's values are TOML numbers, and a string
        # or a fraction there is a mistake worth saying.
        number = int(value) if value.isascii() and value.isdigit() else None
    if number is None or not low <= number <= high:
        raise ConfigurationError(
            _origin(origins, name),
            f"{value!r} is not a whole number from {low} to {high}",
        )
    return number


def _commit_delay(merged: Mapping[str, Any], origins: Mapping[str, str]) -> timedelta:
    """
    The commit delay, in milliseconds, a fraction allowed (0.5): a TOML
    number in the file, or a flag's text.
    """
    value = merged.get("commit-delay", COMMIT_DELAY_MS)
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and origins["commit-delay"].startswith("--"):
        # float() would take "nan", "inf" and "1e3"; an operator means digits.
        digits = value.replace(".", "", 1)
        number = float(value) if digits.isascii() and digits.isdigit() else None
    # NaN, which TOML allows, fails the comparison too.
    if number is None or not 0 <= number <= COMMIT_DELAY_MAX_MS:
        raise ConfigurationError(
            _origin(origins, "commit-delay"),
            f"{value!r} is not a number of milliseconds from 0 (no delay) "
            f"to {COMMIT_DELAY_MAX_MS:g}",
        )
    return timedelta(milliseconds=number)


def _database(merged: Mapping[str, Any], origins: Mapping[str, str]) -> str | None:
    """
    The PostgreSQL database of C{database}, or L{None} for SQLite in the
    data directory.
    """
    if "database" not in merged:
        return None
    return database_url(merged["database"], _origin(origins, "database"))


def _bus(merged: Mapping[str, Any], origins: Mapping[str, str]) -> str | None:
    """
    The Redis bus of C{bus}, or L{None} for a daemon alone; a bus needs a
    database the daemons share.
    """
    if "bus" not in merged:
        return None
    where = _origin(origins, "bus")
    if "database" not in merged:
        raise ConfigurationError(
            where,
            'needs a database the daemons share: set database = "postgresql://..." too',
        )
    return bus_url(merged["bus"], where)


def _address(merged: Mapping[str, Any], origins: Mapping[str, str], name: str) -> str:
    """
    An interface to listen on, as the operator wrote it: the file's value
    must be a string, since the text of a number or a list would be an
    address no one meant.
    """
    value = merged.get(name, "127.0.0.1")
    if not isinstance(value, str):
        raise ConfigurationError(
            _origin(origins, name),
            'must be an address string, such as "127.0.0.1" or "::"',
        )
    return value


def _identity_field(
    merged: Mapping[str, Any], origins: Mapping[str, str]
) -> IdentityField:
    choices = tuple(field.value for field in IdentityField)
    return IdentityField(
        _choice(merged, origins, "identity", choices, IdentityField.CN.value)
    )


def _boolean(
    merged: Mapping[str, Any], origins: Mapping[str, str], name: str, default: bool
) -> bool:
    """
    A switch: a TOML boolean in the file, or True from its flag; a string
    or number in the file is refused, not guessed at ("false" is truthy).
    """
    value = merged.get(name, default)
    if not isinstance(value, bool):
        raise ConfigurationError(
            _origin(origins, name), f"{value!r} is not true or false"
        )
    return value


def _choice(
    merged: Mapping[str, Any],
    origins: Mapping[str, str],
    name: str,
    choices: tuple[str, ...],
    default: str,
) -> str:
    value = merged.get(name, default)
    if value not in choices:
        raise ConfigurationError(
            _origin(origins, name), f"{value!r} is not one of {', '.join(choices)}"
        )
    return value
