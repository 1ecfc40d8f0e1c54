"""Who gets in: console off without ADMIN_TOKEN, login/logout, Bearer 401s, CSRF refusals."""

from __future__ import annotations

import logging

import pytest
from flask.testing import FlaskClient

from bot.core.settings import Settings
from tests.helpers import ADMIN_TOKEN
from tests.webhooks.admin.conftest import Browser, form_csrf
from webhooks.app import create_app

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


def test_repeated_failed_logins_are_slowed(
    admin_client: FlaskClient, admin_settings: Settings
) -> None:
    from bot.core.store import connect

    connect(admin_settings.redis_url).delete("mimochat:admin:login-failures:127.0.0.1")
    csrf = form_csrf(admin_client)
    codes = [
        admin_client.post(
            "/admin/login", data={"token": f"guess{i}", "csrf_token": csrf}
        ).status_code
        for i in range(11)
    ]
    assert codes == [401] * 10 + [429]
    # Even the right token waits until the window passes.
    res = admin_client.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf_token": csrf})
    assert res.status_code == 429
    connect(admin_settings.redis_url).delete("mimochat:admin:login-failures:127.0.0.1")


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
