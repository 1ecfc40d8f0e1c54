"""Who may use the console: a session cookie after login (with CSRF tokens) or a Bearer token."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, jsonify, request, session
from flask.sessions import SecureCookieSessionInterface

from bot.console.admin import token_matches
from webhooks.services import services

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
OFF_TEXT = "The admin console is off: set ADMIN_TOKEN on the server to turn it on."


class AdminSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the console is reached over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure over HTTPS, directly or behind a proxy that says so."""
        return request.is_secure or request.headers.get("X-Forwarded-Proto", "") == "https"


def console_on() -> bool:
    """True when ADMIN_TOKEN is set."""
    return bool(services().settings.admin_token)


def logged_in() -> bool:
    """The browser holds a session from a successful login."""
    return bool(session.get("admin"))


def bearer_ok() -> bool:
    """The request carries `Authorization: Bearer <ADMIN_TOKEN>`."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and token_matches(
        given.strip(), services().settings.admin_token
    )


def csrf_token() -> str:
    """The session's CSRF token (made on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok() -> bool:
    """The POST carries the session's CSRF token (form field or header)."""
    expected = session.get("csrf")
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
    return bool(expected and given) and hmac.compare_digest(str(expected), str(given))


def start_session() -> None:
    """A fresh session for a new login (a new CSRF token, nothing carried over)."""
    session.clear()
    session.permanent = True
    session["admin"] = True
    session["csrf"] = secrets.token_urlsafe(32)


def api_auth(view: Callable[..., Any]) -> Callable[..., Any]:
    """Bearer token or login session; cookie-authenticated POSTs also need the CSRF header."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not console_on():
            return jsonify(error=OFF_TEXT), 404
        if bearer_ok():
            return view(*args, **kwargs)
        if not logged_in():
            res = jsonify(error="authentication required: Authorization: Bearer <ADMIN_TOKEN>")
            return res, 401, {"WWW-Authenticate": 'Bearer realm="mimochat admin"'}
        if request.method not in ("GET", "HEAD", "OPTIONS") and not csrf_ok():
            return jsonify(
                error=f"missing or wrong CSRF token (send the {CSRF_HEADER} header)"
            ), 403
        return view(*args, **kwargs)

    return wrapped
