"""
The server context itself: how it is built, apart from any handshake.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from secmsg.tls import TLSFiles, load_server_tls
from tests.certs import now
from tests.harness import Instance


class ServerContextTests(SynchronousTestCase):
    def test_idle_connections_release_their_record_buffers(self) -> None:
        """
        The context frees each connection's read and write buffers while it
        has nothing buffered: an idle session must not hold them.
        """
        settings = Instance(self).settings()
        files = TLSFiles(settings.cert, settings.key, settings.ca, settings.crl)
        context = load_server_tls(files, now(), False).context
        # Setting no bits changes nothing and answers the mode in force.
        self.assertTrue(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)
