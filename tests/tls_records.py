"""
TLS records on the wire, for tests that hold some of a peer's bytes back.
"""

from __future__ import annotations

CHANGE_CIPHER_SPEC = 0x14
"""The content type of a ChangeCipherSpec record, which a client sends just
before its Finished under TLS 1.2, and before its last flight under TLS 1.3
(for middleboxes)."""

_HEADER = 5
"""A record's header: content type, protocol version, length of two bytes."""


def split_records(data: bytes) -> list[bytes]:
    """
    Cut a stream of whole TLS records into its records, headers included.

    @raise ValueError: C{data} ends inside a record.
    """
    records = []
    while data:
        if len(data) < _HEADER:
            raise ValueError("a partial record header")
        length = _HEADER + int.from_bytes(data[3:5], "big")
        if len(data) < length:
            raise ValueError("a partial record")
        records.append(data[:length])
        data = data[length:]
    return records
