"""`/wecom`: the WeCom intelligent robot's callback URL — verify, decrypt, decide, seal."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from bot.channels.wecom import streams as wecom
from bot.channels.wecom.protocol import WeComCodec, parse_callback
from bot.core.settings import Settings
from webhooks.services import services

bp = Blueprint("wecom", __name__)


def codec(settings: Settings) -> WeComCodec:
    """The robot's codec (receiveid is empty for the intelligent robot)."""
    return WeComCodec(
        settings.wecom_bot_token,
        settings.wecom_bot_aes_key,
        timestamp_window=settings.wechat_timestamp_window,
    )


@bp.get("/wecom")
def verify_url() -> Response:
    """URL verification: answer the decrypted echostr when the signature holds."""
    plain = codec(services().settings).verify_url(request.args.to_dict())
    return Response(plain, mimetype="text/plain")


@bp.post("/wecom")
def receive() -> Response:
    """A message, event or stream refresh: the reply is sealed JSON, or an empty body."""
    s = services()
    robot = codec(s.settings)
    plain = robot.open(request.args.to_dict(), request.get_data(), client=s.redis)
    message = parse_callback(plain)
    reply = wecom.ingest(
        message, settings=s.settings, client=s.redis, enqueue=s.producer.wecom_generation
    )
    if reply.payload is None:
        return Response("", mimetype="text/plain")
    return jsonify(robot.seal(reply.payload))
