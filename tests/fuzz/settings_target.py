"""
The daemon's config loader, fed the text of a C{--config} file.

Properties: it gives settings or raises L{ConfigurationError}, whose words
hold nothing L{wire.escape_controls} would escape; and settings it gives
are what the file says: every path is the file's own string under the
file's directory and one the system can open (no NUL), and the interfaces
are the strings the file wrote.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from secmsg import wire
from secmsg.daemon.settings import Settings, load_settings
from secmsg.errors import ConfigurationError
from tests.fuzz.scratch import written

_PATH_FIELDS = {
    "cert": "cert",
    "key": "key",
    "ca": "ca",
    "crl": "crl",
    "policy": "policy",
    "data-dir": "data_dir",
    "backup-dir": "backup_dir",
}


def one_input(data: bytes) -> None:
    """
    Load C{data} as the config file, with no flags given.
    """
    path = written("secmsg.toml", data)
    try:
        settings = load_settings({}, str(path))
    except ConfigurationError as error:
        assert wire.escape_controls(str(error)) == str(error), str(error)
        return
    _check_settings(settings, tomllib.loads(data.decode("utf-8")), path.parent)


def _check_settings(settings: Settings, raw: Mapping[str, Any], base: Path) -> None:
    for key, attribute in _PATH_FIELDS.items():
        if key in raw:
            value = getattr(settings, attribute)
            assert value == base / raw[key], (key, value)
            assert "\x00" not in str(value), (key, value)
    for key in ("interface", "admin-interface"):
        if key in raw:
            shown = getattr(settings, key.replace("-", "_"))
            assert shown == raw[key], (key, shown)
