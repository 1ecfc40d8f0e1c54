"""Who gets in: console off without ADMIN_TOKEN, login/logout, Bearer 401s, CSRF refusals."""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bot.console import guard
from bot.core.settings import Settings
from bot.core.store import connect
from tests.helpers import ADMIN_TOKEN
from tests.webhooks.admin.conftest import Browser, form_csrf
from webhooks.admin import auth
from webhooks.app import create_app


@pytest.fixture(autouse=True)
def fresh_guard(admin_settings: Settings) -> Iterator[None]:
    """Every test starts (and leaves) with no wrong attempts counted in db 1."""
    client = connect(admin_settings.redis_url)
    forget = lambda: [client.delete(k) for k in client.scan_iter(f"{GUARD}*")]  # noqa: E731
    forget()
    yield
    forget()


PAGES = ["/admin/", "/admin/login", "/admin/simulator", "/admin/conversations", "/admin/setup"]
API_GETS = [
    "/admin/api/stats",
    "/admin/api/doctor",
    "/admin/api/channels",
    "/admin/api/conversations",
    "/admin/api/conversations/wechat/o_someone",
    "/admin/api/simulate/0123abcd",
]
API_POSTS = [
    "/admin/api/simulate",
    "/admin/api/verify-url",
    "/admin/api/conversations/reset",
    "/admin/api/conversations/block",
]
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
GUARD = "mimochat:admin:guard:"


@pytest.mark.parametrize("path", PAGES + API_GETS)
def test_console_off_without_token(settings: Settings, path: str) -> None:
    client = create_app(settings.replace(admin_token="")).test_client()
    res = client.get(path, headers={"Authorization": "Bearer "})
    assert res.status_code == 404
    assert "console is off" in res.get_data(as_text=True)
    assert "ADMIN_TOKEN" in res.get_data(as_text=True)


def test_console_off_refuses_posts_and_empty_bearer(settings: Settings) -> None:
    client = create_app(settings.replace(admin_token="")).test_client()
    assert client.post("/admin/login", data={"token": ""}).status_code == 404
    for path in API_POSTS:
        assert client.post(path, json={}, headers={"Authorization": "Bearer "}).status_code == 404


@pytest.mark.parametrize("path", API_GETS)
@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-token", f"Basic {ADMIN_TOKEN}", f"Bearer {ADMIN_TOKEN}x", "Bearer"],
)
def test_api_needs_the_bearer_token(
    admin_client: FlaskClient, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    res = admin_client.get(path, headers=headers)
    assert res.status_code == 401
    assert res.headers["WWW-Authenticate"].startswith("Bearer")
    assert res.is_json


@pytest.mark.parametrize("path", API_POSTS)
def test_api_posts_need_the_bearer_token(admin_client: FlaskClient, path: str) -> None:
    assert admin_client.post(path, json={"user": "x"}).status_code == 401


def test_bearer_token_works_without_csrf(admin_client: FlaskClient) -> None:
    assert admin_client.get("/admin/api/stats", headers=BEARER).status_code == 200
    res = admin_client.post("/admin/api/conversations/reset", json={"user": "o_x"}, headers=BEARER)
    assert res.status_code == 200


def test_pages_redirect_to_login(admin_client: FlaskClient) -> None:
    for path in ["/admin/", "/admin/simulator", "/admin/conversations", "/admin/setup"]:
        res = admin_client.get(path)
        assert res.status_code == 302
        assert "/admin/login" in res.headers["Location"]


def test_login_with_a_wrong_token_is_refused(admin_client: FlaskClient) -> None:
    csrf = form_csrf(admin_client)
    res = admin_client.post("/admin/login", data={"token": "nope", "csrf_token": csrf})
    assert res.status_code == 401
    assert "not the admin token" in res.get_data(as_text=True)
    assert admin_client.get("/admin/").status_code == 302


def test_login_without_csrf_is_refused(admin_client: FlaskClient) -> None:
    admin_client.get("/admin/login")
    res = admin_client.post("/admin/login", data={"token": ADMIN_TOKEN})
    assert res.status_code == 403
    assert admin_client.get("/admin/").status_code == 302


def test_login_then_pages_then_logout(admin_client: FlaskClient) -> None:
    csrf = form_csrf(admin_client)
    res = admin_client.post(
        "/admin/login?next=/admin/setup", data={"token": ADMIN_TOKEN, "csrf_token": csrf}
    )
    assert (res.status_code, res.headers["Location"]) == (302, "/admin/setup")
    cookie = res.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    for path in ["/admin/", "/admin/simulator", "/admin/conversations", "/admin/setup"]:
        page = admin_client.get(path)
        assert page.status_code == 200, path
        assert 'name="viewport"' in page.get_data(as_text=True)
    assert admin_client.get("/admin/api/stats").status_code == 200  # the session works for the API
    csrf = form_csrf(admin_client, "/admin/conversations")
    # Logging out needs the form's token: a foreign page cannot log the operator out.
    admin_client.post("/admin/logout")
    assert admin_client.get("/admin/").status_code == 200
    admin_client.post("/admin/logout", data={"csrf_token": csrf})
    assert admin_client.get("/admin/").status_code == 302
    assert admin_client.get("/admin/api/stats").status_code == 401


def test_new_login_gets_a_new_csrf_token(admin_client: FlaskClient) -> None:
    before = form_csrf(admin_client)
    admin_client.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf_token": before})
    assert form_csrf(admin_client, "/admin/conversations") != before


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/elsewhere"])
def test_login_never_redirects_outside_the_console(admin_client: FlaskClient, target: str) -> None:
    csrf = form_csrf(admin_client)
    res = admin_client.post(
        "/admin/login",
        query_string={"next": target},
        data={"token": ADMIN_TOKEN, "csrf_token": csrf},
    )
    assert res.headers["Location"] == "/admin/"


def test_repeated_failed_logins_are_slowed(admin_client: FlaskClient) -> None:
    csrf = form_csrf(admin_client)
    codes = [
        admin_client.post(
            "/admin/login", data={"token": f"guess{i}", "csrf_token": csrf}
        ).status_code
        for i in range(11)
    ]
    assert codes == [401] * 10 + [429]
    # Even the right token waits until the window passes: were it let in, every guess would
    # still be tried and the lockout would slow nothing (see bot.console.guard).
    res = admin_client.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf_token": csrf})
    assert res.status_code == 429


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/api/conversations/reset", {"user": "o_x"}),
        ("/admin/api/conversations/block", {"user": "o_x"}),
        ("/admin/api/verify-url", {"url": "http://127.0.0.1:1/wechat"}),
        ("/admin/api/simulate", {"user": "o_x", "text": "hi"}),
    ],
)
def test_cookie_api_posts_need_the_csrf_header(logged_in: Browser, path: str, body: dict) -> None:
    res = logged_in.client.post(path, json=body)
    assert res.status_code == 403
    assert "CSRF" in res.get_json()["error"]
    res = logged_in.client.post(path, json=body, headers={"X-CSRF-Token": "forged"})
    assert res.status_code == 403


def test_cookie_api_post_with_csrf_header_is_accepted(logged_in: Browser) -> None:
    res = logged_in.client.post(
        "/admin/api/conversations/block",
        json={"user": "o_csrf", "blocked": False},
        headers={"X-CSRF-Token": logged_in.csrf},
    )
    assert res.status_code == 200


@pytest.mark.parametrize("path", ["/admin/conversations/reset", "/admin/conversations/block"])
def test_page_forms_need_the_csrf_field(logged_in: Browser, path: str) -> None:
    data = {"channel": "wechat", "user": "o_form", "blocked": "1"}
    assert logged_in.client.post(path, data=data).status_code == 403
    assert logged_in.client.post(path, data={**data, "csrf_token": "forged"}).status_code == 403
    assert (
        logged_in.client.post(path, data={**data, "csrf_token": logged_in.csrf}).status_code == 302
    )


def test_token_never_in_pages_responses_or_logs(
    logged_in: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = logged_in.client
    bodies = [client.get(p).get_data(as_text=True) for p in PAGES]
    bodies += [client.get(p, headers=BEARER).get_data(as_text=True) for p in API_GETS]
    bodies += [
        client.get(p, headers={"Authorization": "Bearer x"}).get_data(as_text=True)
        for p in API_GETS
    ]
    cookies = [h for _, h in client.get("/admin/login").headers.items()]
    for text in [*bodies, *cookies, caplog.text]:
        assert ADMIN_TOKEN not in text


def test_wecom_response_url_takes_its_code_not_the_token(
    admin_client: FlaskClient, settings: Settings
) -> None:
    """The robot posts late answers with no admin token, as to WeCom's own response_url: only a
    live one-use code is accepted (a guessed one records nothing); with the console off, 404."""
    path = "/admin/api/wecom/response?response_code=guessed"
    body = {"msgtype": "markdown", "markdown": {"content": "spam"}}
    res = admin_client.post(path, json=body)
    assert res.status_code == 200 and res.get_json()["errcode"] == 40058
    off = create_app(settings.replace(admin_token="")).test_client()
    assert off.post(path, json=body).status_code == 404


# --- the throttle (bot.console.guard): atomic, per client and global, the admin kept in ---


def _attempt(app: Flask, how: str, token: str, address: str = "127.0.0.1") -> FlaskClient:
    """A client ready to present `token` once (a login form needs its CSRF token first)."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    if how == "form":
        client.csrf = form_csrf(client)  # type: ignore[attr-defined]
    client.token = token  # type: ignore[attr-defined]
    return client


def _present(client: FlaskClient, how: str) -> int:
    token = client.token  # type: ignore[attr-defined]
    if how == "form":
        data = {"token": token, "csrf_token": client.csrf}  # type: ignore[attr-defined]
        return client.post("/admin/login", data=data).status_code
    return client.get(
        "/admin/api/channels", headers={"Authorization": f"Bearer {token}"}
    ).status_code


@pytest.mark.parametrize("how", ["form", "bearer"])
def test_concurrent_wrong_tokens_admit_exactly_the_limit(admin_app: Flask, how: str) -> None:
    """40 wrong tokens at once: exactly 10 are compared (count first, then compare)."""
    clients = [_attempt(admin_app, how, f"wrong-{how}-{i}") for i in range(40)]
    start = threading.Barrier(len(clients))

    def go(client: FlaskClient) -> int:
        start.wait()
        return _present(client, how)

    with ThreadPoolExecutor(len(clients)) as pool:
        codes = Counter(pool.map(go, clients))
    assert codes == {401: guard.CLIENT_MAX, 429: 40 - guard.CLIENT_MAX}


def test_concurrent_right_tokens_all_get_in(admin_app: Flask) -> None:
    """A script's parallel calls with the right token never trip the throttle themselves."""
    clients = [_attempt(admin_app, "bearer", ADMIN_TOKEN) for _ in range(30)]
    start = threading.Barrier(len(clients))

    def go(client: FlaskClient) -> int:
        start.wait()
        return _present(client, "bearer")

    with ThreadPoolExecutor(len(clients)) as pool:
        assert set(pool.map(go, clients)) == {200}


def test_bearer_is_throttled_with_retry_after(admin_app: Flask, logged_in: Browser) -> None:
    script = admin_app.test_client()  # same address as the browser, no session, no device
    for i in range(guard.CLIENT_MAX):
        res = script.get("/admin/api/stats", headers={"Authorization": f"Bearer no{i}"})
        assert res.status_code == 401
    res = script.get("/admin/api/stats", headers={"Authorization": "Bearer one-more"})
    assert res.status_code == 429
    assert 0 < int(res.headers["Retry-After"]) <= guard.WINDOW
    assert script.get("/admin/api/stats", headers=BEARER).status_code == 429
    # A session is no guess: the logged-in browser at the same address keeps working.
    assert logged_in.client.get("/admin/api/stats").status_code == 200


def test_one_stale_token_repeated_costs_one_attempt(admin_client: FlaskClient) -> None:
    """A cron job with an old token, hammering from the admin's own address, is answered 401
    every time but counted once: the admin's right token still gets in."""
    stale = {"Authorization": "Bearer the-token-before-rotation"}
    codes = {admin_client.get("/admin/api/stats", headers=stale).status_code for _ in range(30)}
    assert codes == {401}
    assert admin_client.get("/admin/api/stats", headers=BEARER).status_code == 200


def test_the_right_token_hands_its_attempt_back(admin_app: Flask, admin_settings: Settings) -> None:
    client = _attempt(admin_app, "bearer", "")
    for i in range(guard.CLIENT_MAX - 1):
        client.token = f"nope{i}"  # type: ignore[attr-defined]
        assert _present(client, "bearer") == 401
    client.token = ADMIN_TOKEN  # type: ignore[attr-defined]
    for _ in range(3):  # successes count nothing: the budget stays at one wrong token
        assert _present(client, "bearer") == 200
    client.token = "last-wrong"  # type: ignore[attr-defined]
    assert _present(client, "bearer") == 401
    client.token = "one-too-many"  # type: ignore[attr-defined]
    assert _present(client, "bearer") == 429


def test_an_attacker_behind_the_same_proxy_cannot_lock_the_admin_out(admin_app: Flask) -> None:
    """Behind a proxy everybody has its address. The attacker locks the address; a browser
    that logged in before counts under its own signed device cookie and still gets in."""
    admin = admin_app.test_client()
    csrf = form_csrf(admin)
    assert (
        admin.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf_token": csrf}).status_code
        == 302
    )
    assert admin.get_cookie(auth.DEVICE_COOKIE, path="/admin") is not None
    admin.post("/admin/logout", data={"csrf_token": form_csrf(admin, "/admin/conversations")})
    attacker = _attempt(admin_app, "form", "")
    for i in range(guard.CLIENT_MAX + 5):
        attacker.token = f"guess{i}"  # type: ignore[attr-defined]
        _present(attacker, "form")
    assert _present(attacker, "form") == 429
    stranger = _attempt(admin_app, "form", ADMIN_TOKEN)  # same address, no device cookie
    assert _present(stranger, "form") == 429
    csrf = form_csrf(admin)
    res = admin.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf_token": csrf})
    assert res.status_code == 302
    assert admin.get("/admin/").status_code == 200
    forged = _attempt(admin_app, "form", ADMIN_TOKEN)
    forged.set_cookie(auth.DEVICE_COOKIE, "device:forged.signature", path="/admin")
    assert _present(forged, "form") == 429  # a device cookie the server did not sign is none


def test_guessing_spread_over_many_addresses_meets_the_global_cap(admin_app: Flask) -> None:
    """Past GLOBAL_MAX wrong tokens from everywhere, an address that already failed is refused
    at once, while a clean one (the admin's) is still compared: nobody locks everybody out."""
    for i in range(guard.GLOBAL_MAX):
        client = _attempt(admin_app, "bearer", f"spread{i}", f"198.51.100.{i % 50}")
        assert _present(client, "bearer") == 401
    repeat = _attempt(admin_app, "bearer", "spread-again", "198.51.100.1")
    assert _present(repeat, "bearer") == 429  # 2 failures there: under 10, but the cap holds
    clean = _attempt(admin_app, "bearer", ADMIN_TOKEN, "203.0.113.9")
    assert _present(clean, "bearer") == 200
    newcomer = _attempt(admin_app, "bearer", "first-guess", "203.0.113.10")
    assert _present(newcomer, "bearer") == 401  # one guess per fresh address per window
    newcomer.token = "second-guess"  # type: ignore[attr-defined]
    assert _present(newcomer, "bearer") == 429


# --- server-side sessions ---


def test_the_cookie_holds_only_an_id_and_a_copy_dies_at_logout(
    logged_in: Browser, admin_app: Flask, admin_settings: Settings
) -> None:
    cookie = logged_in.client.get_cookie("mimochat_admin", path="/admin")
    assert cookie is not None and re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie.value)
    records = list(connect(admin_settings.redis_url).scan_iter("mimochat:admin:session:*"))
    assert records  # the session is a record in Redis
    thief = admin_app.test_client()
    thief.set_cookie("mimochat_admin", cookie.value, path="/admin")
    assert thief.get("/admin/api/stats").status_code == 200  # a copy works while it lives...
    assert thief.get("/admin/").status_code == 200
    logged_in.client.post("/admin/logout", data={"csrf_token": logged_in.csrf})
    assert thief.get("/admin/api/stats").status_code == 401  # ...and is refused after logout
    assert thief.get("/admin/").status_code == 302
    assert logged_in.client.get("/admin/").status_code == 302


def test_login_gets_a_new_session_id(admin_client: FlaskClient) -> None:
    csrf = form_csrf(admin_client)
    before = admin_client.get_cookie("mimochat_admin", path="/admin")
    assert before is not None  # the form's CSRF token lives in an anonymous session
    admin_client.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf_token": csrf})
    after = admin_client.get_cookie("mimochat_admin", path="/admin")
    assert after is not None and after.value != before.value
    fixated = create_app_client_with_cookie(admin_client, before.value)
    assert fixated.get("/admin/").status_code == 302  # the pre-login id grants nothing


def create_app_client_with_cookie(client: FlaskClient, value: str) -> FlaskClient:
    """Another browser of the same app holding the session cookie `value`."""
    other = client.application.test_client()
    other.set_cookie("mimochat_admin", value, path="/admin")
    return other


def test_a_new_admin_token_ends_every_session(logged_in: Browser, settings: Settings) -> None:
    cookie = logged_in.client.get_cookie("mimochat_admin", path="/admin")
    assert cookie is not None
    rotated = create_app(settings.replace(admin_token=ADMIN_TOKEN + "-rotated")).test_client()
    rotated.set_cookie("mimochat_admin", cookie.value, path="/admin")
    assert rotated.get("/admin/api/stats").status_code == 401


@pytest.mark.parametrize("value", ["", "x", "a" * 43 + ";", "../" * 20, "é" * 43, "a" * 4000])
def test_hostile_session_cookies_are_just_logged_out(admin_client: FlaskClient, value: str) -> None:
    admin_client.set_cookie("mimochat_admin", value, path="/admin")
    assert admin_client.get("/admin/").status_code == 302
    assert admin_client.get("/admin/api/stats").status_code == 401


@pytest.mark.parametrize(
    "body",
    [b"[" * 30_000, b'{"msgtype": ' + b"9" * 5000 + b"}", b"[1e999]", b'{"a": NaN}', b"\xff",
     b'{"markdown": {"content": "\\ud800"}}', b"{"],
)  # fmt: skip
def test_response_sink_refuses_hostile_json_with_400(
    admin_client: FlaskClient, body: bytes
) -> None:
    """Anyone may post to the sink: deep, huge or broken JSON is a 400, not a 503 + trace."""
    res = admin_client.post(
        "/admin/api/wecom/response?response_code=guessed",
        data=body,
        content_type="application/json",
    )
    assert res.status_code == 400
    assert res.get_json()["errcode"] == 40008
