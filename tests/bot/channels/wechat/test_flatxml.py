"""WeChat's flat XML read in one expat pass: text children, and what is refused."""

from __future__ import annotations

from xml.parsers.expat import ExpatError

import pytest

from bot.channels.wechat import flatxml
from bot.channels.wechat.flatxml import NOT_TEXT


@pytest.mark.parametrize(
    ("xml", "fields"),
    [
        ("<xml><A><![CDATA[a b]]></A><B>2</B></xml>", {"A": "a b", "B": "2"}),
        ("<xml><A>  padded \n</A><E></E><F/></xml>", {"A": "padded", "E": None, "F": None}),
        ("<xml><A>x &amp; y &lt;z&gt;</A></xml>", {"A": "x & y <z>"}),
        ("<xml><A><B>nested</B></A></xml>", {"A": NOT_TEXT}),
        ("<xml><A>1</A><A>2</A></xml>", {"A": NOT_TEXT}),  # repeated
        ('<xml><A k="v">1</A></xml>', {"A": NOT_TEXT}),  # attributes
        ("<xml><A>中文</A><!-- a comment --></xml>", {"A": "中文"}),
    ],
)
def test_reads_the_roots_text_children(xml: str, fields: dict) -> None:
    assert flatxml.read(xml) == fields


@pytest.mark.parametrize(
    ("xml", "error"),
    [
        ("<xml><A>1</A>", ExpatError),  # malformed
        ("<root><A>1</A></root>", LookupError),
        ("<xml></xml>", LookupError),
        ("<xml>just text</xml>", LookupError),
        ("<xml>" + "<a>" * 9 + "</a>" * 9 + "</xml>", ValueError),  # deeper than 8
        ('<!DOCTYPE x [<!ENTITY e "boom">]><xml><A>&e;</A></xml>', ValueError),
        ("<xml><A>" + "x" * (flatxml.MAX_CHARS + 1) + "</A></xml>", ValueError),
        ("<xml><A>\ud800</A></xml>", ValueError),  # a lone surrogate cannot be UTF-8
    ],
)
def test_refuses_what_wechat_never_sends(xml: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        flatxml.read(xml)
