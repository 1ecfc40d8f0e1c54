"""The admin console under /admin: pages for people, a JSON API under /admin/api for scripts."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

from flask import Flask

from bot.core.settings import Settings
from webhooks.admin import api, guards, pages  # noqa: F401 (guards adds routes to both)
from webhooks.admin.auth import ServerSessionInterface


def init_app(app: Flask, settings: Settings) -> None:
    """Mount the console; without ADMIN_TOKEN its routes only say that it is off."""
    if settings.admin_token:
        # Derived from the token: every web process signs alike, and a new token logs
        # everybody out (it namespaces the server-side sessions and signs device cookies).
        # The token itself is never the key nor stored anywhere.
        app.secret_key = hmac.new(
            settings.admin_token.encode(), b"mimochat admin session v1", hashlib.sha256
        ).digest()
    app.session_interface = ServerSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="mimochat_admin",
        SESSION_COOKIE_PATH="/admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
    )
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
