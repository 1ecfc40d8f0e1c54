"""Untrusted bodies: deep, huge or malformed JSON and XML are ValueErrors, fast, never a crash."""

from __future__ import annotations

import time

import pytest

from bot.channels.untrusted import check_xml, load_json


def nested(levels: int) -> list:
    """`levels` lists, each inside the next."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


HOSTILE_JSON = [
    "[" * 30_000,
    "{" + '"a":{' * 20_000,
    "[" * 33 + "]" * 33,
    '"' + '\\"' * 30_000,  # an unterminated string of escapes: the scan stays linear
    "1" * 5000,
    "-" + "1" * 41,
    "1e999",
    "[NaN]",
    "[-Infinity]",
    "",
    "not json",
    b"\xff\xfe",
    "x" * (1 << 20 + 1),
    '["\\ud800"]',  # a lone surrogate: no UTF-8 can hold it (Redis, hashing) -> refused here
    '{"\\udc00": 1}',
]


@pytest.mark.parametrize("text", HOSTILE_JSON, ids=lambda t: repr(t[:12]))
def test_hostile_json_is_a_value_error_in_milliseconds(text: str | bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(ValueError):
        load_json(text)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": [1, 2.5, "[[[[", {"b": null}]}', {"a": [1, 2.5, "[[[[", {"b": None}]}),
        ("[" * 32 + "]" * 32, nested(32)),  # the deepest allowed
        ('"\\u4f60\\u597d"', "你好"),
        ('"\\ud83d\\ude00"', "😀"),  # a surrogate pair is one character
        (b'{"n": 12345678901234567890}', {"n": 12345678901234567890}),
    ],
)
def test_ordinary_json_loads(text: str | bytes, expected: object) -> None:
    assert load_json(text) == expected


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<xml><Content><![CDATA[<a><b><c><d><e><f><g><h><i>]]></Content></xml>", True),
        ("<xml><!-- <a><b><c><d><e><f><g><h><i> --></xml>", True),
        ('<?xml version="1.0"?><xml><a/><b/><c></c></xml>', True),
        ("<xml>" + "<a>" * 30_000 + "</a>" * 30_000 + "</xml>", False),
        ("<a>" * 9, False),
        ("<![CDATA[" * 7000, True),  # unterminated sections: linear scan, expat refuses later
        ("x" * (1 << 20 + 1), False),
    ],
)
def test_xml_depth_and_size(text: str, ok: bool) -> None:
    started = time.perf_counter()
    if ok:
        check_xml(text, max_depth=8)
    else:
        with pytest.raises(ValueError):
            check_xml(text, max_depth=8)
    assert time.perf_counter() - started < 0.5
