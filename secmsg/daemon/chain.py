"""
The audit trail's chain: how each record is linked to the one before it,
the key that makes the links unforgeable, and the verification of a trail.

A keyed record ends in C{"key"} (the key's id) and C{"mac"}: the
HMAC-SHA256, under the key in the data directory, of the record as it
reads without its C{mac}, which includes C{prev}, the C{mac} of the
record before.  So editing any record, the last one too, or rewriting a
tail and its links, fails without the key.  Records written before the
key existed carry only C{prev}, the plain SHA-256 of the line before; a
trail upgraded at a restart goes on from its last such line, and the
verifier tells each record's kind by whether it has a C{mac}.  What no
chain shows, a cut tail, is seen against a head (L{Head}) logged
elsewhere.  docs/audit.md describes the format.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secmsg.errors import ConfigurationError

KEY_NAME = "audit.key"
"""The audit key's name in the data directory, next to the trail."""

KEY_BYTES = 32
"""The key's length: 32 random bytes, as many as SHA-256's block needs."""

GENESIS = "0" * 64
"""The C{prev} of the first record of a new trail."""

_MAC_TAIL = re.compile(rb',"mac":"([0-9a-f]{64})"\}\Z')

_RECORD_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
"""How a record is written: made once, since json.dumps with these options
builds an encoder for every record, a fifth of what sealing one costs."""


@dataclass(frozen=True)
class ChainKey:
    """
    The secret the daemon links its records with.

    @ivar secret: the key's bytes, never shown (not even in a repr).
    """

    secret: bytes = field(repr=False)

    @functools.cached_property
    def id(self) -> str:
        """
        What a record names its key by: the start of the key's SHA-256,
        which tells keys apart without revealing them.
        """
        return hashlib.sha256(self.secret).hexdigest()[:16]

    def mac(self, body: bytes) -> str:
        """
        The HMAC-SHA256 of a record's C{body}, in hex.
        """
        return hmac.new(self.secret, body, hashlib.sha256).hexdigest()


def load_key(path: Path) -> ChainKey:
    """
    The key in C{path}.

    @raise ConfigurationError: it cannot be read, is readable or writable
        by others than its owner, or is not 32 bytes.
    """
    try:
        with path.open("rb") as file:
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            secret = file.read()
    except OSError as failure:
        raise ConfigurationError(
            str(path), f"cannot read: {failure.strerror}"
        ) from None
    if mode & 0o077:
        raise ConfigurationError(
            str(path),
            f"the audit key is open to others (mode {mode:04o}); "
            f"it must be 0600: chmod 600 {path}",
        )
    if len(secret) != KEY_BYTES:
        raise ConfigurationError(
            str(path),
            f"not an audit key ({len(secret)} bytes, {KEY_BYTES} expected)",
        )
    return ChainKey(secret)


def create_key(path: Path) -> ChainKey:
    """
    A new random key, written to C{path} (0600) whole or not at all, and
    never over a key that is there.

    @raise FileExistsError: there is a key at C{path} already.
    """
    secret = secrets.token_bytes(KEY_BYTES)
    descriptor, staging = tempfile.mkstemp(prefix=".audit-key-", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(secret)
            file.flush()
            os.fsync(file.fileno())
        os.link(staging, path)
    finally:
        os.unlink(staging)
    return ChainKey(secret)


def seal(record: dict[str, Any], previous: str, key: ChainKey) -> bytes:
    """
    A record as its keyed line: C{prev}, C{key} and C{mac} added last, the
    C{mac} over everything before it.
    """
    sealed = {**record, "prev": previous, "key": key.id}
    body = _RECORD_JSON.encode(sealed).encode()
    return body[:-1] + b',"mac":"' + key.mac(body).encode() + b'"}'


def link(line: bytes) -> str:
    """
    What the record after C{line} names as its C{prev}: a keyed record's
    C{mac}, or else the SHA-256 of the line (an unkeyed record, or a
    fragment a crash left).
    """
    found = _MAC_TAIL.search(line)
    if found is not None:
        return found.group(1).decode()
    return hashlib.sha256(line).hexdigest()


def _body(line: bytes) -> bytes | None:
    """
    What a keyed line's C{mac} covers, or L{None} if it has none.
    """
    found = _MAC_TAIL.search(line)
    return None if found is None else line[: found.start()] + b"}"


def parse_record(line: bytes) -> dict[str, Any] | None:
    """
    A line as an audit record, or L{None} if it is not a whole one.
    """
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("prev"), str)
        or not isinstance(record.get("seq"), int)
    ):
        return None
    return record


@dataclass(frozen=True)
class Head:
    """
    The last record of a trail, as the daemon logs it: its number and its
    link.  A trail that no longer reaches a head logged earlier has lost
    its end.
    """

    seq: int
    link: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.link}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """
        A head as logged, C{SEQ:HASH}.

        @raise ValueError: it is not one.
        """
        seq, _, value = text.partition(":")
        if not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError(f"not a head (SEQ:HASH, as the daemon logs it): {text}")
        return cls(int(seq), value)


@dataclass(frozen=True)
class Break:
    """
    Where a chain is broken.

    @ivar where: the file and line number of the first record that does not
        hold.
    @ivar problem: what is wrong with it, in words.
    @ivar seq: its number, if it is a whole record.
    """

    where: str
    problem: str
    seq: int | None = None


@dataclass(frozen=True)
class Verdict:
    """
    What L{verify_chain} found.

    @ivar records: how many lines were read.
    @ivar anchored: whether the first record starts a new trail; if not,
        it continues one in a file that was not given.
    @ivar breaks: every place where the chain does not hold, first first.
    @ivar keyed: how many records carry a MAC.
    @ivar unchecked: where the first keyed record is whose MAC was not
        checked for want of a key, if any was not.
    @ivar key_ids: the ids of the keys records name, in order of first use.
    @ivar head: the last whole record's, if there is one.
    @ivar first_seq: the first whole record's number.
    @ivar at_expected: the link of the record numbered as the head that
        was expected, if there is one.
    """

    records: int
    anchored: bool
    breaks: tuple[Break, ...]
    keyed: int = 0
    unchecked: str | None = None
    key_ids: tuple[str, ...] = ()
    head: Head | None = None
    first_seq: int | None = None
    at_expected: str | None = None

    @property
    def broken(self) -> Break | None:
        """
        The first break, or L{None} if the chain is intact.
        """
        return self.breaks[0] if self.breaks else None


class _Checker:
    """
    Follows a trail line by line, noting each break, for L{verify_chain}.
    """

    def __init__(self, key: ChainKey | None, expected: Head | None) -> None:
        self.key = key
        self.expected = expected
        self.at_expected: str | None = None
        self.breaks: list[Break] = []
        self.previous: bytes | None = None
        self.last: dict[str, Any] | None = None
        self.first: dict[str, Any] | None = None
        self.head: Head | None = None
        self.keyed = 0
        self.unchecked: str | None = None
        self.key_ids: list[str] = []

    def check(self, where: str, line: bytes) -> None:
        record = parse_record(line)
        problem = (
            "not a whole audit record (a write cut short, or edited)"
            if record is None
            else self._problem(where, line, record)
        )
        if problem is not None:
            seq = None if record is None else record["seq"]
            self.breaks.append(Break(where, problem, seq))
        if record is not None:
            self.first = self.first or record
            self.last = record
            self.head = Head(record["seq"], link(line))
            if self.expected is not None and record["seq"] == self.expected.seq:
                self.at_expected = self.at_expected or self.head.link
        self.previous = line

    def _problem(self, where: str, line: bytes, record: dict[str, Any]) -> str | None:
        body = _body(line)
        if body is not None:
            mac_problem = self._mac_problem(where, body, record)
            if mac_problem is not None:
                return mac_problem
        elif self.last is not None and "mac" in self.last:
            return "an unkeyed record after keyed ones (the daemon never goes back)"
        if self.previous is not None and record["prev"] != link(self.previous):
            return (
                "does not follow the line before it (edited, inserted, or "
                "a record before it removed)"
            )
        if self.last is not None and record["seq"] != self.last["seq"] + 1:
            return (
                f"numbered {record['seq']} after {self.last['seq']}: "
                "records in between were never written"
            )
        return None

    def _mac_problem(
        self, where: str, body: bytes, record: dict[str, Any]
    ) -> str | None:
        self.keyed += 1
        key_id = record.get("key")
        if key_id not in self.key_ids:
            self.key_ids.append(str(key_id))
        if self.key is None:
            self.unchecked = self.unchecked or where
            return None
        if key_id != self.key.id:
            return f"made with another key (id {key_id}) than the one given"
        if not hmac.compare_digest(record.get("mac", ""), self.key.mac(body)):
            return "its MAC does not match: the record was changed"
        return None


def verify_chain(
    lines: Iterable[tuple[str, bytes]],
    key: ChainKey | None = None,
    expected: Head | None = None,
) -> Verdict:
    """
    Check that each record names the link of the line before it, carries
    the next number and, if it is keyed, a MAC that C{key} makes of it; go
    on past a break to find the others.

    @param lines: C{(where, line)} for each line, oldest first, across as
        many files as given (rotated ones first).
    @param key: the trail's key; without it, the keyed records' MACs are
        not checked, and L{Verdict.unchecked} says so.
    @param expected: a head logged earlier, whose record
        L{Verdict.at_expected} then gives.
    """
    checker = _Checker(key, expected)
    count = 0
    for where, line in lines:
        count += 1
        checker.check(where, line)
    first = checker.first
    return Verdict(
        records=count,
        anchored=first is not None and first["prev"] == GENESIS,
        breaks=tuple(checker.breaks),
        keyed=checker.keyed,
        unchecked=checker.unchecked,
        key_ids=tuple(checker.key_ids),
        head=checker.head,
        first_seq=None if first is None else first["seq"],
        at_expected=checker.at_expected,
    )


def numbered_lines(paths: Iterable[Path]) -> Iterator[tuple[str, bytes]]:
    """
    The lines of the files, in order, each with C{file:line} to name it.
    """
    for path in paths:
        with path.open("rb") as file:
            for number, line in enumerate(file, start=1):
                yield f"{path}:{number}", line.rstrip(b"\n")
