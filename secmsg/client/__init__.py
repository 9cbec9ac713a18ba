"""
The client, C{secmsg connect}, C{secmsg send} and C{secmsg listen}: its
side of the protocol, its TLS options, the terminal prompt, the scripted
mode, the listener, and the API for programs that this package names:
L{connect} logs in and returns a L{Client} (docs/bots.md).

It imports the core and nothing of the daemon, the CA tool or the command
line.
"""

from secmsg.client.api import Client, Refused, connect
from secmsg.client.connect import Credentials
from secmsg.client.protocol import SessionEnded
from secmsg.client.received import Message

__all__ = ["Client", "Credentials", "Message", "Refused", "SessionEnded", "connect"]
