"""WeCom robot protocol: WeCom's published vectors, sealing both ways, parsing and rendering."""

from __future__ import annotations

import json
import time

import pytest

from bot.channels.wechat.protocol import sign
from bot.channels.wecom.protocol import (
    CONTENT_LIMIT,
    TRUNCATED_NOTE,
    ProtocolError,
    WeComCodec,
    decrypt,
    encrypt,
    fit_content,
    markdown_message,
    message_payload,
    parse_callback,
    read_reply,
    sign_callback,
    stream_reply,
    text_reply,
    url_check,
)
from bot.text.split import utf8_len
from tests.helpers import WECOM_AES_KEY, WECOM_TOKEN

# WeCom's published callback samples (weworkapi "callback" Sample.py for WXBizMsgCrypt and
# "callback_json" Sample.py for WXBizJsonMsgCrypt): token and EncodingAESKey below, receiveid
# the sample CorpID. The intelligent robot uses the same scheme with an empty receiveid.
SAMPLE_CORP_ID = "ww1436e0e65a779aee"
URL_CHECK = {
    "msg_signature": "012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb",
    "timestamp": "1476416373",
    "nonce": "47744683",
    "echostr": "fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA==",
}
URL_CHECK_PLAIN = "1288432023552776189"
JSON_CALLBACK = {
    "msg_signature": "e3647471e395139e2308c1fa963f2d648a00b90e",
    "timestamp": "1409659813",
    "nonce": "1372623149",
}
JSON_CALLBACK_BODY = (
    '{ "tousername": "wx5823bf96d3bd56c7", "encrypt": "cjhLUX7UU4yCSelv1vz7T0zT8huF51bAMVWriNvO1F'
    "MegHrQZNrtvRxbwf0fUPsFvwqR0U0fgiJNEA5Y30F2MoI2S7vv3EjVQ68C0cjw9frBoUE2Hj0BvFp9h3u6Vbsg4lc1C8"
    "AtHdaN8orKuNKkLRLuYEL52R1J3v8olJGZRLnRdVKIivixmX/eQpzgeExtp20jI1HxRP1AAZ6xZoILdqDPO549LO4WeG"
    '+685JRUTdiwcY5fjZlqeMxuT4PpMn1X9OWsS7NRj06Wa5E3Tvg4twjWp39KPfOdRte6P1T4JU=", "agentid": 218 }'
)
# The sample's plaintext, byte for byte: its JSON is malformed (`: :mycreate"`) in the original.
JSON_CALLBACK_PLAIN = (
    '{ "ToUserName": "wx5823bf96d3bd56c7", "FromUserName": :mycreate", "CreateTime": 1409659813,'
    ' "MsgType": "text", "Content": "hello", "MsgId": 4561255354251345929, "AgentID": 218}'
)
XML_CALLBACK_SIGNATURE = ("0c3914025cb4b4d68103f6bfc8db550f79dcf48e", "1476422779", "1597212914")
XML_CALLBACK_ENCRYPT = (
    "Kl7kjoSf6DMD1zh7rtrHjFaDapSCkaOnwu3bqLc5tAybhhMl9pFeK8NslNPVdMwmBQTNoW4mY7AIjeLvEl3NyeTkAgGzBh"
    "zTtRLNshw2AEew+kkYcD+Fq72Kt00fT0WnN87hGrW8SqGc+NcT3mu87Ha3dz1pSDi6GaUA6A0sqfde0VJPQbZ9U+3JWcoD"
    "4Z5jaU0y9GSh010wsHF8KZD24YhmZH4ch4Ka7ilEbjbfvhKkNL65HHL0J6EYJIZUC2pFrdkJ7MhmEbU2qARR4iQHE7wy24"
    "qy0cRX3Mfp6iELcDNfSsPGjUQVDGxQDCWjayJOpcwocugux082f49HKYg84EpHSGXAyh+/oxwaWbvL6aSDPOYuPDGOCI8jm"
    "nKiypE+"
)


def sample_codec(receive_id: str = SAMPLE_CORP_ID) -> WeComCodec:
    return WeComCodec(WECOM_TOKEN, WECOM_AES_KEY, receive_id, timestamp_window=0)


def robot() -> WeComCodec:
    return WeComCodec(WECOM_TOKEN, WECOM_AES_KEY)


def test_official_url_check_vector() -> None:
    assert sample_codec().verify_url(URL_CHECK) == URL_CHECK_PLAIN


def test_official_json_callback_vector_decrypts() -> None:
    plain = sample_codec().open(JSON_CALLBACK, JSON_CALLBACK_BODY.encode())
    assert plain == JSON_CALLBACK_PLAIN
    with pytest.raises(ProtocolError) as err:  # the sample's own JSON typo is refused cleanly
        parse_callback(plain)
    assert err.value.status == 400


def test_official_xml_callback_vector_signature_and_aes() -> None:
    signature, timestamp, nonce = XML_CALLBACK_SIGNATURE
    assert sign(WECOM_TOKEN, timestamp, nonce, XML_CALLBACK_ENCRYPT) == signature
    xml = decrypt(WECOM_AES_KEY, XML_CALLBACK_ENCRYPT, SAMPLE_CORP_ID)
    assert "<FromUserName>ChenJiaShun</FromUserName>" in xml
    assert "<Content>你好</Content>" in xml


def test_robot_refuses_ciphertext_for_another_receiveid() -> None:
    """The robot's receiveid is empty: the sample, encrypted for a CorpID, is not for it."""
    with pytest.raises(ProtocolError) as err:
        sample_codec(receive_id="").verify_url(URL_CHECK)
    assert err.value.status == 400


def test_url_check_round_trip() -> None:
    params, plain = url_check(WECOM_TOKEN, WECOM_AES_KEY)
    assert robot().verify_url(params) == plain


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"msg_signature": "0" * 40}, 403),
        ({"timestamp": str(int(time.time()) - 3600)}, 403),
        ({"nonce": ""}, 400),
        ({"echostr": ""}, 400),
        ({"timestamp": "soon"}, 403),  # the signature no longer matches either
    ],
)
def test_url_check_refuses(change: dict, status: int) -> None:
    params, _ = url_check(WECOM_TOKEN, WECOM_AES_KEY)
    with pytest.raises(ProtocolError) as err:
        robot().verify_url({**params, **change})
    assert err.value.status == status


def test_callback_round_trip_and_sealed_reply() -> None:
    payload = message_payload("alice", content="@MiMo hi", chat_id="g1", response_url="http://x/r")
    signed = sign_callback(WECOM_TOKEN, WECOM_AES_KEY, payload)
    plain = robot().open(signed.params, signed.body.encode())
    assert json.loads(plain) == payload
    sealed = robot().seal(stream_reply("s1", "**partial**", False))
    assert set(sealed) == {"encrypt", "msgsignature", "timestamp", "nonce"}
    assert read_reply(json.dumps(sealed), token=WECOM_TOKEN, aes_key=WECOM_AES_KEY) == {
        "msgtype": "stream",
        "stream": {"id": "s1", "finish": False, "content": "**partial**"},
    }
    assert read_reply("", token=WECOM_TOKEN, aes_key=WECOM_AES_KEY) == {}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[]", 400),
        (b'{"encrypt": ""}', 400),
        (b'{"encrypt": 5}', 400),
        (b"\xff\xfe", 400),
    ],
)
def test_open_refuses_bad_bodies(body: bytes, status: int) -> None:
    params = sign_callback(WECOM_TOKEN, WECOM_AES_KEY, {"msgtype": "text"}).params
    with pytest.raises(ProtocolError) as err:
        robot().open(params, body)
    assert err.value.status == status


def test_open_refuses_tampered_ciphertext_and_foreign_keys() -> None:
    signed = sign_callback(WECOM_TOKEN, WECOM_AES_KEY, {"msgtype": "text"})
    tampered = json.dumps({"encrypt": "A" + json.loads(signed.body)["encrypt"][1:]})
    with pytest.raises(ProtocolError) as err:
        robot().open(signed.params, tampered.encode())
    assert err.value.status == 403  # the signature covers the ciphertext
    other_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    foreign = sign_callback(WECOM_TOKEN, other_key, {"msgtype": "text"})
    with pytest.raises(ProtocolError) as err:
        robot().open(foreign.params, foreign.body.encode())
    assert err.value.status == 400


def test_unconfigured_or_malformed_robot() -> None:
    params, _ = url_check(WECOM_TOKEN, WECOM_AES_KEY)
    with pytest.raises(ProtocolError) as err:
        WeComCodec("", "").verify_url(params)
    assert err.value.status == 404
    with pytest.raises(ProtocolError) as err:
        WeComCodec(WECOM_TOKEN, "short").verify_url(params)
    assert err.value.status == 503
    assert "short" not in err.value.reason


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            message_payload("alice", content="@MiMo 1+1?", chat_id="g1", msg_id="m1"),
            {"kind": "text", "content": "@MiMo 1+1?", "chat_type": "group", "chat_id": "g1"},
        ),
        (
            message_payload("bob", kind="voice", content="今天天气怎么样"),
            {"kind": "voice", "content": "今天天气怎么样", "chat_type": "single", "chat_id": ""},
        ),
        (
            message_payload("bob", kind="mixed", content="@MiMo what is this", chat_id="g2"),
            {"kind": "mixed", "content": "@MiMo what is this", "chat_type": "group"},
        ),
        (
            message_payload("bob", content="@MiMo explain", chat_id="g2", quote="E = mc^2"),
            {"kind": "text", "quote": "E = mc^2"},
        ),
        (message_payload("bob", kind="image"), {"kind": "image", "content": ""}),
        (
            message_payload("bob", kind="event", event="enter_chat"),
            {"kind": "event", "event": "enter_chat"},
        ),
        (
            message_payload("bob", kind="stream", chat_id="g2", stream_id="S1"),
            {"kind": "stream", "stream_id": "S1", "chat_id": "g2"},
        ),
        (
            {"msgid": "x", "chattype": "group", "chatid": "g", "from": {"userid": "u"},
             "msgtype": "text", "text": {"content": "hi"}, "response_url": "https://r"},
            {"response_url": "https://r", "msg_id": "x", "user": "u"},
        ),
    ],
)  # fmt: skip
def test_parse_callback(payload: dict, expected: dict) -> None:
    message = parse_callback(json.dumps(payload, ensure_ascii=False))
    assert message.channel == "wecom"
    assert {k: getattr(message, k) for k in expected} == expected


@pytest.mark.parametrize(
    "plain",
    [
        "[]",
        '{"from": {"userid": "u"}}',  # no msgtype
        '{"msgtype": "text", "text": {"content": "hi"}}',  # no sender
        '{"msgtype": "text", "from": "u"}',
        '{"msgtype": "text", "from": {"userid": "u"}, "text": "hi"}',
        '{"msgtype": "text", "from": {"userid": "u"}, "chattype": "channel"}',
        '{"msgtype": "mixed", "from": {"userid": "u"}, "mixed": {"msg_item": {}}}',
        '{"msgtype": "text", "from": {"userid": ["u"]}}',
    ],
)
def test_parse_callback_refuses_what_wecom_never_sends(plain: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_callback(plain)
    assert err.value.status == 400


@pytest.mark.parametrize("size", [0, 100, CONTENT_LIMIT, CONTENT_LIMIT + 1, 3 * CONTENT_LIMIT])
def test_fit_content_stays_under_the_limit(size: int) -> None:
    text = ("答案 answer\n" * (size // 14 + 1))[:size]
    fitted = fit_content(text)
    assert utf8_len(fitted) <= CONTENT_LIMIT
    if utf8_len(text) <= CONTENT_LIMIT:
        assert fitted == text
    else:
        assert fitted.endswith(TRUNCATED_NOTE)


def test_rendered_replies() -> None:
    long = "x" * (CONTENT_LIMIT + 10)
    assert utf8_len(stream_reply("s", long, True)["stream"]["content"]) <= CONTENT_LIMIT
    assert utf8_len(markdown_message(long)["markdown"]["content"]) <= CONTENT_LIMIT
    assert text_reply("hi") == {"msgtype": "text", "text": {"content": "hi"}}


def test_encrypt_is_randomised_but_decrypts() -> None:
    a, b = encrypt(WECOM_AES_KEY, "same"), encrypt(WECOM_AES_KEY, "same")
    assert a != b
    assert decrypt(WECOM_AES_KEY, a) == decrypt(WECOM_AES_KEY, b) == "same"


@pytest.mark.parametrize("body", ["{}", "not json", '{"encrypt": "x"}'])
def test_read_reply_refuses_unsealed_bodies(body: str) -> None:
    with pytest.raises(ProtocolError):
        read_reply(body, token=WECOM_TOKEN, aes_key=WECOM_AES_KEY)
