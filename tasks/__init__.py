"""Celery tasks: thin wrappers that rebuild a job and call one function of `bot/`."""

from tasks.celery_app import Producer, make_celery

__all__ = ["Producer", "make_celery"]
