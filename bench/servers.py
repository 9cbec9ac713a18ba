"""
The servers the benchmark measures, started and stopped by it on loopback:
secmsg's daemon, Mosquitto and C{openssl s_server}, all on one CA's ECDSA
P-256 certificates, all requiring a client certificate and checking it
against the CA's CRL.

Each server is a child process whose CPU time and resident memory are read
from /proc, so that a figure is the server's own, not the load generator's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from secmsg.files import install_file
from secmsg.pki import certificates as pki
from secmsg.pki.authority import open_authority
from secmsg.pki.instance import create_instance

BIN = Path(sys.executable).parent

START_TIMEOUT = 30.0
"""Seconds a server may take to start listening."""

QUIET_PERIOD = 0.5
QUIET_SHARE = 0.05
QUIET_TIMEOUT = 120.0
"""A server is quiet once it uses at most 5% of a core over half a second;
it may take two minutes to be."""

ROOM = "bench"
"""The one room of the room scenario, in secmsg and as an MQTT topic."""

POLICY = """\
# The benchmark's policy: every identity may message, join and say, at a
# rate that never binds, so that the daemon is measured and not its limit.
default_roles = ["user"]

[roles.user]
commands = ["PING", "QUIT", "MSG", "JOIN", "PART", "SAY", "BROADCAST"]
rate = 1e9
burst = 1000000000

# The cluster's presence watcher (bench/cluster.py): told ONLINE and OFFLINE.
[roles.watcher]
commands = ["PING", "QUIT", "PRESENCE"]

[identities]
{known}
"""

LIFTED_LIMITS = """
max-sessions = 20000
max-sessions-per-identity = 20000
max-sessions-per-address = 20000
max-handshakes = 5000
max-handshakes-per-address = 5000
logins-per-identity = 1000000
logins-per-address = 1000000
mailbox-max-waiting = 1000000000
mailbox-max-waiting-bytes = 1099511627776
room-max = 1000000000
mailbox-max = 1000000000
"""
"""The session, login and mailbox limits lifted for the benchmark, which
opens thousands of sessions from one address, measures logins a second,
and stores for away recipients as fast as it can (as Mosquitto is run with
no cap on its queues); and retention's counts lifted, so that a store
filled with a million messages before the daemon starts keeps them."""

MOSQUITTO_ACL = """\
# Anyone may send to anyone's inbox and use the rooms; each identity reads
# only its own inbox. The username is the certificate's CN. Patterns, not
# topics: Mosquitto applies topic lines outside a user block to anonymous
# clients only.
pattern write direct/+
pattern readwrite rooms/#
pattern read direct/%u
"""


@dataclass(frozen=True)
class Credentials:
    """
    The files of the benchmark's PKI: the CA, the CRL, the server's
    certificate for "localhost", and a directory of client certificates
    named NAME.pem and NAME.key.
    """

    ca: Path
    crl: Path
    server_certificate: Path
    server_key: Path
    clients: Path

    def client(self, name: str) -> tuple[Path, Path]:
        return self.clients / f"{name}.pem", self.clients / f"{name}.key"


def make_pki(
    directory: Path,
    names: list[str],
    known: list[str],
    limits: str = LIFTED_LIMITS,
    watchers: tuple[str, ...] = (),
) -> Credentials:
    """
    A secmsg instance in C{directory} whose CA also issues a certificate for
    every client name, and whose policy lets them all in at an unbinding
    rate. C{known} are identities messages may be sent to while they are
    offline (the policy lists them). C{limits} are the settings added to
    the instance's (L{LIFTED_LIMITS} unless the caller lifts its own).
    C{watchers} hold the watcher role too, and so are told who comes and
    goes (C{PRESENCE}).

    The client certificates are made here, in process, not with
    C{secmsg pki issue} a thousand times; they are the same kind of
    certificate (ECDSA P-256, clientAuth, signed by the instance's CA).
    """
    config = create_instance(directory, datetime.now(UTC))
    instance = config.parent
    (instance / "policy.toml").write_text(
        POLICY.format(
            known="\n".join(
                [
                    *(f'{name} = ["user"]' for name in known),
                    *(f'{name} = ["user", "watcher"]' for name in watchers),
                ]
            )
        )
    )
    with config.open("a") as settings:
        settings.write(limits)
    clients = instance / "clients"
    now = datetime.now(UTC)
    with open_authority(instance) as authority:
        for name in names:
            issued = pki.issue(authority.signer(), name, now, days=2)
            install_file(
                clients / f"{name}.key", pki.private_pem(issued.key), private=True
            )
            install_file(
                clients / f"{name}.pem", pki.pem(issued.certificate), private=False
            )
    return Credentials(
        ca=instance / "ca.pem",
        crl=instance / "crl.pem",
        server_certificate=instance / "servers" / "localhost.pem",
        server_key=instance / "servers" / "localhost.key",
        clients=clients,
    )


def free_port() -> int:
    """
    A loopback port nothing listens on now, for a server that cannot be
    told to pick its own and say which.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{process.args[0]} did not start:\n{log.read_text()}")


class Server:
    """
    A server process: its port, its CPU time and memory, and its stop.
    """

    name = ""
    protocol = ""
    """What the client workers speak to it: secmsg, mqtt or tls."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def cpu_seconds(self) -> float:
        """
        CPU time the server has used, user and system, in seconds.
        """
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        """
        The server's resident memory in KiB, as the kernel counts it.
        """
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    def quiet(self, most: float = QUIET_TIMEOUT) -> float:
        """
        Wait until the server uses almost no CPU (what it does once at
        start, over a large store, would be charged to the load), at most
        C{most} seconds; return how long that took.
        """
        started = time.monotonic()
        while time.monotonic() - started < most:
            before = self.cpu_seconds()
            time.sleep(QUIET_PERIOD)
            if self.cpu_seconds() - before <= QUIET_SHARE * QUIET_PERIOD:
                break
        return round(time.monotonic() - started, 1)

    def stop(self) -> None:
        """
        SIGTERM, and SIGKILL if it has not stopped in half a minute.
        """
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @classmethod
    def launch(cls, command: list[Any], port: int, log: Path, **options: Any) -> Self:
        """
        Start a server's command with its output added to C{log} (a pipe
        nobody reads would stall it once full; a server started again, as
        the soak does, adds to what the one before it wrote), and wait
        until it listens on C{port}; stop it if it does not.
        """
        with log.open("ab") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, **options
            )
        try:
            _wait_for_port(process, port, log)
        except RuntimeError:
            process.kill()
            process.wait()
            raise
        return cls(process, port, log)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class SecmsgServer(Server):
    """
    The daemon, as C{twistd secmsg} runs it, on the bench instance, with
    this checkout's code unless C{code} names another's.
    """

    name = "secmsg"
    protocol = "secmsg"
    code: Path | None = None
    """Another checkout whose secmsg package the daemon runs (its
    PYTHONPATH and working directory), or L{None} for this one."""

    @classmethod
    def start(
        cls,
        credentials: Credentials,
        directory: Path,
        port: int | None = None,
        database: Path | None = None,
        flags: tuple[str, ...] = (),
    ) -> SecmsgServer:
        """
        Start the daemon on C{port} (a free one if L{None}), with its store
        in C{directory}: the soak starts it again on the same port and
        store after killing it. C{database}, if given, is copied in as the
        store before the daemon starts (a store filled beforehand).
        C{flags} are added to its command line (the cluster's
        C{--database}, C{--bus} and C{--node}).
        """
        log = directory / "secmsg.log"
        port = free_port() if port is None else port
        config = credentials.ca.parent / "secmsg.toml"
        data = directory / "data"
        if database is not None:
            data.mkdir(mode=0o700, exist_ok=True)
            shutil.copyfile(database, data / database.name)
        return cls.launch(
            [
                BIN / "twistd",
                "--nodaemon",
                "--pidfile=",
                "secmsg",
                "--config",
                config,
                "--interface",
                "127.0.0.1",
                "--port",
                str(port),
                # A store of its own: one left from an earlier scenario
                # would make this one's figures depend on the order.
                "--data-dir",
                data,
                *flags,
            ],
            port,
            log,
            **cls.running(),
        )

    @classmethod
    def running(cls) -> dict[str, Any]:
        """
        The options of a child process that is to run C{code}'s secmsg:
        ahead of this checkout's on the path, and from its directory.
        """
        if cls.code is None:
            return {}
        return {"env": {**os.environ, "PYTHONPATH": str(cls.code)}, "cwd": cls.code}

    @classmethod
    def version(cls) -> str:
        """
        The version of the secmsg this server runs, and where it is from
        when that is another checkout (with its commit, if it is a git
        checkout), so that the record shows which code was measured.
        """
        found = subprocess.run(
            [
                sys.executable,
                "-c",
                "import secmsg; print(secmsg.__version__, secmsg.__file__)",
            ],
            capture_output=True,
            text=True,
            check=True,
            **cls.running(),
        ).stdout.split()
        if cls.code is None:
            return found[0]
        commit = subprocess.run(
            ["git", "-C", cls.code, "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        where = Path(found[1]).parent.parent
        return f"{found[0]} ({where}{', ' + commit if commit else ''})"


def secmsg_from(tree: Path) -> type[SecmsgServer]:
    """
    The daemon of another checkout (an older commit's worktree), named
    for it in the results: C{secmsg (NAME)}.
    """

    class Other(SecmsgServer):
        name = f"secmsg ({tree.name})"
        code = tree.resolve()

    return Other


class MosquittoServer(Server):
    """
    Mosquitto 2 configured as an operator would run it beside secmsg:
    client certificates required and checked against the CRL, the
    certificate's CN as the username, an ACL, TCP_NODELAY (without it,
    Nagle's algorithm adds tens of milliseconds to every TLS 1.3 login),
    nothing persisted to disk, and no cap on the messages queued for a
    client, so that nothing is dropped while it is measured.
    """

    name = "mosquitto"
    protocol = "mqtt"

    @classmethod
    def start(cls, credentials: Credentials, directory: Path) -> MosquittoServer:
        port = free_port()
        acl = directory / "mosquitto.acl"
        acl.write_text(MOSQUITTO_ACL)
        config = directory / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    # The bench runs as root and its keys are 0600: without
                    # this, Mosquitto would drop to its own user and be
                    # unable to read them.
                    "user root",
                    "per_listener_settings false",
                    "allow_anonymous false",
                    "persistence false",
                    "set_tcp_nodelay true",
                    "max_queued_messages 0",
                    "max_queued_bytes 0",
                    f"acl_file {acl}",
                    f"listener {port} 127.0.0.1",
                    f"cafile {credentials.ca}",
                    f"certfile {credentials.server_certificate}",
                    f"keyfile {credentials.server_key}",
                    f"crlfile {credentials.crl}",
                    "require_certificate true",
                    "use_identity_as_username true",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "",
                ]
            )
        )
        log = directory / "mosquitto.log"
        return cls.launch(["mosquitto", "-c", config], port, log)

    @staticmethod
    def version() -> str:
        # mosquitto -h prints its version and exits with 3.
        usage = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True)
        return usage.stdout.splitlines()[0].split()[-1]


class OpensslServer(Server):
    """
    C{openssl s_server}: the handshake and nothing after it, in OpenSSL's
    C code, a serial reference for handshakes (it serves one connection at
    a time). Its stdin is a pipe kept open, since it stops at the end of
    its input.
    """

    name = "openssl s_server"
    protocol = "tls"

    @classmethod
    def start(cls, credentials: Credentials, directory: Path) -> OpensslServer:
        port = free_port()
        log = directory / "s_server.log"
        return cls.launch(
            [
                "openssl",
                "s_server",
                "-quiet",
                "-accept",
                f"127.0.0.1:{port}",
                "-cert",
                credentials.server_certificate,
                "-key",
                credentials.server_key,
                "-CAfile",
                credentials.ca,
                "-CRL",
                credentials.crl,
                "-crl_check",
                "-Verify",
                "1",
                "-no_ticket",
            ],
            port,
            log,
            stdin=subprocess.PIPE,
        )

    @staticmethod
    def version() -> str:
        return subprocess.run(
            ["openssl", "version"], capture_output=True, text=True, check=True
        ).stdout.split()[1]


class FloorServer(Server):
    """
    Twisted and pyOpenSSL with no secmsg code (L{bench.floor}): what a
    session costs before secmsg does anything with it.
    """

    name = "Twisted + pyOpenSSL"
    protocol = "secmsg"

    @classmethod
    def start(cls, credentials: Credentials, directory: Path) -> FloorServer:
        port = free_port()
        log = directory / "floor.log"
        return cls.launch(
            [
                sys.executable,
                "-m",
                "bench.floor",
                credentials.ca,
                credentials.crl,
                credentials.server_certificate,
                credentials.server_key,
                str(port),
            ],
            port,
            log,
            cwd=Path(__file__).parent.parent,
        )
