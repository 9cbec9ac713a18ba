"""
The record splitter that tests holding back part of a flight share.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.tls_records import (
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    content_type,
    split_records,
)


def record(kind: int, body: bytes) -> bytes:
    return bytes([kind, 3, 3]) + len(body).to_bytes(2, "big") + body


class SplitRecordsTests(SynchronousTestCase):
    def test_each_record_whole_and_in_order(self) -> None:
        """
        A stream of records comes apart at each header, every record with
        its header; an empty stream holds none.
        """
        records = [record(CHANGE_CIPHER_SPEC, b"\x01"), record(APPLICATION_DATA, b"")]
        self.assertEqual(split_records(b"".join(records)), records)
        self.assertEqual(
            [content_type(r) for r in records], [CHANGE_CIPHER_SPEC, APPLICATION_DATA]
        )
        self.assertEqual(split_records(b""), [])

    def test_a_stream_cut_inside_a_record_is_refused(self) -> None:
        """
        Bytes that end inside a header or a body are not taken for whole
        records.
        """
        whole = record(APPLICATION_DATA, b"finished")
        for cut in (whole[:3], whole[:-1]):
            with self.assertRaises(ValueError):
                split_records(whole + cut)
