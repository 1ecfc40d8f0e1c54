"""Fixtures for the web app: built in-process with the test's own settings."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bot.core.settings import Settings
from webhooks.app import create_app


@pytest.fixture
def app(settings: Settings) -> Flask:
    """The app on Redis database 1, where no worker consumes: queued jobs stay to be counted."""
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
