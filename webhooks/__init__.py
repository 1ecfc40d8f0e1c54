"""The web side: Flask app factory (`webhooks.app.create_app`), one blueprint per entry point."""
