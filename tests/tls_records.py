"""
TLS records as they cross the wire, for tests that hold some of them back.

A test that drives a handshake itself (Python's C{ssl.MemoryBIO}, or the
bytes an C{iosim} pump moves) gets a client's whole flight in one piece;
to park the client's Finished, it cuts that flight into records and sends
all but the last.  Every record starts with a 5-byte header: its content
type, the protocol version (two bytes) and the length of what follows (two
bytes, big-endian).  Under TLS 1.3 everything after the client's
ChangeCipherSpec is encrypted and typed application data, so the last
record of the client's second flight is its Finished whatever it holds;
under TLS 1.2 the Finished is the handshake record after ChangeCipherSpec.
"""

from __future__ import annotations

HEADER_LENGTH = 5

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23


def split_records(data: bytes) -> list[bytes]:
    """
    Cut a stream of whole TLS records into its records, each with its
    header, in order.

    @raise ValueError: C{data} ends inside a record, so it is not what a
        flight was taken to be.
    """
    records = []
    offset = 0
    while offset < len(data):
        header = data[offset : offset + HEADER_LENGTH]
        if len(header) < HEADER_LENGTH:
            raise ValueError(f"{len(header)} bytes of a record header at {offset}")
        end = offset + HEADER_LENGTH + int.from_bytes(header[3:5], "big")
        if end > len(data):
            raise ValueError(f"a record at {offset} runs {end - len(data)} bytes past")
        records.append(data[offset:end])
        offset = end
    return records


def content_type(record: bytes) -> int:
    """
    The content type of a record (L{HANDSHAKE}, L{APPLICATION_DATA}...).
    """
    return record[0]
