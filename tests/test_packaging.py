"""
The plugin ships and is found: twistd lists secmsg from this install, and
a regular wheel carries the plugin without shadowing Twisted's packages.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from secmsg import __version__
from tests.harness import temporary_directory

ROOT = Path(__file__).resolve().parent.parent


class PackagingTests(SynchronousTestCase):
    def test_twistd_lists_the_plugin(self) -> None:
        """
        twistd, run from outside the source tree, lists secmsg.
        """
        result = subprocess.run(
            [Path(sys.executable).parent / "twistd", "--help"],
            capture_output=True,
            text=True,
            cwd=temporary_directory(self),
            check=True,
        )
        self.assertIn("secmsg", result.stdout)

    def test_python_dash_m_runs_the_command(self) -> None:
        """
        C{python -m secmsg} is the C{secmsg} command.
        """
        result = subprocess.run(
            [sys.executable, "-m", "secmsg", "--version"],
            capture_output=True,
            text=True,
            cwd=temporary_directory(self),
            check=True,
        )
        self.assertEqual(result.stdout, f"secmsg {__version__}\n")

    def test_wheel_carries_plugin_without_shadowing_twisted(self) -> None:
        """
        A built wheel holds twisted/plugins/secmsg_plugin.py and no
        __init__.py under twisted/, which would hide Twisted itself, the
        store's schema files, and the licence, named in its metadata.
        """
        out = temporary_directory(self)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT],
            capture_output=True,
            check=True,
        )
        (wheel,) = out.glob("secmsg-*.whl")
        archive = zipfile.ZipFile(wheel)
        names = archive.namelist()
        self.assertIn("twisted/plugins/secmsg_plugin.py", names)
        self.assertEqual(
            [n for n in names if n.startswith("twisted/") and "__init__" in n], []
        )
        self.assertIn("secmsg/tap.py", names)
        for schema in ("v1.sql", "v2.sql", "upgrade-to-v2.sql"):
            self.assertIn(f"secmsg/daemon/store/schema/{schema}", names)
        dist_info = f"secmsg-{__version__}.dist-info"
        self.assertIn(f"{dist_info}/licenses/LICENSE", names)
        metadata = archive.read(f"{dist_info}/METADATA").decode().splitlines()
        self.assertIn("License-Expression: MIT", metadata)
        self.assertIn("Classifier: Framework :: Twisted", metadata)
