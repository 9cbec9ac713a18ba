"""
Structured values read off a fuzzer's bytes, without atheris.

A target that builds a certificate or a policy from fuzzed parts needs
choices, small numbers and strings out of one byte string.  This reader
does what atheris's FuzzedDataProvider does for that, but is ours: the
corpus tests run the targets where atheris is not installed, and an input
then means the same thing whichever runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Fields:
    """
    Consume an input from the front: a byte for a choice or a length, then
    that many bytes for a string.  Once the input is used up every read
    gives the smallest answer, so any input is a valid one.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def byte(self) -> int:
        """
        The next byte, or 0 at the end.
        """
        if self._at >= len(self._data):
            return 0
        self._at += 1
        return self._data[self._at - 1]

    def pick(self, choices: Sequence[T]) -> T:
        """
        One of C{choices}, by the next byte.
        """
        return choices[self.byte() % len(choices)]

    def blob(self, longest: int = 255) -> bytes:
        """
        Up to C{longest} bytes, their count given by the next byte (two
        bytes when C{longest} is over 255).
        """
        length = self.byte()
        if longest > 255:
            length = length << 8 | self.byte()
        length = min(length, longest)
        piece = self._data[self._at : self._at + length]
        self._at += len(piece)
        return piece

    def text(self, longest: int = 255) -> str:
        """
        A string from up to C{longest} bytes: UTF-8 if they are, else each
        byte as the Latin-1 character, so that every code point below 256
        (C1 controls included) is as reachable as any other.
        """
        raw = self.blob(longest)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def rest(self) -> bytes:
        """
        Whatever is left of the input.
        """
        piece = self._data[self._at :]
        self._at = len(self._data)
        return piece
