"""WeChat Official Account protocol: signatures, safe-mode AES, message XML in and out.

Both sides live here: the server side the webhook uses, and the client side (what WeChat's
servers send) that `mimochat send`, the admin simulator and the tests use.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
from dataclasses import dataclass
from xml.parsers.expat import ExpatError

import xmltodict
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException

from bot.core.contracts import IncomingMessage
from bot.text.formatting import clean_xml_text


class ProtocolError(Exception):
    """A request the platform would never send: signature, timestamp, body or encryption wrong."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(*parts: str) -> str:
    """WeChat's signature: sha1 of the sorted parts joined."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def new_nonce() -> str:
    """A random numeric nonce like WeChat's."""
    return str(secrets.randbelow(9_000_000_000) + 1_000_000_000)


@dataclass
class Inbound:
    """A verified request body, decrypted when it came encrypted."""

    xml: str
    encrypted: bool
    timestamp: str
    nonce: str


@dataclass
class WeChatCodec:
    """Server side of the protocol for one account."""

    token: str
    aes_key: str = ""
    app_id: str = ""
    timestamp_window: int = 300

    def _crypto(self) -> WeChatCrypto:
        try:
            return WeChatCrypto(self.token, self.aes_key, self.app_id)
        except (AssertionError, ValueError) as exc:
            raise ProtocolError(500, "WECHAT_AES_KEY is malformed (43 chars of base64)") from exc

    def _check(self, args: dict[str, str], *extra: str, field: str = "signature") -> None:
        timestamp, nonce, signature = args.get("timestamp"), args.get("nonce"), args.get(field)
        if not (timestamp and nonce and signature):
            raise ProtocolError(400, f"missing timestamp, nonce or {field}")
        expected = sign(self.token, timestamp, nonce, *extra)
        if not hmac.compare_digest(expected, signature):
            raise ProtocolError(403, "signature mismatch")
        try:
            skew = abs(time.time() - int(timestamp))
        except ValueError as exc:
            raise ProtocolError(400, "timestamp is not a number") from exc
        if self.timestamp_window and skew > self.timestamp_window:
            raise ProtocolError(403, "timestamp outside the freshness window")

    def verify_url(self, args: dict[str, str]) -> str:
        """Answer the GET handshake: the raw echostr when the signature holds."""
        self._check(args)
        return args.get("echostr", "")

    def open(self, args: dict[str, str], body: bytes) -> Inbound:
        """Verify a POSTed message and decrypt it in safe/compatible mode."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(400, "body is not UTF-8") from exc
        if args.get("encrypt_type", "raw") != "aes":
            self._check(args)
            return Inbound(text, False, args["timestamp"], args["nonce"])
        if not self.aes_key:
            raise ProtocolError(400, "message is encrypted but WECHAT_AES_KEY is not set")
        envelope = _parse_xml(text)
        encrypt = envelope.get("Encrypt")
        if not isinstance(encrypt, str) or not encrypt:
            raise ProtocolError(400, "encrypted message without <Encrypt>")
        self._check(args, encrypt, field="msg_signature")
        try:
            plain = self._crypto().decrypt_message(
                {"Encrypt": encrypt}, args["msg_signature"], args["timestamp"], args["nonce"]
            )
        except InvalidSignatureException as exc:
            raise ProtocolError(403, "signature mismatch") from exc
        except InvalidAppIdException as exc:
            raise ProtocolError(400, "message was encrypted for another AppID") from exc
        except Exception as exc:  # bad base64 / padding: the body is not what WeChat sends
            raise ProtocolError(400, "cannot decrypt <Encrypt>") from exc
        return Inbound(plain, True, args["timestamp"], args["nonce"])

    def seal(self, reply_xml: str, inbound: Inbound) -> str:
        """Encrypt a passive reply when the request came encrypted."""
        if not inbound.encrypted:
            return reply_xml
        return self._crypto().encrypt_message(reply_xml, new_nonce(), str(int(time.time())))


def _parse_xml(text: str) -> dict:
    try:
        doc = xmltodict.parse(text, disable_entities=True)
    except (ExpatError, ValueError) as exc:
        raise ProtocolError(400, "malformed XML") from exc
    root = doc.get("xml") if isinstance(doc, dict) else None
    if not isinstance(root, dict):
        raise ProtocolError(400, "XML root must be <xml>")
    return root


def _field(root: dict, name: str) -> str:
    value = root.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProtocolError(400, f"<{name}> must be text")
    return value


def parse_message(xml: str) -> IncomingMessage:
    """Turn a (decrypted) message XML into an IncomingMessage."""
    root = _parse_xml(xml)
    user, account, kind = (_field(root, n) for n in ("FromUserName", "ToUserName", "MsgType"))
    if not (user and account and kind):
        raise ProtocolError(400, "message lacks FromUserName, ToUserName or MsgType")
    try:
        create_time = int(_field(root, "CreateTime") or 0)
    except ValueError as exc:
        raise ProtocolError(400, "CreateTime is not a number") from exc
    kind = kind.lower()
    content = ""
    if kind == "text":
        content = _field(root, "Content")
    elif kind == "voice":
        content = _field(root, "Recognition")
    return IncomingMessage(
        channel="wechat",
        user=user,
        account=account,
        kind=kind,
        content=content.strip(),
        msg_id=_field(root, "MsgId"),
        create_time=create_time,
        event=_field(root, "Event").lower() if kind == "event" else "",
    )


def cdata(text: str) -> str:
    """Wrap text in CDATA so that nothing in it (`]]>` included) can end the section early."""
    return "<![CDATA[" + clean_xml_text(text).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_text_reply(to_user: str, from_user: str, content: str, create_time: int = 0) -> str:
    """The passive text reply XML WeChat shows to the user."""
    return (
        f"<xml><ToUserName>{cdata(to_user)}</ToUserName>"
        f"<FromUserName>{cdata(from_user)}</FromUserName>"
        f"<CreateTime>{create_time or int(time.time())}</CreateTime>"
        f"<MsgType><![CDATA[text]]></MsgType>"
        f"<Content>{cdata(content)}</Content></xml>"
    )


# --- the client side: what WeChat's servers send, for the CLI, the simulator and tests ---


@dataclass
class SignedRequest:
    """Query parameters and body of one webhook call, exactly as WeChat would make it."""

    params: dict[str, str]
    body: str


def message_xml(
    user: str,
    account: str,
    *,
    kind: str = "text",
    content: str = "",
    msg_id: str | None = None,
    create_time: int | None = None,
    event: str = "",
    recognition: str = "",
) -> str:
    """A message XML like the ones WeChat posts (text, voice, image or event)."""
    create_time = create_time or int(time.time())
    parts = [
        f"<ToUserName>{cdata(account)}</ToUserName>",
        f"<FromUserName>{cdata(user)}</FromUserName>",
        f"<CreateTime>{create_time}</CreateTime>",
        f"<MsgType>{cdata(kind)}</MsgType>",
    ]
    if kind == "text":
        parts.append(f"<Content>{cdata(content)}</Content>")
    elif kind == "voice":
        parts.append("<MediaId><![CDATA[media]]></MediaId><Format><![CDATA[amr]]></Format>")
        parts.append(f"<Recognition>{cdata(recognition)}</Recognition>")
    elif kind == "image":
        parts.append("<PicUrl><![CDATA[http://example.invalid/a.jpg]]></PicUrl>")
        parts.append("<MediaId><![CDATA[media]]></MediaId>")
    elif kind == "event":
        parts.append(f"<Event>{cdata(event)}</Event>")
    if kind != "event":
        parts.append(f"<MsgId>{msg_id or secrets.randbelow(10**18)}</MsgId>")
    return "<xml>" + "".join(parts) + "</xml>"


def sign_request(
    token: str,
    xml: str,
    *,
    aes_key: str = "",
    app_id: str = "",
    timestamp: str | None = None,
    nonce: str | None = None,
    openid: str = "",
) -> SignedRequest:
    """Sign (and in safe mode encrypt) a message XML as WeChat does before POSTing it."""
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or new_nonce()
    params = {"signature": sign(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce}
    if openid:
        params["openid"] = openid
    if not aes_key:
        return SignedRequest(params, xml)
    sealed = _parse_xml(WeChatCrypto(token, aes_key, app_id).encrypt_message(xml, nonce, timestamp))
    encrypt = sealed["Encrypt"]
    params.update(encrypt_type="aes", msg_signature=sign(token, timestamp, nonce, encrypt))
    return SignedRequest(
        params,
        f"<xml><ToUserName>{cdata('')}</ToUserName><Encrypt>{cdata(encrypt)}</Encrypt></xml>",
    )


def sign_url_check(token: str, echostr: str | None = None) -> dict[str, str]:
    """Query parameters of the GET URL-verification handshake."""
    timestamp, nonce = str(int(time.time())), new_nonce()
    echostr = echostr or "".join(secrets.choice(string.digits) for _ in range(19))
    return {
        "signature": sign(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "echostr": echostr,
    }


def read_reply(body: str, *, token: str = "", aes_key: str = "", app_id: str = "") -> dict:
    """Decode a passive reply as WeChat's servers would: {} for `success`/empty, else its fields."""
    body = body.strip()
    if body in ("", "success"):
        return {}
    root = _parse_xml(body)
    if "Encrypt" in root:
        plain = WeChatCrypto(token, aes_key, app_id).decrypt_message(
            {"Encrypt": root["Encrypt"]}, root["MsgSignature"], root["TimeStamp"], root["Nonce"]
        )
        root = _parse_xml(plain)
    return {k: v for k, v in root.items() if isinstance(v, str)}
