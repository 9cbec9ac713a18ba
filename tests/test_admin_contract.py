"""
The admin interface against its contract, docs/openapi.json: what the
document says a request may hold is what the daemon takes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.errors import Malformed

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def _document() -> dict[str, Any]:
    return json.loads(OPENAPI.read_text())


def _resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """
    C{schema}, or the component it refers to.
    """
    while "$ref" in schema:
        *_, kind, name = schema["$ref"].split("/")
        schema = document["components"][kind][name]
    return schema


def _pattern(document: dict[str, Any], request: str, field: str) -> re.Pattern[str]:
    """
    The pattern the document gives a request's field; one that matches
    anything if it gives none.
    """
    properties = document["components"]["schemas"][request]["properties"]
    return re.compile(_resolved(document, properties[field]).get("pattern", ""))


def _refused_by_the_daemon(character: str) -> bool:
    try:
        wire.decode_line(character.encode())
    except Malformed:
        return True
    return False


EVERY_CHARACTER = "".join(
    chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code <= 0xDFFF
)
"""Every code point UTF-8 can carry: the surrogates cannot."""


class TextContractTests(SynchronousTestCase):
    """
    The text fields of the document hold the characters the daemon relays,
    and only those: a client that follows the contract is not refused 400,
    and one the contract tells it is wrong is.
    """

    def test_text_fields_forbid_exactly_what_the_daemon_refuses(self) -> None:
        """
        Guards the contract against drifting from the line protocol's rule:
        a character is outside every text field's pattern exactly when
        decode_line refuses it.
        """
        document = _document()
        refused = {c for c in EVERY_CHARACTER if _refused_by_the_daemon(c)}
        for request, field in (
            ("TextRequest", "text"),
            ("MessageRequest", "text"),
            ("KickRequest", "reason"),
        ):
            pattern = _pattern(document, request, field)
            outside = {c for c in EVERY_CHARACTER if not pattern.search(f"a{c}a")}
            self.assertEqual(outside, refused, (request, field))

    def test_text_of_spaces_and_tabs_is_outside_the_contract(self) -> None:
        """
        Guards the rule that a text to relay holds more than blanks, which
        the daemon answers with 400, while a kick's reason may be empty.
        """
        document = _document()
        text = _pattern(document, "TextRequest", "text")
        self.assertEqual(
            [bool(text.search(t)) for t in ("", " \t ", " hi\t", "hé")],
            [False, False, True, True],
        )
        self.assertTrue(_pattern(document, "KickRequest", "reason").search(""))


class BodyContractTests(SynchronousTestCase):
    def test_every_post_requires_its_json_body(self) -> None:
        """
        Guards the contract against inviting a bodiless POST: the daemon
        answers a POST without Content-Type: application/json with 415, so
        a document that calls a body optional tells a client to send what
        is refused.
        """
        document = _document()
        optional = [
            path
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
            if method == "post" and not operation["requestBody"].get("required")
        ]
        self.assertEqual(optional, [])
