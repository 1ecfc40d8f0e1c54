"""The web side: Flask app factory, one blueprint per channel, sandbox API, health."""

from webhooks.app import create_app

__all__ = ["create_app"]
