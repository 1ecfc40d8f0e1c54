"""WeCom intelligent robot (智能机器人, API mode) protocol: signatures, AES, JSON in and out.

The robot's callbacks use WeCom's usual scheme (the same as WeChat's safe mode) with JSON
instead of XML and an empty receiveid: `msg_signature = sha1(sorted(token, timestamp, nonce,
encrypt))`, AES-256-CBC with the EncodingAESKey, plaintext = 16 random bytes + 4-byte length +
message + receiveid. The URL check's `echostr` is encrypted the same way and the answer is its
plaintext. Passive replies are JSON `{"encrypt", "msgsignature", "timestamp", "nonce"}`.

Both sides live here: the server side the webhook uses, and the client side (what WeCom's
servers send and how they read our replies) that the sandbox WeCom and the tests use.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis
from wechatpy.enterprise.crypto import PrpCrypto

from bot.channels.signing import ProtocolError, Signed, bind_body, new_nonce, sign, verify
from bot.channels.untrusted import load_json
from bot.core.contracts import IncomingMessage
from bot.text.split import split_text, utf8_len

CONTENT_LIMIT = 20480  # UTF-8 bytes of one stream or markdown content
ENVELOPE_MAX_DEPTH = 4  # the callback's envelope is one flat object
TRUNCATED_NOTE = "\n\n…（回答过长，已截断 / answer cut: too long for WeCom）"

__all__ = [
    "CONTENT_LIMIT",
    "ProtocolError",
    "WeComCodec",
    "fit_content",
    "markdown_message",
    "parse_callback",
    "read_reply",
    "sign_callback",
    "stream_reply",
    "text_reply",
    "url_check",
]


def _prp(aes_key: str) -> PrpCrypto:
    """The AES helper for a 43-character EncodingAESKey (ValueError if malformed)."""
    try:
        raw = base64.b64decode(aes_key + "=", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("EncodingAESKey is not base64") from exc
    if len(raw) != 32:
        raise ValueError("EncodingAESKey must decode to 32 bytes")
    return PrpCrypto(raw)


def encrypt(aes_key: str, text: str, receive_id: str = "") -> str:
    """Encrypt text as WeCom does (random prefix, length, text, receiveid; base64)."""
    return _prp(aes_key).encrypt(text, receive_id).decode()


def decrypt(aes_key: str, ciphertext: str, receive_id: str = "") -> str:
    """Decrypt WeCom ciphertext; raises ValueError if it is not for this receiveid or garbled."""
    prp = _prp(aes_key)
    try:
        return prp.decrypt(ciphertext, receive_id)
    except Exception as exc:  # bad base64, padding, length or receiveid: all mean "not ours"
        raise ValueError(f"cannot decrypt ({type(exc).__name__})") from exc


@dataclass
class WeComCodec:
    """Server side of the protocol for one robot (receive_id is empty for the robot)."""

    token: str
    aes_key: str
    receive_id: str = ""
    timestamp_window: int = 300

    def _check(self, args: dict[str, str], payload: str) -> Signed:
        if not (self.token and self.aes_key):
            raise ProtocolError(404, "the WeCom robot is not configured")
        return verify(
            self.token, args, payload, field="msg_signature", window=self.timestamp_window
        )

    def _decrypt(self, ciphertext: str) -> str:
        try:
            _prp(self.aes_key)
        except ValueError as exc:
            raise ProtocolError(503, "WECOM_BOT_AES_KEY is malformed (43 chars of base64)") from exc
        try:
            return decrypt(self.aes_key, ciphertext, self.receive_id)
        except ValueError as exc:
            raise ProtocolError(400, "cannot decrypt the message") from exc

    def verify_url(self, args: dict[str, str]) -> str:
        """Answer the GET handshake: the decrypted echostr when the signature holds."""
        echostr = args.get("echostr", "")
        if not echostr:
            raise ProtocolError(400, "missing echostr")
        self._check(args, echostr)
        return self._decrypt(echostr)

    def open(self, args: dict[str, str], body: bytes, client: redis.Redis | None = None) -> str:
        """Verify a POSTed callback `{"encrypt": ...}` and return its decrypted JSON text.

        With `client`, the call's signature triple is bound to this body (`bind_body`).
        """
        try:
            envelope = load_json(body, max_depth=ENVELOPE_MAX_DEPTH)
        except ValueError as exc:
            raise ProtocolError(400, "body is not JSON") from exc
        ciphertext = envelope.get("encrypt") if isinstance(envelope, dict) else None
        if not isinstance(ciphertext, str) or not ciphertext:
            raise ProtocolError(400, 'callback without "encrypt"')
        signed = self._check(args, ciphertext)
        plain = self._decrypt(ciphertext)
        if client is not None:
            bind_body(client, "wecom", signed, body, self.timestamp_window)
        return plain

    def seal(
        self, payload: dict[str, Any], *, nonce: str | None = None, timestamp: str | None = None
    ) -> dict[str, str]:
        """Encrypt and sign a passive reply: the JSON body WeCom expects."""
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or new_nonce()
        text = json.dumps(payload, ensure_ascii=False)
        ciphertext = encrypt(self.aes_key, text, self.receive_id)
        return {
            "encrypt": ciphertext,
            "msgsignature": sign(self.token, timestamp, nonce, ciphertext),
            "timestamp": timestamp,
            "nonce": nonce,
        }


# --- parsing ---


def _obj(data: dict, name: str) -> dict:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(400, f'"{name}" must be an object')
    return value


def _str(data: dict, name: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str | int):
        raise ProtocolError(400, f'"{name}" must be a string')
    return str(value)


def _text_of(kind: str, body: dict) -> tuple[str, int]:
    """The readable text of a message body of `kind`, and how many pictures it carries."""
    if kind in ("text", "voice"):  # voice: WeCom's transcript
        return _str(_obj(body, kind), "content"), 0
    if kind == "mixed":
        items = _obj(body, "mixed").get("msg_item", [])
        if not isinstance(items, list):
            raise ProtocolError(400, '"mixed.msg_item" must be a list')
        texts, pictures = [], 0
        for item in items:
            if not isinstance(item, dict):
                raise ProtocolError(400, '"mixed.msg_item" entries must be objects')
            item_kind = _str(item, "msgtype")
            if item_kind == "text":
                texts.append(_str(_obj(item, "text"), "content"))
            elif item_kind == "image":
                pictures += 1
        return "\n".join(t for t in texts if t.strip()), pictures
    if kind == "image":
        return "", 1
    return "", 0


def parse_callback(plain: str) -> IncomingMessage:
    """Turn a decrypted callback into an IncomingMessage (kind = WeCom's msgtype)."""
    try:
        data = load_json(plain)
    except ValueError as exc:  # too deep, too big or a huge number included
        raise ProtocolError(400, "callback is not JSON") from exc
    if not isinstance(data, dict):
        raise ProtocolError(400, "callback must be a JSON object")
    kind = _str(data, "msgtype").lower()
    if not kind:
        raise ProtocolError(400, 'callback lacks "msgtype"')
    user = _str(_obj(data, "from"), "userid")
    if not user and kind != "stream":
        raise ProtocolError(400, 'callback lacks "from.userid"')
    chat_type = _str(data, "chattype") or ("group" if data.get("chatid") else "single")
    if chat_type not in ("single", "group"):
        raise ProtocolError(400, '"chattype" must be single or group')
    content, _pictures = _text_of(kind, data)
    quote = _obj(data, "quote")
    quote_text = ""
    if quote:
        quote_kind = _str(quote, "msgtype")
        quote_text, quote_pictures = _text_of(quote_kind, quote)
        if not quote_text and quote_pictures:
            quote_text = "[image]"
    return IncomingMessage(
        channel="wecom",
        user=user,
        account=_str(data, "aibotid"),
        kind=kind,
        content=content.strip(),
        msg_id=_str(data, "msgid"),
        event=_str(_obj(data, "event"), "eventtype").lower() if kind == "event" else "",
        chat_id=_str(data, "chatid"),
        chat_type=chat_type,
        quote=quote_text.strip(),
        response_url=_str(data, "response_url"),
        stream_id=_str(_obj(data, "stream"), "id") if kind == "stream" else "",
    )


# --- rendering ---


def fit_content(text: str, limit: int = CONTENT_LIMIT, note: str = TRUNCATED_NOTE) -> str:
    """`text` if it fits in `limit` UTF-8 bytes, else its start (cut at a line if it can) + note."""
    if utf8_len(text) <= limit:
        return text
    return split_text(text, limit - utf8_len(note))[0].rstrip() + note


def stream_reply(stream_id: str, content: str, finish: bool) -> dict[str, Any]:
    """A stream message: the full text so far (Markdown, `<think>` allowed), finished or not."""
    return {
        "msgtype": "stream",
        "stream": {"id": stream_id, "finish": finish, "content": fit_content(content)},
    }


def text_reply(content: str) -> dict[str, Any]:
    """A plain text reply (WeCom accepts it only for the enter_chat welcome)."""
    return {"msgtype": "text", "text": {"content": content}}


def markdown_message(content: str) -> dict[str, Any]:
    """A Markdown message, the body of a response_url POST."""
    return {"msgtype": "markdown", "markdown": {"content": fit_content(content)}}


# --- the client side: what WeCom's servers send, for the sandbox and the tests ---


@dataclass
class SignedCallback:
    """Query parameters and JSON body of one callback, exactly as WeCom would make it."""

    params: dict[str, str]
    body: str


def new_msgid() -> str:
    """A message id shaped like WeCom's (base64 of random bytes)."""
    return base64.b64encode(secrets.token_bytes(18)).decode()


def message_payload(
    user: str,
    *,
    kind: str = "text",
    content: str = "",
    chat_id: str = "",
    bot_id: str = "AIBOT_SANDBOX",
    msg_id: str | None = None,
    response_url: str = "",
    quote: str = "",
    event: str = "",
    stream_id: str = "",
) -> dict[str, Any]:
    """A decrypted callback like the ones WeCom posts (text, voice, mixed, image, event, stream)."""
    data: dict[str, Any] = {
        "msgid": msg_id or new_msgid(),
        "aibotid": bot_id,
        "chattype": "group" if chat_id else "single",
        "from": {"userid": user},
        "msgtype": kind,
    }
    if chat_id:
        data["chatid"] = chat_id
    if response_url and kind not in ("stream", "event"):
        data["response_url"] = response_url
    if kind in ("text", "voice"):
        data[kind] = {"content": content}
    elif kind == "mixed":
        data["mixed"] = {
            "msg_item": [
                {"msgtype": "text", "text": {"content": content}},
                {"msgtype": "image", "image": {"url": "https://example.invalid/a.png"}},
            ]
        }
    elif kind == "image":
        data["image"] = {"url": "https://example.invalid/a.png"}
    elif kind == "event":
        data["event"] = {"eventtype": event}
    elif kind == "stream":
        data["stream"] = {"id": stream_id}
    if quote:
        data["quote"] = {"msgtype": "text", "text": {"content": quote}}
    return data


def sign_callback(
    token: str,
    aes_key: str,
    payload: dict[str, Any] | str,
    *,
    receive_id: str = "",
    timestamp: str | None = None,
    nonce: str | None = None,
) -> SignedCallback:
    """Encrypt and sign a callback payload as WeCom does before POSTing it."""
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or new_nonce()
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    ciphertext = encrypt(aes_key, text, receive_id)
    params = {
        "msg_signature": sign(token, timestamp, nonce, ciphertext),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    return SignedCallback(params, json.dumps({"encrypt": ciphertext}))


def url_check(token: str, aes_key: str, plain: str | None = None) -> tuple[dict[str, str], str]:
    """Query parameters of the GET URL check, and the plaintext the server must answer."""
    plain = plain or str(secrets.randbelow(10**19))
    timestamp, nonce = str(int(time.time())), new_nonce()
    echostr = encrypt(aes_key, plain)
    params = {
        "msg_signature": sign(token, timestamp, nonce, echostr),
        "timestamp": timestamp,
        "nonce": nonce,
        "echostr": echostr,
    }
    return params, plain


def read_reply(body: str, *, token: str, aes_key: str, receive_id: str = "") -> dict[str, Any]:
    """Decode a passive reply as WeCom would: {} for an empty body, else the decrypted payload.

    Raises ProtocolError when the reply's signature or encryption is wrong.
    """
    if not body.strip():
        return {}
    try:
        sealed = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(502, "reply is not JSON") from exc
    fields = ("encrypt", "msgsignature", "timestamp", "nonce")
    if not isinstance(sealed, dict) or not all(isinstance(sealed.get(f), str) for f in fields):
        raise ProtocolError(502, "reply lacks encrypt, msgsignature, timestamp or nonce")
    expected = sign(token, sealed["timestamp"], sealed["nonce"], sealed["encrypt"])
    given = sealed["msgsignature"].encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(expected.encode(), given):
        raise ProtocolError(502, "reply signature mismatch")
    try:
        payload = json.loads(decrypt(aes_key, sealed["encrypt"], receive_id))
    except ValueError as exc:
        raise ProtocolError(502, "reply cannot be decrypted") from exc
    if not isinstance(payload, dict):
        raise ProtocolError(502, "reply payload is not an object")
    return payload
