"""`create_app(settings)`: the Flask app with its blueprints and error handling."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from bot.channels.signing import ProtocolError
from bot.channels.untrusted import load_json
from bot.channels.wechat.protocol import WeChatCodec
from bot.core.logs import setup_logging
from bot.core.settings import Settings
from bot.core.store import Unavailable, connect, resolve_url
from tasks.celery_app import Producer
from webhooks import admin, health, metrics, sandbox, sandbox_wecom, wechat, wecom
from webhooks.services import Services

log = logging.getLogger(__name__)


def _plain(text: str, status: int) -> tuple[str, int, dict[str, str]]:
    return text, status, {"Content-Type": "text/plain; charset=utf-8"}


class GuardedJSONProvider(DefaultJSONProvider):
    """`request.get_json()` anywhere in the app refuses deep, huge or malformed bodies with a
    ValueError (so Flask answers 400, or None when silent) instead of a RecursionError (503)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse untrusted JSON within the limits of `bot.channels.untrusted`."""
        return load_json(s)


class App(Flask):
    """Flask with the console's static assets read whole before the server sends them."""

    def send_static_file(self, filename: str) -> Response:
        """The asset read whole and its file closed (they are a few small files).

        Flask streams a static file from an open file that the server closes once sent;
        werkzeug's development server (the demo's, the tests') skips that close when the browser
        drops the connection mid-send, leaving the file to the garbage collector.
        """
        response = super().send_static_file(filename)
        body = response.response
        try:
            data = b"".join(response.iter_encoded())
        finally:
            if (close := getattr(body, "close", None)) is not None:
                close()
        response.direct_passthrough = False
        response.set_data(data)
        return response


def create_app(settings: Settings | None = None) -> Flask:
    """Build the web app; tests pass their own settings."""
    settings = settings or Settings.from_env()
    setup_logging(settings)
    app = App(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = GuardedJSONProvider(app)
    app.json.ensure_ascii = False  # Chinese stays Chinese in every JSON answer
    app.extensions["mimochat"] = Services(
        settings=settings,
        redis=connect(resolve_url(settings)),
        producer=Producer(settings),
        wechat=WeChatCodec(
            settings.wechat_token,
            settings.wechat_aes_key,
            settings.wechat_app_id,
            settings.wechat_timestamp_window,
            settings.wechat_encrypt_mode,
        ),
    )

    app.register_blueprint(wechat.bp)
    app.register_blueprint(wecom.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    admin.init_app(app, settings)
    if settings.sandbox:
        app.register_blueprint(sandbox.bp)
        app.register_blueprint(sandbox_wecom.bp)

    @app.errorhandler(ProtocolError)
    def protocol_error(exc: ProtocolError):  # noqa: ANN202
        log.warning("refused webhook call: %s (%d)", exc.reason, exc.status)
        return _plain(exc.reason, exc.status)

    @app.errorhandler(redis.RedisError)
    @app.errorhandler(Unavailable)
    def unavailable(exc: Exception):  # noqa: ANN202
        log.error("redis unavailable, answering 503 so the caller retries: %s", type(exc).__name__)
        return _plain("temporarily unavailable, please retry", 503)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # noqa: ANN202
        return _plain(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(RecursionError)
    @app.errorhandler(OverflowError)
    def hostile(exc: Exception):  # noqa: ANN202
        # Backstop: the parsers refuse deep and huge input themselves; if some input still
        # reached one of these, it is the input, and a retry would fail the same way.
        log.warning("refused a request that %s could not take", type(exc).__name__)
        return _plain("malformed request", 400)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # noqa: ANN202
        # Never a stack trace to a caller; 503 makes WeChat retry instead of losing the message.
        log.exception("unexpected error in %s", type(exc).__name__)
        return _plain("temporarily unavailable, please retry", 503)

    return app
