"""XML-safe text: remove the characters XML 1.0 cannot carry."""

from __future__ import annotations

import re

__all__ = ["clean_xml_text"]

_XML_ILLEGAL = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean_xml_text(text: str) -> str:
    """Remove characters XML 1.0 forbids (controls but tab/LF/CR, lone surrogates, U+FFFE/FFFF)."""
    return _XML_ILLEGAL.sub("", text)
