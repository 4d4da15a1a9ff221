"""WSGI entry point for gunicorn and the Celery app for workers."""

from app import create_app
from app.celery_app import celery  # noqa: F401  (celery -A wsgi:celery)

app = create_app()
