"""Celery tasks: thin wrappers that rebuild a typed job and call one function of `bot/`."""
