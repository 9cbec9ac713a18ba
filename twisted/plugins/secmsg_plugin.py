"""
The C{twistd secmsg} plugin.  It names the service module as a string so
that every twistd run, which scans this directory, stays cheap.
"""

from twisted.application.service import ServiceMaker

secmsg = ServiceMaker(
    "secmsg",
    "secmsg.tap",
    "A mutual-TLS messaging daemon.",
    "secmsg",
)
