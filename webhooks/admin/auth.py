"""Who may use the console: a server-side session after login (with CSRF tokens) or a Bearer
token, both behind one throttle (`bot.console.guard`).

A logged-in session cookie holds only a random id; the session itself is a record in Redis,
so logging out deletes it and a copied cookie stops working at once. The record's key is
namespaced by the app's secret (derived from ADMIN_TOKEN): a new token logs everybody out.
Before login a visitor's cookie is signed and holds only the login form's CSRF token: it can
never grant anything, and visitors cost Redis nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any

import redis
from flask import Flask, Response, current_app, jsonify, request, session
from flask.sessions import SecureCookieSession, SessionInterface
from itsdangerous import BadData, URLSafeTimedSerializer

from bot.console.guard import Verdict, check_secret, retry_after
from bot.core.store import key
from webhooks.services import services

log = logging.getLogger(__name__)

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
OFF_TEXT = "The admin console is off: set ADMIN_TOKEN on the server to turn it on."
DEVICE_COOKIE = "mimochat_admin_device"
DEVICE_AGE = 30 * 86400  # a browser that logged in keeps its own throttle bucket this long
VISITOR_AGE = 3600  # a visitor's signed cookie (the login form's CSRF token) lasts an hour
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")


class ServerSession(SecureCookieSession):
    """A session whose data lives in Redis under `sid`; `rotate` asks for a new id."""

    def __init__(self, initial: dict[str, Any] | None = None, sid: str = "") -> None:
        super().__init__(initial)
        self.sid = sid
        self.rotate = False


def _record(app: Flask, sid: str) -> str:
    # Hashed: a dump of Redis holds no live cookie. Namespaced by the token-derived secret.
    secret = app.secret_key or b""
    secret = secret.encode() if isinstance(secret, str) else secret
    space = hashlib.sha256(b"session\0" + secret).hexdigest()[:12]
    return key("admin", "session", space, hashlib.sha256(sid.encode()).hexdigest())


def _redis(app: Flask) -> redis.Redis:
    client: redis.Redis = app.extensions["mimochat"].redis
    return client


class ServerSessionInterface(SessionInterface):
    """Server-side sessions in Redis; the cookie is Secure whenever the console is on HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure over HTTPS, directly or behind a proxy that says so."""
        return request.is_secure or request.headers.get("X-Forwarded-Proto", "") == "https"

    def _cookie(
        self,
        app: Flask,
        response: Response,
        name: str,
        value: str,
        *,
        expires: Any = None,
        max_age: int | None = None,
    ) -> None:
        """Set (or with max_age=0 drop) a console cookie with the session cookie's flags."""
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            expires=0 if max_age == 0 else expires,
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
            httponly=self.get_cookie_httponly(app),
        )

    def open_session(self, app: Flask, request: Any) -> ServerSession:
        """The session the cookie names, or a fresh empty one (unknown, revoked, expired).

        Only the console has sessions: a webhook call (or anything outside /admin) gets an
        empty one without a look at its cookies, so a cookie posted to /wechat costs no read.
        """
        if not request.path.startswith("/admin"):
            return ServerSession()
        value = request.cookies.get(self.get_cookie_name(app), "")
        if not app.secret_key or not value:
            return ServerSession()
        if not _SESSION_ID.fullmatch(value):
            return ServerSession(_visitor(app, value))
        try:
            raw = _redis(app).get(_record(app, value))
        except redis.RedisError:
            log.warning("admin sessions unavailable (Redis): the request is not logged in")
            return ServerSession()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return ServerSession(data, value) if isinstance(data, dict) else ServerSession()

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        """Write the record and the id cookie; an emptied session is deleted (revoked).

        Only a logged-in session is kept in Redis. A visitor's (the login form's CSRF token and
        nothing else) travels in a signed cookie that can never say "admin": a flood of login
        pages costs the server no memory.
        """
        if not isinstance(session, ServerSession) or not app.secret_key:
            return
        name = self.get_cookie_name(app)
        if session.accessed:
            response.vary.add("Cookie")
        store = _redis(app)
        if not session:
            if session.modified:  # cleared: logout (or a new login's first step)
                if session.sid:
                    with contextlib.suppress(redis.RedisError):
                        store.delete(_record(app, session.sid))
                self._cookie(app, response, name, "", max_age=0)
                response.vary.add("Cookie")
            return
        if not self.should_set_cookie(app, session):
            return
        if not session.get("admin"):
            visitor = _visitors(app).dumps({"csrf": session.get("csrf", "")})
            self._cookie(app, response, name, visitor)
            response.vary.add("Cookie")
            return
        if session.rotate and session.sid:  # a login never keeps an id chosen before it
            with contextlib.suppress(redis.RedisError):
                store.delete(_record(app, session.sid))
        if session.rotate or not session.sid:
            session.sid = secrets.token_urlsafe(32)
        ttl = int(app.permanent_session_lifetime.total_seconds())
        try:
            store.set(_record(app, session.sid), json.dumps(dict(session)), ex=ttl)
        except redis.RedisError:
            log.warning("admin session not saved (Redis): the browser stays logged out")
            return
        expires = self.get_expiration_time(app, session)
        self._cookie(app, response, name, session.sid, expires=expires)
        response.vary.add("Cookie")
        if session.rotate:
            # A browser that logged in gets its own throttle bucket (see bot.console.guard).
            device = _devices(app).dumps(secrets.token_urlsafe(16))
            self._cookie(app, response, DEVICE_COOKIE, device, max_age=DEVICE_AGE)


def _visitors(app: Flask) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(app.secret_key or b"", salt="mimochat admin visitor")


def _visitor(app: Flask, value: str) -> dict[str, str] | None:
    """A visitor's signed cookie: its CSRF token alone (never "admin"), or None."""
    try:
        data = _visitors(app).loads(value, max_age=VISITOR_AGE)
    except BadData:
        return None
    csrf = data.get("csrf") if isinstance(data, dict) else None
    return {"csrf": csrf} if isinstance(csrf, str) and csrf else None


def _devices(app: Flask) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(app.secret_key or b"", salt="mimochat admin device")


def _client() -> tuple[str, bool]:
    """Whose attempts these are: a browser's device (once it logged in), else the address."""
    raw = request.cookies.get(DEVICE_COOKIE, "")
    if raw and current_app.secret_key:
        try:
            device = _devices(current_app).loads(raw, max_age=DEVICE_AGE)
        except BadData:
            device = None
        if isinstance(device, str):
            return f"device:{device}", True
    return f"addr:{request.remote_addr or '?'}", False


def console_on() -> bool:
    """True when ADMIN_TOKEN is set."""
    return bool(services().settings.admin_token)


def logged_in() -> bool:
    """The browser holds a session from a successful login."""
    return bool(session.get("admin"))


def secret_verdict(given: str | None) -> Verdict:
    """Admit, compare and count one presented admin token (login form or Bearer header)."""
    s = services()
    client_id, known = _client()
    return check_secret(s.redis, s.settings.admin_token, given, client_id, known_device=known)


def bearer_verdict() -> Verdict | None:
    """What `Authorization: Bearer <token>` gets; None when no Bearer token is presented."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    return secret_verdict(given.strip())


def throttled_for() -> int:
    """Seconds a throttled client should wait (for Retry-After)."""
    return retry_after(services().redis, _client()[0])


def csrf_token() -> str:
    """The session's CSRF token (made on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def csrf_ok() -> bool:
    """The POST carries the session's CSRF token (form field or header)."""
    expected = session.get("csrf")
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
    if not (expected and given):
        return False
    # Bytes: compare_digest raises on non-ASCII str, and a header may carry any latin-1.
    return hmac.compare_digest(str(expected).encode(), str(given).encode("utf-8", "surrogatepass"))


def start_session() -> None:
    """A fresh session for a new login: a new id, a new CSRF token, nothing carried over."""
    session.clear()
    session.permanent = True
    session["admin"] = True
    session["csrf"] = secrets.token_urlsafe(32)
    if isinstance(session, ServerSession):
        session.rotate = True


def api_auth(view: Callable[..., Any]) -> Callable[..., Any]:
    """Bearer token or login session; cookie-authenticated POSTs also need the CSRF header."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not console_on():
            return jsonify(error=OFF_TEXT), 404
        verdict = bearer_verdict()
        if verdict is Verdict.OK:
            return view(*args, **kwargs)
        if not logged_in():
            if verdict is Verdict.THROTTLED:
                res = jsonify(error="too many wrong tokens from here: wait a few minutes")
                return res, 429, {"Retry-After": str(throttled_for())}
            res = jsonify(error="authentication required: Authorization: Bearer <ADMIN_TOKEN>")
            return res, 401, {"WWW-Authenticate": 'Bearer realm="mimochat admin"'}
        if request.method not in ("GET", "HEAD", "OPTIONS") and not csrf_ok():
            return jsonify(
                error=f"missing or wrong CSRF token (send the {CSRF_HEADER} header)"
            ), 403
        return view(*args, **kwargs)

    return wrapped
