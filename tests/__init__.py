"""
The tests of secmsg.

No test may use the client settings of whoever runs them: the variables
that choose a profile or name our files are cleared, and
C{XDG_CONFIG_HOME} points at an empty directory of its own, for the tests
and for every secmsg process they start, so that a profile file in the
real home is never read.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

for _name in ("SECMSG_PROFILE", "SECMSG_CERT", "SECMSG_KEY", "SECMSG_CA"):
    os.environ.pop(_name, None)
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="secmsg-test-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], ignore_errors=True)
