"""`/wechat`: the Official Account webhook — verify, parse, deduplicate, enqueue, acknowledge."""

from __future__ import annotations

import time

from flask import Blueprint, Response, request

from bot.channels.wechat import sandbox
from bot.channels.wechat.passive import respond
from bot.channels.wechat.protocol import parse_message, render_text_reply
from bot.pipeline.ingest import ingest
from webhooks import metrics
from webhooks.services import services

bp = Blueprint("wechat", __name__)


@bp.get("/wechat")
def verify_url() -> Response:
    """URL verification: echo `echostr` when the signature holds."""
    s = services()
    echostr = s.wechat.verify_url(request.args.to_dict(), client=s.redis)
    return Response(echostr, mimetype="text/plain")


@bp.post("/wechat")
def receive() -> Response:
    """A user's message: acknowledged only once its job is in Redis."""
    started = time.time()
    s = services()
    # Verify: signature, freshness, safe mode; one body per signature is bound with the claim.
    inbound = s.wechat.open(request.args.to_dict(), request.get_data())
    message = parse_message(inbound.xml)
    if s.settings.sandbox:
        # The fake WeChat plays WeChat's server: a message it saw opens the user's window, so
        # any WeChat-like client (not only `mimochat send`) gets its answer in the outbox.
        sandbox.user_wrote(s.settings, s.redis, message)
    decision = ingest(
        message,
        settings=s.settings,
        client=s.redis,
        enqueue=s.producer.generation,
        seals=inbound.seals,
    )
    reply = respond(message, decision, settings=s.settings, client=s.redis, started=started)
    metrics.note(decision, held=reply.hold > 0)
    if reply.hold:
        # Passive mode, answer not ready: stay silent so WeChat times out and retries.
        time.sleep(reply.hold)
        return Response("", status=503)
    if reply.text is None:
        return Response("success", mimetype="text/plain")
    xml = render_text_reply(message.user, message.account, reply.text)
    return Response(s.wechat.seal(xml, inbound), mimetype="application/xml")
