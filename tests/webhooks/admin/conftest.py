"""Fixtures for the admin console: the app with ADMIN_TOKEN set, logged-in clients, live servers."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from bot.settings import Settings
from tests.conftest import Stack
from tests.helpers import ADMIN_TOKEN, free_port
from webhooks import create_app

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    """Unit settings (Redis db 1, no worker) with the console on.

    The WeChat API base is a closed local port: the doctor's token fetch must never leave
    the machine (tests that need a working API use `live_admin`, whose sandbox answers).
    """
    return settings.replace(
        admin_token=ADMIN_TOKEN, wechat_api_base=f"http://127.0.0.1:{free_port()}/sandbox/wechat/"
    )


@pytest.fixture
def admin_app(admin_settings: Settings) -> Flask:
    return create_app(admin_settings)


@pytest.fixture
def admin_client(admin_app: Flask) -> FlaskClient:
    return admin_app.test_client()


def form_csrf(client: FlaskClient, path: str = "/admin/login") -> str:
    """The CSRF token a page's forms carry."""
    match = CSRF_RE.search(client.get(path).get_data(as_text=True))
    assert match, f"no CSRF field on {path}"
    return match.group(1)


@dataclass
class Browser:
    """A logged-in test client and its session's CSRF token."""

    client: FlaskClient
    csrf: str


@pytest.fixture
def logged_in(admin_client: FlaskClient) -> Browser:
    csrf = form_csrf(admin_client)
    res = admin_client.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf_token": csrf})
    assert res.status_code == 302
    return Browser(admin_client, form_csrf(admin_client, "/admin/conversations"))


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The app for `settings` over real HTTP in a thread; yields its base URL."""
    port = free_port()
    server = make_server("127.0.0.1", port, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def live_admin(admin_settings: Settings) -> Iterator[tuple[str, Settings]]:
    """The console served over HTTP on db 1 (no worker), its sandbox as WeChat API."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    served = admin_settings.replace(wechat_api_base=f"{base}/sandbox/wechat/")
    server = make_server("127.0.0.1", port, create_app(served), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield base, served
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture(scope="session")
def admin_on_stack(stack: Stack) -> Iterator[tuple[str, Settings]]:
    """A console on the live stack's Redis: its messages are answered by the real worker."""
    served = stack.settings.replace(admin_token=ADMIN_TOKEN)
    with serve(served) as base:
        yield base, served
