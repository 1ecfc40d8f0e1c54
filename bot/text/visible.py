"""Text a person reads on a screen: control characters shown as □ instead of vanishing or breaking.

The tiny demo model (random weights) emits arbitrary token text, control characters included; an
outbox or a console page shows each one as □ (U+25A1) so that it is seen, never interpreted.
"""

from __future__ import annotations

import re

MARK = "□"
# C0 controls but tab, line feed and carriage return; DEL; C1 controls; lone surrogates;
# the noncharacters U+FFFE/U+FFFF.
_UNSEEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def visible(text: str) -> str:
    """`text` with each control character (bar tab and line breaks) replaced by □."""
    return _UNSEEN.sub(MARK, text)
