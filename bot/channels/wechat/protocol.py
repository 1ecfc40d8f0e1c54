"""WeChat Official Account protocol: signatures, safe-mode AES, message XML in and out.

Both sides live here: the server side the webhook uses, and the client side (what WeChat's
servers send) that `mimochat send`, the admin simulator and the tests use.
"""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Literal
from xml.parsers.expat import ExpatError

import redis
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException

from bot.channels.signing import (
    ProtocolError,
    Signed,
    bind,
    bind_body,
    body_seals,
    new_nonce,
    parse_timestamp,
    sign,
    verify,
)
from bot.channels.wechat import flatxml
from bot.core.contracts import IncomingMessage
from bot.core.store import WriteOnce
from bot.text.xmlsafe import clean_xml_text

EncryptMode = Literal["safe", "compatible", "plain"]
ENCRYPT_MODES: tuple[EncryptMode, ...] = ("safe", "compatible", "plain")
XML_MAX_DEPTH = flatxml.MAX_DEPTH


@dataclass
class Inbound:
    """A verified request body, decrypted when it came encrypted."""

    xml: str
    encrypted: bool
    timestamp: str
    nonce: str
    # The call's signature bound to this body, still to be written (ingest writes them with the
    # message's claim): the same call again is WeChat's retry, another body under it a 403.
    seals: tuple[WriteOnce, ...] = ()


@dataclass
class WeChatCodec:
    """Server side of the protocol for one account.

    `encrypt_mode` is the account's message encryption: `safe` takes only AES messages (the
    default when an AES key is set: a plaintext signature covers no body), `compatible` takes
    both, `plain` only plaintext (the default without a key). Empty: derived from the key.
    """

    token: str
    aes_key: str = ""
    app_id: str = ""
    timestamp_window: int = 300
    encrypt_mode: str = ""
    _cipher: WeChatCrypto | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def mode(self) -> EncryptMode:
        """The encryption mode in force."""
        for mode in ENCRYPT_MODES:
            if self.encrypt_mode == mode:
                return mode
        if self.encrypt_mode:
            raise ProtocolError(500, "WECHAT_ENCRYPT_MODE must be safe, compatible or plain")
        return "safe" if self.aes_key else "plain"

    def _crypto(self) -> WeChatCrypto:
        # Built once per codec (it decodes the key); a malformed key is refused every time.
        if self._cipher is None:
            try:
                self._cipher = WeChatCrypto(self.token, self.aes_key, self.app_id)
            except (AssertionError, ValueError) as exc:
                raise ProtocolError(
                    500, "WECHAT_AES_KEY is malformed (43 chars of base64)"
                ) from exc
        return self._cipher

    def _check(self, args: dict[str, str], *extra: str, field: str = "signature") -> Signed:
        return verify(self.token, args, *extra, field=field, window=self.timestamp_window)

    def verify_url(self, args: dict[str, str], client: redis.Redis | None = None) -> str:
        """Answer the GET handshake: the raw echostr when the signature holds.

        With `client`, the handshake's signature is bound too: it is the very signature a
        plaintext message carries, so a logged handshake URL must not post a message.
        """
        signed = self._check(args)
        echostr = args.get("echostr", "")
        if client is not None:
            bind_body(client, "wechat", signed, b"GET " + echostr.encode(), self.timestamp_window)
        return echostr

    def open(self, args: dict[str, str], body: bytes, client: redis.Redis | None = None) -> Inbound:
        """Verify a POSTed message and decrypt it in safe/compatible mode.

        The call's signature triple is bound to this body (see `bind_body`): with `client`
        at once, otherwise by whoever writes `Inbound.seals` (ingest, with the message's claim).
        The same call again is WeChat's retry; the same signature with another body is a 403.
        """
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(400, "body is not UTF-8") from exc
        mode = self.mode
        if args.get("encrypt_type", "raw") != "aes":
            if mode == "safe":
                # WeChat sends nothing unencrypted in safe mode: this is somebody else.
                raise ProtocolError(403, "safe mode takes only encrypted messages")
            signed = self._check(args)
            seals = self._seals(client, signed, body)
            return Inbound(text, False, signed.timestamp, signed.nonce, seals)
        if not self.aes_key:
            raise ProtocolError(400, "message is encrypted but WECHAT_AES_KEY is not set")
        if mode == "plain":
            raise ProtocolError(400, "message is encrypted but WECHAT_ENCRYPT_MODE is plain")
        envelope = _parse_xml(text)
        encrypt = envelope.get("Encrypt")
        if not isinstance(encrypt, str) or not encrypt:
            raise ProtocolError(400, "encrypted message without <Encrypt>")
        signed = self._check(args, encrypt, field="msg_signature")
        try:
            plain = self._crypto().decrypt_message(
                {"Encrypt": encrypt}, signed.signature, signed.timestamp, signed.nonce
            )
        except InvalidSignatureException as exc:
            raise ProtocolError(403, "signature mismatch") from exc
        except InvalidAppIdException as exc:
            raise ProtocolError(400, "message was encrypted for another AppID") from exc
        except ProtocolError:
            raise
        except Exception as exc:  # bad base64 / padding: the body is not what WeChat sends
            raise ProtocolError(400, "cannot decrypt <Encrypt>") from exc
        # The plaintext signature this call carries is spent: no plaintext body after it.
        plain_signature = args.get("signature")
        spent = Signed(signed.timestamp, signed.nonce, plain_signature) if plain_signature else None
        seals = self._seals(client, signed, body, spent)
        return Inbound(plain, True, signed.timestamp, signed.nonce, seals)

    def _seals(
        self, client: redis.Redis | None, signed: Signed, body: bytes, spent: Signed | None = None
    ) -> tuple[WriteOnce, ...]:
        seals = body_seals("wechat", signed, body, self.timestamp_window, spent=spent)
        if client is not None:
            bind(client, seals)
        return tuple(seals)

    def seal(self, reply_xml: str, inbound: Inbound) -> str:
        """Encrypt a passive reply when the request came encrypted."""
        if not inbound.encrypted:
            return reply_xml
        return self._crypto().encrypt_message(reply_xml, new_nonce(), str(int(time.time())))


def _parse_xml(text: str) -> flatxml.Fields:
    try:
        return flatxml.read(text, max_depth=XML_MAX_DEPTH)
    except (ExpatError, ValueError) as exc:  # UnicodeError and the depth check included
        raise ProtocolError(400, "malformed XML") from exc
    except LookupError as exc:
        raise ProtocolError(400, "XML root must be <xml>") from exc


def _field(root: flatxml.Fields, name: str) -> str:
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
    try:  # digits only: a 5,000-digit CreateTime would overflow whatever compares it to now
        create_time = parse_timestamp(_field(root, "CreateTime") or "0")
    except ProtocolError as exc:
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
    encrypt = _field(sealed, "Encrypt")
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
