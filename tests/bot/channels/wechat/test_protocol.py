"""Protocol tests: official vectors, safe mode both ways, parsing and reply rendering."""

from __future__ import annotations

import time
import xml.dom.minidom

import pytest

from bot.channels.wechat.protocol import (
    ProtocolError,
    WeChatCodec,
    cdata,
    message_xml,
    parse_message,
    read_reply,
    render_text_reply,
    sign,
    sign_request,
    sign_url_check,
)

TOKEN, APP_ID = "mimochattest", "wx00112233445566ff"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

# Tencent's published WXBizMsgCrypt sample (same AES scheme for WeChat and WeCom).
SAMPLE_TOKEN, SAMPLE_ID = "QDG6eK", "wx5823bf96d3bd56c7"
SAMPLE_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
SAMPLE_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCU"
    "pj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xg"
    "pue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+Kq"
    "CKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZ"
    "S9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZ"
    "ZIs2pDBS8R07+qN+E7Q=="
)


def codec(aes: str = AES_KEY, window: int = 300, mode: str = "") -> WeChatCodec:
    return WeChatCodec(TOKEN, aes, APP_ID, window, mode)


def test_signature_official_vector() -> None:
    assert sign("AAAAA", "1714036504", "1514711492") == "f464b24fc39322e44b38aa78f5edd27bd1441696"


def test_safe_mode_official_vector_decrypts() -> None:
    sample = WeChatCodec(SAMPLE_TOKEN, SAMPLE_KEY, SAMPLE_ID, timestamp_window=0)
    args = {
        "encrypt_type": "aes",
        "msg_signature": "477715d11cdb4164915debcba66cb864d751f3e6",
        "timestamp": "1409659813",
        "nonce": "1372623149",
    }
    body = f"<xml><ToUserName><![CDATA[{SAMPLE_ID}]]></ToUserName><Encrypt>{cdata(SAMPLE_ENCRYPT)}</Encrypt></xml>"
    inbound = sample.open(args, body.encode())
    message = parse_message(inbound.xml)
    assert inbound.encrypted
    assert (message.user, message.content, message.msg_id) == (
        "mycreate",
        "hello",
        "4561255354251345929",
    )


def test_url_verification_plain() -> None:
    args = sign_url_check(TOKEN, "12345")
    assert codec().verify_url(args) == "12345"


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"signature": "0" * 40}, 403),
        ({"timestamp": str(int(time.time()) - 3600)}, 403),
        ({"nonce": ""}, 400),
        ({"timestamp": "soon"}, 403),
        ({"timestamp": "9" * 5000}, 403),  # the signature no longer holds either
    ],
)
def test_url_verification_refuses(change: dict, status: int) -> None:
    args = {**sign_url_check(TOKEN), **change}
    with pytest.raises(ProtocolError) as err:
        codec().verify_url(args)
    assert err.value.status == status


@pytest.mark.parametrize("aes", ["", AES_KEY])
def test_round_trip_plain_and_safe(aes: str) -> None:
    xml = message_xml("o_user", "gh_acc", content="你好 ]]> <b>&", msg_id="42")
    signed = sign_request(TOKEN, xml, aes_key=aes, app_id=APP_ID)
    inbound = codec(aes).open(signed.params, signed.body.encode())
    assert inbound.encrypted == bool(aes)
    message = parse_message(inbound.xml)
    assert (message.content, message.msg_id, message.kind) == ("你好 ]]> <b>&", "42", "text")


def test_compatible_mode_plain_message_accepted_with_key_set() -> None:
    signed = sign_request(TOKEN, message_xml("o", "gh", content="hi"))
    assert not codec(mode="compatible").open(signed.params, signed.body.encode()).encrypted


@pytest.mark.parametrize(
    ("aes", "mode", "effective", "plain", "encrypted"),
    [
        (AES_KEY, "", "safe", 403, None),  # a key set: only AES messages by default
        (AES_KEY, "safe", "safe", 403, None),
        (AES_KEY, "compatible", "compatible", None, None),
        (AES_KEY, "plain", "plain", None, 400),
        ("", "", "plain", None, 400),
        ("", "plain", "plain", None, 400),
    ],
)
def test_encrypt_modes(
    aes: str, mode: str, effective: str, plain: int | None, encrypted: int | None
) -> None:
    """Which bodies each WECHAT_ENCRYPT_MODE takes (None: accepted, else the refusal)."""
    account = codec(aes, mode=mode)
    assert account.mode == effective
    xml = message_xml("o", "gh", content="hi")
    for aes_key, status in (("", plain), (AES_KEY, encrypted)):
        signed = sign_request(TOKEN, xml, aes_key=aes_key, app_id=APP_ID)
        if status is None:
            assert account.open(signed.params, signed.body.encode()).encrypted == bool(aes_key)
            continue
        with pytest.raises(ProtocolError) as err:
            account.open(signed.params, signed.body.encode())
        assert err.value.status == status


def test_unknown_encrypt_mode_is_a_server_error() -> None:
    signed = sign_request(TOKEN, message_xml("o", "gh", content="hi"))
    with pytest.raises(ProtocolError) as err:
        codec(mode="sometimes").open(signed.params, signed.body.encode())
    assert err.value.status == 500


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda p, b: ({**p, "msg_signature": "f" * 40}, b), 403),
        (lambda p, b: ({**p, "timestamp": "1"}, b), 403),
        (
            lambda p, b: (p, b.replace("<Encrypt>", "<Other>").replace("</Encrypt>", "</Other>")),
            400,
        ),
        (lambda p, b: (p, "<xml><Encrypt"), 400),
    ],
)
def test_safe_mode_refuses(mutate, status: int) -> None:  # noqa: ANN001
    signed = sign_request(
        TOKEN, message_xml("o", "gh", content="hi"), aes_key=AES_KEY, app_id=APP_ID
    )
    params, body = mutate(signed.params, signed.body)
    with pytest.raises(ProtocolError) as err:
        codec().open(params, body.encode())
    assert err.value.status == status


def test_encrypted_message_without_key_is_400() -> None:
    signed = sign_request(
        TOKEN, message_xml("o", "gh", content="hi"), aes_key=AES_KEY, app_id=APP_ID
    )
    with pytest.raises(ProtocolError) as err:
        codec(aes="").open(signed.params, signed.body.encode())
    assert err.value.status == 400


def test_message_for_another_app_id_is_400() -> None:
    xml = message_xml("o", "gh", content="hi")
    signed = sign_request(TOKEN, xml, aes_key=AES_KEY, app_id="wxffffffffffffffff")
    with pytest.raises(ProtocolError) as err:
        codec().open(signed.params, signed.body.encode())
    assert err.value.status == 400


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (message_xml("u", "a", content=" hi ", msg_id="1"), ("text", "hi", "", "1")),
        (
            message_xml("u", "a", kind="voice", recognition="天气", msg_id="2"),
            ("voice", "天气", "", "2"),
        ),
        (message_xml("u", "a", kind="voice", msg_id="3"), ("voice", "", "", "3")),
        (message_xml("u", "a", kind="image", msg_id="4"), ("image", "", "", "4")),
        (message_xml("u", "a", kind="event", event="subscribe"), ("event", "", "subscribe", "")),
    ],
)
def test_parse_kinds(xml: str, expected: tuple) -> None:
    m = parse_message(xml)
    assert (m.kind, m.content, m.event, m.msg_id) == expected


def test_event_dedup_key_uses_sender_and_time() -> None:
    m = parse_message(
        message_xml("u1", "a", kind="event", event="subscribe", create_time=1700000000)
    )
    assert m.dedup_key.startswith("u1:1700000000")


@pytest.mark.parametrize(
    "body",
    [
        "not xml",
        "<xml><FromUserName>u</FromUserName></xml>",
        "<root><MsgType>text</MsgType></root>",
        "<xml><FromUserName><a>1</a></FromUserName><ToUserName>x</ToUserName><MsgType>text</MsgType></xml>",
        '<!DOCTYPE x [<!ENTITY e "boom">]><xml><FromUserName>&e;</FromUserName></xml>',
    ],
)
def test_malformed_is_400(body: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_message(body)
    assert err.value.status == 400


@pytest.mark.parametrize(
    "content", ["plain", "a ]]> b", "]]>]]>", "ctrl\x00\x07chars", "<xml>&amp;</xml>"]
)
@pytest.mark.parametrize("aes", ["", AES_KEY])
def test_reply_xml_stays_valid(content: str, aes: str) -> None:
    reply = render_text_reply("o_user", "gh_acc", content)
    xml.dom.minidom.parseString(reply)  # raises if the CDATA escaping broke the document
    signed = sign_request(TOKEN, message_xml("o", "gh", content="q"), aes_key=aes, app_id=APP_ID)
    inbound = codec(aes).open(signed.params, signed.body.encode())
    sealed = codec(aes).seal(reply, inbound)
    fields = read_reply(sealed, token=TOKEN, aes_key=aes, app_id=APP_ID)
    assert fields["Content"] == content.replace("\x00", "").replace("\x07", "")
    assert fields["ToUserName"] == "o_user"


def test_read_reply_success_is_empty() -> None:
    assert read_reply("success") == {}
    assert read_reply("") == {}
