"""Fixtures for the admin console in-process: the app with ADMIN_TOKEN set, a logged-in client."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bot.core.settings import Settings
from tests.helpers import ADMIN_TOKEN
from webhooks.app import create_app

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


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
