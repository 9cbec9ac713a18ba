"""
The few MQTT 3.1.1 packets the benchmark needs to drive Mosquitto the way
it drives secmsg: CONNECT, SUBSCRIBE, PUBLISH (QoS 0 and 1) and
DISCONNECT out; CONNACK, SUBACK, PUBLISH and PUBACK in.

Only what a benchmark client sends and receives is here: no will, no
username or password (the broker takes the identity from the client
certificate), no QoS 2, no retained messages. The layout of each packet is
that of the MQTT 3.1.1 standard (OASIS, 2014), section 3.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
DISCONNECT = 14

_MAX_REMAINING = 268_435_455
"""The largest remaining length four bytes of it can say (3.1.1, 2.2.3)."""


class ProtocolError(Exception):
    """
    The broker sent something that is not MQTT 3.1.1 as this client knows it.
    """


@dataclass(frozen=True)
class Packet:
    """
    A packet received: its type, the flags of its first byte, and the rest
    (the variable header and the payload) as bytes.
    """

    kind: int
    flags: int
    body: bytes


def remaining_length(length: int) -> bytes:
    """
    The variable-length integer of the fixed header: seven bits a byte,
    least significant first, the top bit saying that more follow.
    """
    if not 0 <= length <= _MAX_REMAINING:
        raise ValueError(f"an MQTT packet cannot be {length} bytes long")
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def _string(text: str) -> bytes:
    """
    A UTF-8 string with its two-byte length in front.
    """
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + remaining_length(len(body)) + body


def connect(client_id: str, *, clean_session: bool, keep_alive: int = 0) -> bytes:
    """
    CONNECT as protocol level 4 (3.1.1). A session that is not clean keeps
    its subscriptions and queues QoS 1 messages while the client is away,
    which is how MQTT holds messages for an offline identity.
    """
    flags = 0x02 if clean_session else 0x00
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keep_alive)
    return _packet(CONNECT, 0, body + _string(client_id))


def subscribe(packet_id: int, topic_filter: str, qos: int) -> bytes:
    """
    SUBSCRIBE to one topic filter; the flags 0b0010 are required.
    """
    body = struct.pack("!H", packet_id) + _string(topic_filter) + bytes([qos])
    return _packet(SUBSCRIBE, 0b0010, body)


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    """
    PUBLISH at QoS 0 (no packet id, no answer) or QoS 1 (answered with
    PUBACK for its packet id).
    """
    if qos not in (0, 1):
        raise ValueError(f"QoS {qos} is not supported here")
    header = _string(topic) + (struct.pack("!H", packet_id) if qos else b"")
    return _packet(PUBLISH, qos << 1, header + payload)


def puback(packet_id: int) -> bytes:
    """
    PUBACK: the client has the QoS 1 message with this packet id.
    """
    return _packet(PUBACK, 0, struct.pack("!H", packet_id))


def disconnect() -> bytes:
    return _packet(DISCONNECT, 0, b"")


def publish_parts(packet: Packet) -> tuple[str, int, bytes]:
    """
    The topic, packet id (0 at QoS 0) and payload of a PUBLISH received.
    """
    (topic_length,) = struct.unpack_from("!H", packet.body)
    topic = packet.body[2 : 2 + topic_length].decode()
    offset = 2 + topic_length
    packet_id = 0
    if (packet.flags >> 1) & 0b11:
        (packet_id,) = struct.unpack_from("!H", packet.body, offset)
        offset += 2
    return topic, packet_id, packet.body[offset:]


def packet_id_of(packet: Packet) -> int:
    """
    The packet id that a PUBACK or SUBACK answers.
    """
    return struct.unpack_from("!H", packet.body)[0]


class Decoder:
    """
    Splits a byte stream from the broker into packets, however the stream
    was cut into reads.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Packet]:
        """
        Take more bytes; yield every packet that is now whole.

        @raise ProtocolError: a remaining length longer than four bytes.
        """
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= 2:
            first = buffer[start]
            length = 0
            shift = 0
            position = start + 1
            while True:
                if position >= len(buffer):
                    del buffer[:start]
                    return
                digit = buffer[position]
                length |= (digit & 0x7F) << shift
                position += 1
                if not digit & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise ProtocolError("remaining length longer than four bytes")
            end = position + length
            if end > len(buffer):
                break
            yield Packet(first >> 4, first & 0x0F, bytes(buffer[position:end]))
            start = end
        del buffer[:start]
