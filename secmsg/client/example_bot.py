"""
An echo bot: it answers every direct message with the same text, and
acknowledges each message once it has dealt with it.

    python -m secmsg.client.example_bot HOST PORT CERT KEY CA
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from secmsg.client import Client, Credentials, connect


async def echo(client: Client) -> None:
    """
    Answer each direct message with its own text, until the session ends.
    A message is acknowledged once answered: if the bot dies before, the
    message comes again (redelivered) at its next login, and is answered
    then.
    """
    async for message in client.messages():
        if message.kind == "direct":
            await client.send(message.sender, message.text)
        await client.ack(message.id)


async def main(reactor: Any, host: str, port: str, *files: str) -> None:
    """
    Log in with our certificate, key and the CA's certificate, and echo.
    """
    certificate, key, ca = (Path(name) for name in files)
    client = await connect(reactor, host, Credentials(certificate, key, ca), int(port))
    await echo(client)


if __name__ == "__main__":
    task.react(
        lambda reactor, argv: defer.Deferred.fromCoroutine(main(reactor, *argv)),
        [sys.argv[1:]],
    )
