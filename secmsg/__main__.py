"""
C{python -m secmsg}: the same command as C{secmsg}, for a Python whose
scripts directory is not on the path.
"""

import sys

from secmsg.cli.launch import main

sys.exit(main())
