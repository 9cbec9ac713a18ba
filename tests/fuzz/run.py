"""
Run one fuzz target under atheris: C{python -m tests.fuzz.run NAME
[libFuzzer flags] CORPUS...}, as C{make fuzz} does.

secmsg's modules are imported under atheris's instrumentation so that the
search is guided by the coverage of secmsg's own code.  An input that
breaks a property is written where C{-artifact_prefix} says (C{make fuzz}
gives .fuzz/crashes/, which git ignores); docs/fuzzing.md says how it
becomes a corpus entry.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["secmsg", "tests.fuzz"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    """
    Fuzz the target named first on the command line.
    """
    name, *arguments = sys.argv[1:]
    if name not in TARGETS:
        sys.exit(f"unknown fuzz target {name}; known: {', '.join(TARGETS)}")
    atheris.Setup([sys.argv[0], *arguments], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
