"""WSGI entry point for gunicorn and the Celery app for workers."""

import gc

from app import create_app
from app.celery_app import celery  # noqa: F401  (celery -A wsgi:celery)

app = create_app()
# everything built at start (routes, metadata, parsed diagrams, templates) lives as long as the process: keep it
# out of the cyclic collector's full passes, which otherwise walk it all and stall requests for milliseconds
gc.freeze()
