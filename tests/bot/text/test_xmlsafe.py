"""bot.text.xmlsafe: text cleaned of the characters XML 1.0 cannot carry."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from bot.text.xmlsafe import clean_xml_text


def test_clean_xml_text_removes_illegal_characters() -> None:
    dirty = "a\x00b\x08c\x0bd\x1fe\ud800f\udfffg\ufffeh\uffffi"
    assert clean_xml_text(dirty) == "abcdefghi"


def test_clean_xml_text_keeps_legal_characters() -> None:
    legal = "tab\tnl\ncr\r 中文 😀 \ue000 \U0010fffd ]]> <&>"
    assert clean_xml_text(legal) == legal


def test_clean_xml_text_output_parses() -> None:
    rng = random.Random(5)
    for _ in range(200):
        text = "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(50))
        cleaned = clean_xml_text(text)
        root = ET.fromstring(f"<a>{escape(cleaned)}</a>".encode("utf-8", "surrogatepass"))
        assert root.tag == "a"
