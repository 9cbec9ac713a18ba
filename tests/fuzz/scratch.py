"""
Where a target writes an input that the code under test reads from a file.

The loaders take a path, as the daemon gives them one; a target writes the
input to one file in a directory of its own, made on first use, so that the
whole loader runs, reading included.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path


@functools.cache
def _directory() -> Path:
    return Path(tempfile.mkdtemp(prefix="secmsg-fuzz-"))


def written(name: str, data: bytes) -> Path:
    """
    A file named C{name} holding C{data}, rewritten for each input.
    """
    path = _directory() / name
    path.write_bytes(data)
    return path
