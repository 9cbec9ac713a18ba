"""
Every scenario against secmsg and Mosquitto (and handshakes against
C{openssl s_server}; the blank-line flood against secmsg alone), in one
run on this machine, with the results as JSON and as the generated part
of docs/benchmarks.md.

    .venv/bin/python -m bench.run [--json PATH] [--markdown PATH]
        [--plot PATH] [--only SCENARIO ...] [--smoke] [--compare TREE]

C{make bench} installs what this needs (Mosquitto from Debian's packages,
matplotlib for the plot) and runs it with the defaults: about nine minutes.
--smoke runs each scenario for a second with a handful of sessions, to
check that the benchmark works, not to measure anything. --only runs the
scenarios named, as `--only flood`; with --markdown, the generated part
then holds only theirs. --compare TREE runs the daemon of another checkout
(a worktree of an older commit) beside this one's in every scenario, each
in turn, so that every figure of secmsg shows the code before a change
beside the code after it, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import ssl
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from bench import report
from bench.filled import FilledBench
from bench.servers import (
    FloorServer,
    MosquittoServer,
    OpensslServer,
    SecmsgServer,
    secmsg_from,
)
from bench.suite import Settings
from secmsg.daemon.limits import raise_open_file_limit

SCENARIOS = (
    "handshakes",
    "direct",
    "rooms",
    "room-steady",
    "broadcast",
    "history",
    "idle",
    "durable",
    "flood",
)

SMOKE = Settings(
    workers=2,
    warmup=0.3,
    seconds=1.0,
    pairs=2,
    in_flight=20,
    room_in_flight=5,
    loads=(200,),
    steady=200,
    members=(4,),
    idle=(20, 40),
    handshake_concurrency=2,
    tls_versions=("1.3",),
    settle=0.5,
    flooders=2,
    login_every=0.25,
    flood_target_ms=None,
    room_steady_members=4,
    room_steady_rate=50.0,
    known=200,
    online=2,
    stored=2000,
    unacknowledged=100,
    acks=50,
)
"""Tiny counts and a one-second window: whether every scenario works."""


def machine() -> dict[str, Any]:
    """
    What the figures were measured on.
    """
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "system": platform.platform(),
    }


def versions(secmsgs: tuple[type[SecmsgServer], ...]) -> dict[str, str]:
    """
    The versions of everything measured and of what measures it.
    """
    return {
        **{server.name: server.version() for server in secmsgs},
        "mosquitto": MosquittoServer.version(),
        "openssl": OpensslServer.version(),
        "python": sys.version.split()[0],
        "OpenSSL of the clients": ssl.OPENSSL_VERSION.split()[1],
        "OpenSSL of pyOpenSSL": SSL.OpenSSL_version(SSL.OPENSSL_VERSION)
        .decode()
        .split()[1],
        **{name: metadata.version(name) for name in ("twisted", "pyOpenSSL")},
    }


def run(
    settings: Settings,
    scenarios: list[str],
    directory: Path,
    secmsgs: tuple[type[SecmsgServer], ...],
) -> dict[str, Any]:
    """
    The chosen scenarios, each against each of its servers, in turn: the
    secmsg daemons (another checkout's first, when compared), then
    Mosquitto.
    """
    bench = FilledBench(directory, settings)
    peers = (*secmsgs, MosquittoServer)
    results: dict[str, Any] = {}
    if "handshakes" in scenarios:
        results["handshakes"] = {
            tls: {
                server.name: bench.handshakes(server, tls)
                for server in (*peers, OpensslServer, FloorServer)
            }
            for tls in settings.tls_versions
        }
    if "direct" in scenarios:
        results["direct"] = {server.name: bench.direct(server) for server in peers}
    if "rooms" in scenarios:
        results["rooms"] = {
            str(members): {server.name: bench.room(server, members) for server in peers}
            for members in settings.members
        }
    if "room-steady" in scenarios:
        results["room-steady"] = {
            server.name: bench.room(
                server, settings.room_steady_members, settings.room_steady_rate
            )
            for server in peers
        }
    if "broadcast" in scenarios:
        results["broadcast"] = {
            server.name: bench.broadcast(server) for server in peers
        }
    if "history" in scenarios:
        # Mosquitto keeps no history to fill.
        results["history"] = {server.name: bench.history(server) for server in secmsgs}
    if "idle" in scenarios:
        results["idle"] = {server.name: bench.idle(server) for server in peers}
    if "durable" in scenarios:
        results["durable"] = {server.name: bench.durable(server) for server in peers}
    if "flood" in scenarios:
        # Mosquitto has no lines to flood it with: MQTT's packets carry
        # their length.
        results["flood"] = {server.name: bench.flood(server) for server in secmsgs}
    return results


def main(arguments: list[str] | None = None) -> None:
    """
    Run the benchmark as the command line asks, and write its results.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--markdown", type=Path, help="rewrite the generated part of this file"
    )
    parser.add_argument("--plot", type=Path, help="latency against load, as PNG")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        default=SCENARIOS,
        help="run only these scenarios",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a second per scenario, tiny counts"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="TREE",
        help="also run the daemon of this checkout, beside this one's",
    )
    options = parser.parse_args(arguments)
    if shutil.which("mosquitto") is None:
        parser.exit(
            1,
            "mosquitto is not installed: `make bench` installs it "
            "(apt-get install mosquitto)\n",
        )
    raise_open_file_limit(65536)
    settings = SMOKE if options.smoke else Settings()
    secmsgs: tuple[type[SecmsgServer], ...] = (SecmsgServer,)
    if options.compare:
        if not (options.compare / "secmsg" / "__init__.py").exists():
            parser.exit(1, f"{options.compare} holds no secmsg checkout\n")
        secmsgs = (secmsg_from(options.compare), SecmsgServer)
    document = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(secmsgs),
        "parameters": settings.__dict__,
    }
    with tempfile.TemporaryDirectory(prefix="secmsg-bench-") as scratch:
        document["results"] = run(settings, list(options.only), Path(scratch), secmsgs)
    if options.json:
        options.json.write_text(json.dumps(document, indent=1) + "\n")
    for warning in report.all_warnings(document["results"]):
        print(f"warning: {warning}", file=sys.stderr)
    if options.plot and "direct" in document["results"]:
        report.plot(document, options.plot)
    summary = report.markdown(document, options.plot)
    if options.markdown:
        report.replace_generated(options.markdown, summary)
    else:
        print(summary)


if __name__ == "__main__":
    main()
